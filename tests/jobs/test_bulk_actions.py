"""Starting a bulk action is one thing on every surface: the Users tab, the JSON API
and the shell take the same selection, read "run at" by the same rule, refuse the
same requests with the same message (and, over HTTP, the same status), and audit
each job's creation and each cancel exactly once."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from cds.extensions import db
from cds.models import ApiToken, AuditEvent, Job, User, utcnow

HTMX = {"HX-Request": "true"}
FUTURE = datetime(utcnow().year + 5, 3, 1, 8, 0, 0)


@pytest.fixture
def users(app):
    from cds.profiles.service import default_profile
    with app.app_context():
        profile = default_profile()
        rows = [User(login_id=f"u{i}", last_name=f"Last{i}", email=f"u{i}@example.com", profile=profile)
                for i in range(3)]
        db.session.add_all(rows)
        db.session.commit()
        return [u.id for u in rows]


def cli(runner, *args, input=None):
    return runner.invoke(args=["cds", *args], input=input)


def jobs(app) -> list[Job]:
    with app.app_context():
        return list(db.session.scalars(select(Job).order_by(Job.id)))


def events(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                       .order_by(AuditEvent.id)))


# --- "run at": one parser, one rule ---------------------------------------------------

@pytest.mark.parametrize("given", [FUTURE.isoformat(),                      # no offset: UTC
                                   FUTURE.isoformat() + "Z",
                                   (FUTURE + timedelta(hours=2)).isoformat() + "+02:00",
                                   (FUTURE - timedelta(hours=5)).isoformat() + ".250-05:00"])
def test_the_same_time_means_the_same_instant_on_page_api_and_cli(app, admin_client, api, runner,
                                                                   users, given):
    page = admin_client.post("/users/actions/deploy", headers=HTMX,
                             data={"ids": [str(users[0])], "run_at": given})
    assert page.status_code == 200 and "scheduled" in page.get_data(as_text=True)
    assert api.post("/api/v1/users/actions/deploy", json={"ids": [users[1]], "at": given}).status_code == 202
    result = cli(runner, "deploy", "--user", "u2", "--at", given)
    assert result.exit_code == 0, result.output
    assert f"scheduled for {FUTURE:%Y-%m-%d %H:%M} UTC" in result.output
    assert [(j.state, j.run_at) for j in jobs(app)] == [("scheduled", FUTURE)] * 3


def test_a_time_in_the_past_or_not_understood_is_refused_everywhere(app, admin_client, api, runner, users):
    past = (utcnow() - timedelta(minutes=5)).isoformat()
    for value in (past, "tomorrow morning"):
        page = admin_client.post("/users/actions/deploy", headers=HTMX,
                                 data={"ids": [str(users[0])], "run_at": value})
        assert page.status_code == 422 and page.headers["HX-Retarget"] == "#toasts"
        resp = api.post("/api/v1/users/actions/deploy", json={"ids": [users[0]], "at": value})
        assert resp.status_code == 422 and "at" in resp.get_json()["details"]
        result = cli(runner, "deploy", "--user", "u0", "--at", value)
        assert result.exit_code == 1
        # The same message on the three surfaces.
        message = resp.get_json()["message"]
        assert message in page.get_data(as_text=True).replace("&#34;", '"').replace("&#39;", "'")
        assert result.output.strip().splitlines()[-1] == f"error: {message}"
    assert "in the past" in api.post("/api/v1/users/actions/deploy",
                                     json={"ids": [users[0]], "at": past}).get_json()["message"]
    assert jobs(app) == [] and events(app, "job.create") == []


@pytest.mark.parametrize("kind,api_name,extra", [("delete", "delete", {}),
                                                  ("assign_profile", "assign-profile", {"profile_id": 1}),
                                                  ("sync", "sync", {})])
def test_actions_that_run_at_once_cannot_be_scheduled(app, admin_client, api, users, kind, api_name, extra):
    at = FUTURE.isoformat() + "Z"
    page = admin_client.post(f"/users/actions/{kind}", headers=HTMX,
                             data={"ids": [str(users[0])], "run_at": at, **extra})
    assert page.status_code == 422 and "cannot be scheduled" in page.get_data(as_text=True)
    resp = api.post(f"/api/v1/users/actions/{api_name}", json={"ids": [users[0]], "at": at, **extra})
    assert resp.status_code == 422 and "cannot be scheduled" in resp.get_json()["message"]
    assert jobs(app) == []
    with app.app_context():
        assert db.session.scalar(select(func.count(User.id))) == 3  # nobody was deleted


def test_a_missing_profile_is_refused_everywhere(app, admin_client, api, runner, users):
    page = admin_client.post("/users/actions/assign_profile", headers=HTMX,
                             data={"ids": [str(users[0])], "profile_id": "424242"})
    assert page.status_code == 422 and "Choose the profile to assign" in page.get_data(as_text=True)
    resp = api.post("/api/v1/users/actions/assign-profile", json={"ids": [users[0]], "profile_id": 424242})
    assert resp.status_code == 422 and resp.get_json()["details"] == {"profile_id": "no such profile"}
    resp = api.post("/api/v1/users/actions/assign-profile", json={"ids": [users[0]]})
    assert resp.status_code == 422 and "Choose the profile to assign" in resp.get_json()["message"]
    result = cli(runner, "assign-profile", "No such profile", "--all")
    assert result.exit_code == 1 and "Choose the profile to assign" in result.output
    assert jobs(app) == []


def test_the_selection_is_read_the_same_way(app, admin_client, api, users):
    resp = api.post("/api/v1/users/actions/force-config", json={"ids": [users[0]], "filter": {}})
    assert resp.status_code == 422 and "not both" in resp.get_json()["message"]
    resp = api.post("/api/v1/users/actions/force-config", json={"ids": ["1"]})
    assert resp.status_code == 422 and "ids" in resp.get_json()["details"]
    page = admin_client.post("/users/actions/force_config", headers=HTMX, data={"ids": ["x"]})
    assert page.status_code == 422 and "is not a user id" in page.get_data(as_text=True)
    # Every user matching a filter, from the page and from the API: the same stored selection.
    admin_client.post("/users/actions/force_config", headers=HTMX,
                      data={"all_matching": "1", "search": "last1", "ids": [str(users[0])]})
    api.post("/api/v1/users/actions/force-config", json={"filter": {"search": "last1"}})
    assert [j.params["selection"] for j in jobs(app)] == [{"filter": {"search": "last1"}}] * 2


# --- audit: creation once, cancel once ----------------------------------------------------

def test_each_job_creation_is_audited_once_on_every_surface(app, admin_client, api, runner, users):
    assert admin_client.post("/users/actions/force_config", headers=HTMX,
                             data={"ids": [str(users[0])]}).status_code == 200
    assert api.post("/api/v1/users/actions/force-config", json={"ids": [users[1]]}).status_code == 202
    assert cli(runner, "force-config", "--user", "u2").exit_code == 0
    created = events(app, "job.create")
    assert [(e.actor, e.actor_type, e.count) for e in created] == \
        [("alice", "admin", 1), ("api:script", "api", 1), ("cli", "system", 1)]
    assert [e.detail["job"] for e in created] == [j.id for j in jobs(app)]
    assert {e.detail["kind"] for e in created} == {"force_config"}
    assert [(j.state, j.done) for j in jobs(app)] == [("done", 1)] * 3


def test_each_cancel_is_audited_once_on_every_surface(app, admin_client, api, runner, users):
    at = FUTURE.isoformat() + "Z"
    ids = [api.post("/api/v1/users/actions/deploy", json={"ids": [u], "at": at}).get_json()["id"]
           for u in users]
    assert admin_client.post(f"/jobs/{ids[0]}/cancel").status_code == 302
    assert api.delete(f"/api/v1/jobs/{ids[1]}").status_code == 200
    assert cli(runner, "jobs", "cancel", str(ids[2])).exit_code == 0
    cancels = events(app, "job.cancel")
    assert [(e.detail["job"], e.actor, e.actor_type) for e in cancels] == \
        [(ids[0], "alice", "admin"), (ids[1], "api:script", "api"), (ids[2], "cli", "system")]
    # A second cancel is refused the same way everywhere, and audits nothing.
    assert admin_client.post(f"/jobs/{ids[0]}/cancel", headers=HTMX).status_code == 409
    assert api.delete(f"/api/v1/jobs/{ids[0]}").status_code == 409
    again = cli(runner, "jobs", "cancel", str(ids[0]))
    assert again.exit_code == 1 and "already finished" in again.output
    assert admin_client.post("/jobs/424242/cancel", headers=HTMX).status_code == 404
    assert api.delete("/api/v1/jobs/424242").status_code == 404
    assert len(events(app, "job.cancel")) == 3


def test_api_tokens_and_administrators_are_audited_from_every_surface(app, admin_client, runner):
    page = admin_client.post("/settings/api-tokens", data={"name": "from-page", "role": "admin"})
    assert page.status_code == 200
    result = cli(runner, "create-api-token", "from-cli", "--role", "read-only")
    assert result.exit_code == 0
    cli_token = result.output.splitlines()[0]
    with app.app_context():
        tokens = {t.name: t.id for t in db.session.scalars(select(ApiToken))}
    created = events(app, "api_token.create")
    assert [(e.actor, e.detail["name"]) for e in created] == [("alice", "from-page"), ("cli", "from-cli")]
    assert admin_client.post(f"/settings/api-tokens/{tokens['from-cli']}/revoke").status_code == 200
    assert cli(runner, "revoke-api-token", str(tokens["from-page"])).exit_code == 0
    assert cli(runner, "revoke-api-token", str(tokens["from-page"])).exit_code == 0  # already revoked
    revoked = events(app, "api_token.revoke")
    assert [(e.actor, e.detail["name"]) for e in revoked] == [("alice", "from-cli"), ("cli", "from-page")]
    assert cli(runner, "revoke-api-token", "424242").exit_code == 1

    assert cli(runner, "create-admin", "carol", "--role", "readonly", "--password-stdin",
               input="a long enough password 1\n").exit_code == 0
    assert admin_client.post("/settings/admins", data={"username": "dave", "role": "admin",
                                                       "password": ""}).status_code in (200, 302)
    admins = events(app, "admin.create")
    assert [(e.actor, e.detail["account"], e.detail["role"]) for e in admins] == \
        [("cli", "carol", "readonly"), ("alice", "dave", "admin")]
    with app.app_context():
        stored = " ".join(str(e.detail) for e in db.session.scalars(select(AuditEvent)))
    assert cli_token not in stored and "a long enough password" not in stored


def test_jobs_the_services_start_are_audited_once_too(app, source):
    """The scheduler's periodic sync and Import and Deploy go through the same door."""
    from datetime import timedelta as td

    from cds.connections.service import periodic_sync, refresh_source_records
    from cds.imports.service import import_and_deploy
    from cds.models import Connection, SourceRecord
    from tests.fixtures.source_server import usa_user
    from tests.connections.test_sync import connect_and_import
    with app.app_context():
        conn_id = connect_and_import(source)
        db.session.get(Connection, conn_id).next_sync_at = utcnow() - td(minutes=1)
        db.session.commit()
        periodic_sync(app)
        source.users.append(usa_user(99))
        refresh_source_records(db.session.get(Connection, conn_id))
        new_record = db.session.scalar(select(SourceRecord.id).where(SourceRecord.source_key == "u-99"))
        result = import_and_deploy({"ids": [new_record]}, actor="alice")
        assert result.job_id is not None
    created = events(app, "job.create")
    assert [(e.actor, e.actor_type, e.detail["kind"]) for e in created] == \
        [("scheduler", "system", "sync"), ("alice", "admin", "deploy")]
    assert [e.detail["job"] for e in created] == [j.id for j in jobs(app)]


def test_events_written_while_a_job_runs_name_who_started_it(app, api, runner, users):
    # No SMTP server set: the messages go to the Outbox, and are recorded as sent.
    assert api.post("/api/v1/users/actions/deploy", json={"ids": [users[0]]}).status_code == 202
    assert cli(runner, "deploy", "--user", "u1").exit_code == 0
    sent = events(app, "deploy.sent")
    assert [(e.login_id, e.actor, e.actor_type) for e in sent] == \
        [("u0", "api:script", "api"), ("u1", "cli", "system")]
