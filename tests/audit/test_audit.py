"""The Audit log tab: filters, pagination, CSV export; no secret ever stored in an event."""
from __future__ import annotations

import codecs
import csv
import io
from datetime import datetime

from sqlalchemy import select

from cds.extensions import db
from cds.models import AuditEvent


def event(action, actor="alice", at=None, login_id=None, user_id=None, count=None, detail=None,
          actor_type="admin", ip="10.0.0.5"):
    db.session.add(AuditEvent(action=action, actor=actor, actor_type=actor_type,
                              at=at or datetime(2026, 11, 20, 12, 0), login_id=login_id,
                              user_id=user_id, count=count, detail=detail or {}, ip=ip))


def seed(app):
    with app.app_context():
        event("users.export", actor="alice", at=datetime(2026, 11, 20, 9, 0), count=40,
              detail={"selection": {"filter": {"search": "sales"}}})
        event("user.delete", actor="bob", at=datetime(2026, 11, 21, 23, 30), login_id="ann", user_id=7)
        event("user.delete", actor="bob", at=datetime(2026, 11, 22, 0, 30), login_id="cy", user_id=9)
        event("client.activate", actor="dev-1234", actor_type="client", at=datetime(2026, 11, 23, 8, 0),
              login_id="ann", user_id=7, ip="203.0.113.9")
        event("settings.change", actor="alice", at=datetime(2026, 11, 24, 10, 0),
              detail={"PUBLIC_URL": {"from": "http://a", "to": "=cmd()"}})
        db.session.commit()


def rows_of(page: str) -> int:
    return page.count("<tr>") - 1  # minus the header row


def test_audit_log_lists_and_filters(admin_client, app):
    seed(app)
    page = admin_client.get("/audit").get_data(as_text=True)
    assert "Audit log" in page and "6 events" in page  # the 5 seeded + alice's sign-in
    assert "selection: " in page and "203.0.113.9" in page and ">client<" in page
    # by actor, action, action group, user (login id or id), free text
    assert "2 events" in admin_client.get("/audit?actor=BOB").get_data(as_text=True)
    assert "1 event " in admin_client.get("/audit?action=users.export").get_data(as_text=True)
    assert "2 events" in admin_client.get("/audit?action=user.").get_data(as_text=True)
    assert "2 events" in admin_client.get("/audit?user=ann").get_data(as_text=True)
    assert "2 events" in admin_client.get("/audit?user=7").get_data(as_text=True)
    text = admin_client.get("/audit?q=203.0.113").get_data(as_text=True)
    assert "1 event " in text and "client.activate" in text


def test_audit_time_range(admin_client, app):
    seed(app)
    # Whole days, UTC.
    page = admin_client.get("/audit?since=2026-11-21&until=2026-11-22").get_data(as_text=True)
    assert "2 events" in page and "ann" in page and "cy" in page
    # Date and time, UTC: cy's delete at 00:30 UTC on the 22nd is outside.
    page = admin_client.get("/audit?since=2026-11-21T00:00&until=2026-11-22T00:00").get_data(as_text=True)
    assert "1 event " in page and ">ann<" in page
    # The same local times from a browser one hour behind UTC (getTimezoneOffset() = 60):
    # 2026-11-22 00:00 there is 01:00 UTC, so cy's delete is inside.
    page = admin_client.get("/audit?since=2026-11-21T00:00&until=2026-11-22T00:00&tz=60").get_data(as_text=True)
    assert "2 events" in page and ">cy<" in page
    resp = admin_client.get("/audit?since=yesterday")
    assert resp.status_code == 422
    assert "From: &#39;yesterday&#39; is not a date" in resp.get_data(as_text=True)
    resp = admin_client.get("/audit?since=2026-11-22&until=2026-11-21")
    assert resp.status_code == 422 and "ends before it starts" in resp.get_data(as_text=True)


def test_audit_pagination_and_partial(admin_client, app):
    with app.app_context():
        for i in range(150):
            event("user.update", actor="bob", at=datetime(2026, 11, 1, 0, 0, 0).replace(minute=i % 60, hour=i // 60),
                  login_id=f"user{i:03}")
        db.session.commit()
    first = admin_client.get("/audit?action=user.update").get_data(as_text=True)
    assert rows_of(first) == 100 and "user149" in first and "user049" not in first
    second = admin_client.get("/audit?action=user.update&page=2",
                              headers={"HX-Request": "true", "HX-Target": "audit-results"})
    text = second.get_data(as_text=True)
    assert "<html" not in text and rows_of(text) == 50 and "user000" in text
    assert 'href="/audit?action=user.update&amp;page=1"' in text


def test_audit_csv_export_of_filtered_events(admin_client, app):
    seed(app)
    resp = admin_client.get("/audit/export.csv?action=settings.change")
    assert resp.is_streamed and resp.headers["Content-Disposition"].startswith('attachment; filename="cds-audit-')
    body = resp.get_data()
    assert body.startswith(codecs.BOM_UTF8)
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline="")))
    assert rows[0] == ["Time (UTC)", "Actor", "Actor type", "Action", "User ID", "Login ID", "Count",
                       "Address", "Detail"]
    assert len(rows) == 2
    assert rows[1][:4] == ["2026-11-24T10:00:00Z", "alice", "admin", "settings.change"]
    assert '"to": "=cmd()"' in rows[1][8]
    rows = list(csv.reader(io.StringIO(
        admin_client.get("/audit/export.csv?actor=bob").get_data().decode("utf-8-sig"), newline="")))
    assert [r[5] for r in rows[1:]] == ["cy", "ann"]  # newest first
    with app.app_context():
        exports = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "audit.export")).all()
        assert [e.detail for e in exports] == [{"filter": {"action": "settings.change"}},
                                               {"filter": {"actor": "bob"}}]
    assert admin_client.get("/audit/export.csv?until=soon").status_code == 400


def test_readonly_sees_the_audit_log(readonly_client, app):
    seed(app)
    assert "user.delete" in readonly_client.get("/audit").get_data(as_text=True)
    assert readonly_client.get("/audit/export.csv").status_code == 200


def test_secret_named_detail_values_are_never_stored(app):
    from cds.audit.service import record_event
    with app.app_context():
        record_event("test.secrets", actor="alice", detail={
            "mcs_password": "S3cret-pass", "voicemail_pin": "4711", "token": "tok-abc",
            "nested": {"pbx_sip_password": "x-pass"}, "token_ref": "3fa9c1d2e0", "links_revoked": 2})
        stored = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "test.secrets")).one()
        assert stored.detail == {"mcs_password": "[redacted]", "voicemail_pin": "[redacted]",
                                 "token": "[redacted]", "nested": {"pbx_sip_password": "[redacted]"},
                                 "token_ref": "3fa9c1d2e0", "links_revoked": 2}


def test_audit_requires_sign_in(client):
    assert client.get("/audit").status_code == 302
    assert client.get("/audit/export.csv").status_code == 302


def test_job_events_carry_who_asked_not_system(app):
    """A job running on a background thread (no request) records its events as the
    administrator or API token that started it."""
    from cds.jobs.service import create_job, run_job
    from tests.export.test_export import add_user
    with app.app_context():
        from cds.models import DeploymentProfile
        add_user("ann")
        other = DeploymentProfile(name="Teleworkers")
        db.session.add(other)
        db.session.commit()
        job = create_job("assign_profile", {"filter": {}}, params={"profile_id": other.id}, actor="admin")
        run_job(job.id)
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "user.assign_profile"))
        assert (event.actor, event.actor_type) == ("admin", "admin")
    from cds.audit.service import acting_for, record_event
    with app.app_context(), acting_for("nightly", "api"):
        assert record_event("test.event", actor="nightly").actor_type == "api"
        assert record_event("test.other").actor == "nightly"
    with app.app_context():
        assert record_event("test.cli", actor="cli").actor_type == "system"
        assert record_event("test.scheduler").actor_type == "system"
