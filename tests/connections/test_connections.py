"""Connections tab and Import Users tab through the pages, against a real HTTP JSON
source on loopback: who may create and re-authorize, what the list shows, and
importing records (with and without Deploy)."""
from __future__ import annotations

import re

from sqlalchemy import select

from cds.extensions import db
from cds.models import AuditEvent, Connection, SourceRecord, User
from tests.conftest import make_admin, sign_in
from tests.fixtures.source_server import PASSWORD, USERNAME, usa_user


# Users in the HTTP source the `source` fixture (tests/conftest.py) starts.
SOURCE_USERS = 7


def create_form(server, **changes) -> dict:
    data = {"name": "Users and Services", "kind": "usa", "url": server.url, "username": USERNAME,
            "password": PASSWORD, "sync_interval_minutes": "60", "enabled": "y", "timeout": "2",
            "page_size": "500", "verify_tls": "y"}
    data.update(changes)
    return data


def add_connection(client, server, **changes) -> int:
    resp = client.post("/connections/new", data=create_form(server, **changes))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    name = create_form(server, **changes)["name"]
    with client.application.app_context():
        return db.session.scalar(select(Connection.id).where(Connection.name == name))


def test_primary_admin_creates_a_connection_and_sees_it_listed(admin_client, source, app):
    add_connection(admin_client, source)
    page = admin_client.get("/connections").get_data(as_text=True)
    assert "Users and Services" in page and f"127.0.0.1:{source.url.rsplit(':', 1)[1]}" in page
    assert "verified" in page
    # The token the source handed out expires in 90 days.
    assert re.search(r"in (89|90) days", page)
    assert "Read 7 users" in page
    assert PASSWORD not in page
    with app.app_context():
        assert db.session.scalar(select(SourceRecord.id).limit(1)) is not None
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "connection.create"))
        assert event.actor == "alice" and PASSWORD not in str(event.detail)


def test_only_the_primary_admin_creates_or_re_authorizes(app, source):
    make_admin(app, "bob", "admin")
    bob = app.test_client()
    sign_in(bob, "bob")
    assert bob.get("/connections/new").status_code == 403
    assert bob.post("/connections/new", data=create_form(source)).status_code == 403
    page = bob.get("/connections").get_data(as_text=True)
    assert "Add connection" not in page and "Only the primary administrator" in page
    with app.app_context():
        assert db.session.scalar(select(Connection.id)) is None

    make_admin(app, "alice", "primary")
    alice = app.test_client()
    sign_in(alice, "alice")
    conn_id = add_connection(alice, source)
    assert bob.get(f"/connections/{conn_id}/authorize").status_code == 403
    assert bob.post(f"/connections/{conn_id}/authorize",
                    data={"url": source.url, "username": USERNAME, "password": PASSWORD}).status_code == 403
    assert "Re-authorize" not in bob.get("/connections").get_data(as_text=True)
    # An administrator may still test, sync and edit the settings.
    assert bob.post(f"/connections/{conn_id}/test").status_code == 302
    resp = bob.post(f"/connections/{conn_id}", data={"name": "USA", "sync_interval_minutes": "30",
                                                     "enabled": "y", "timeout": "2"})
    assert resp.status_code == 302
    with app.app_context():
        conn = db.session.get(Connection, conn_id)
        assert (conn.name, conn.sync_interval_minutes, conn.url) == ("USA", 30, source.url)


def test_read_only_admin_sees_but_cannot_act(app, source, admin_client, readonly_client):
    conn_id = add_connection(admin_client, source)
    page = readonly_client.get("/connections").get_data(as_text=True)
    assert "Users and Services" in page and "Sync now" not in page
    assert readonly_client.post(f"/connections/{conn_id}/test").status_code == 403
    assert readonly_client.post(f"/connections/{conn_id}/delete").status_code == 403


def test_create_form_errors_are_shown_inline_and_nothing_is_saved(admin_client, source, app):
    resp = admin_client.post("/connections/new", data=create_form(source, password="nope"))
    assert resp.status_code == 422
    page = resp.get_data(as_text=True)
    assert "refused the authorization" in page
    assert "nope" not in page  # the password field is never filled back in
    resp = admin_client.post("/connections/new", data=create_form(source, url="ftp://x", name=""))
    page = resp.get_data(as_text=True)
    assert resp.status_code == 422 and "A name is required" in page and "web service address" in page
    resp = admin_client.post("/connections/new", data=create_form(source, kind="ldap",
                                                                  url="ldaps://dir.example.com"))
    assert resp.status_code == 422 and "base DN is required" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(Connection.id)) is None


def test_re_authorize_gets_a_new_token_and_a_wrong_password_changes_nothing(admin_client, source, app):
    conn_id = add_connection(admin_client, source)
    with app.app_context():
        old_token = db.session.get(Connection, conn_id).token_enc
    resp = admin_client.post(f"/connections/{conn_id}/authorize",
                             data={"url": source.url, "username": USERNAME, "password": "wrong"})
    assert resp.status_code == 422 and "did not accept" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Connection, conn_id).token_enc == old_token
    # An empty password reuses the stored one.
    resp = admin_client.post(f"/connections/{conn_id}/authorize",
                             data={"url": source.url, "username": USERNAME, "password": ""})
    assert resp.status_code == 302
    with app.app_context():
        assert db.session.get(Connection, conn_id).token_enc != old_token
    assert source.token_requests == 3


def test_expired_token_is_shown(admin_client, source, app):
    source.token_days = 0.5
    add_connection(admin_client, source)
    assert "in 0 days" in admin_client.get("/connections").get_data(as_text=True)
    source.token_days = -1
    conn_id = add_connection(admin_client, source, name="Expired")
    page = admin_client.get("/connections").get_data(as_text=True)
    assert "expired" in page
    admin_client.post(f"/connections/{conn_id}/test")
    page = admin_client.get("/connections").get_data(as_text=True)
    assert "re-authorize this connection" in page


def test_test_button_reports_failure_without_changing_records(admin_client, source, app):
    conn_id = add_connection(admin_client, source)
    source.mode = "garbage"
    resp = admin_client.post(f"/connections/{conn_id}/test", follow_redirects=True)
    page = resp.get_data(as_text=True)
    assert "the test failed" in page and "did not answer with JSON" in page
    with app.app_context():
        assert len(db.session.scalars(select(SourceRecord)).all()) == 7


def test_delete_keeps_imported_users_as_manual(admin_client, source, app):
    conn_id = add_connection(admin_client, source)
    with app.app_context():
        ids = [r.id for r in db.session.scalars(select(SourceRecord))][:2]
    admin_client.post("/import/records", data={"ids": ids})
    resp = admin_client.post(f"/connections/{conn_id}/delete", follow_redirects=True)
    assert "2 users imported from it stay" in resp.get_data(as_text=True)
    with app.app_context():
        users = db.session.scalars(select(User)).all()
        assert len(users) == 2 and {u.source for u in users} == {"manual"}
        assert db.session.scalar(select(SourceRecord.id)) is None


# --- Import Users ------------------------------------------------------------------

def test_import_users_lists_records_and_marks_imported(admin_client, source, app):
    add_connection(admin_client, source)
    page = admin_client.get("/import").get_data(as_text=True)
    for text in ("First3", "Last3", "4003", "mbg3", "acct3", "user3@example.org", "Users and Services"):
        assert text in page
    assert page.count('class="badge info">new') == 7
    with app.app_context():
        rec = db.session.scalar(select(SourceRecord).where(SourceRecord.source_key == "u-3"))
    resp = admin_client.post("/import/records", data={"ids": [rec.id]}, follow_redirects=True)
    assert "Imported 1 user." in resp.get_data(as_text=True)
    page = admin_client.get("/import").get_data(as_text=True)
    assert page.count('class="badge info">new') == 6 and ">imported</a>" in page
    # Search, filter by state, htmx fragment.
    frag = admin_client.get("/import?search=last5", headers={"HX-Request": "true",
                                                             "HX-Target": "records-table"})
    text = frag.get_data(as_text=True)
    assert "Last5" in text and "Last4" not in text and "<html" not in text
    new_only = admin_client.get("/import?state=new").get_data(as_text=True)
    assert "Last3" not in new_only and "Last4" in new_only
    with app.app_context():
        user = db.session.scalar(select(User))
        assert (user.login_id, user.source, user.source_key, user.email) == \
            ("user3", "connection", "u-3", "user3@example.org")
        assert user.profile.is_default


def test_import_all_matching_with_a_profile_and_skips(admin_client, source, app):
    from cds.models import DeploymentProfile
    source.users.append(usa_user(50, email="not-an-address"))
    source.users.append(usa_user(51, loginId="taken"))
    with app.app_context():
        profile = DeploymentProfile(name="Sales")
        db.session.add(profile)
        db.session.add(User(login_id="taken", last_name="Manual", email="m@example.org",
                            profile_id=db.session.scalar(select(DeploymentProfile.id))))
        db.session.commit()
        profile_id = profile.id
    add_connection(admin_client, source)
    resp = admin_client.post("/import/records", data={"all_matching": "1", "profile_id": profile_id},
                             follow_redirects=True)
    page = resp.get_data(as_text=True)
    assert "Imported 7 users." in page and "2 skipped" in page
    assert "not a valid e-mail address" in page and "is already used by" in page
    with app.app_context():
        imported = db.session.scalars(select(User).where(User.source == "connection")).all()
        assert len(imported) == 7 and {u.profile.name for u in imported} == {"Sales"}
    # Importing again adds nobody.
    resp = admin_client.post("/import/records", data={"all_matching": "1"}, follow_redirects=True)
    assert "Imported 0 users. 7 already imported." in resp.get_data(as_text=True)


def test_import_with_nothing_selected(admin_client, source):
    add_connection(admin_client, source)
    resp = admin_client.post("/import/records", data={}, follow_redirects=True)
    assert "No records are selected." in resp.get_data(as_text=True)


def test_import_and_deploy_sends_the_new_users_their_deployment(make_app, app, source, smtp_server):
    sink = smtp_server
    mail_app = make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=sink.port)
    make_admin(mail_app, "alice", "primary")
    client = mail_app.test_client()
    sign_in(client, "alice")
    add_connection(client, source)
    with mail_app.app_context():
        ids = [r.id for r in db.session.scalars(select(SourceRecord).order_by(SourceRecord.id))][:3]
    resp = client.post("/import/records", data={"ids": ids, "deploy": "1"}, follow_redirects=True)
    page = resp.get_data(as_text=True)
    assert "Imported 3 users." in page and "Deployment started" in page
    sink.wait_for(3)
    assert sorted(sink.handler.recipients()) == ["user1@example.org", "user2@example.org",
                                                  "user3@example.org"]
    with mail_app.app_context():
        users = db.session.scalars(select(User)).all()
        assert len(users) == 3 and all(u.deployed_at is not None for u in users)


def test_unreachable_source_is_saved_not_verified_and_test_verifies_it_later(admin_client, source, app):
    from tests.conftest import free_port
    closed = f"http://127.0.0.1:{free_port()}"
    resp = admin_client.post("/connections/new", data=create_form(source, url=closed, timeout="1"))
    assert resp.status_code == 302
    page = admin_client.get("/connections").get_data(as_text=True)
    assert "not verified" in page and "saved" in page
    with app.app_context():
        conn = db.session.scalar(select(Connection))
        assert not conn.verified and conn.get_password() == PASSWORD
        conn.url = source.url  # the source is reachable now
        db.session.commit()
        conn_id = conn.id
    admin_client.post(f"/connections/{conn_id}/test")
    page = admin_client.get("/connections").get_data(as_text=True)
    assert "connection works" in page and "Read 7 users" in page
    with app.app_context():
        assert db.session.get(Connection, conn_id).verified


def test_the_typed_password_is_kept_sealed_after_a_form_error(admin_client, source, app):
    resp = admin_client.post("/connections/new", data=create_form(source, name=""))
    page = resp.get_data(as_text=True)
    assert resp.status_code == 422 and PASSWORD not in page
    kept = re.search(r'name="password_kept" type="hidden" value="([^"]+)"', page).group(1)
    assert "The password you typed is kept" in page
    # Corrected without typing the password again: created and authorized with the kept one.
    resp = admin_client.post("/connections/new", data=create_form(source, password="", password_kept=kept))
    assert resp.status_code == 302
    with app.app_context():
        conn = db.session.scalar(select(Connection))
        assert conn.verified and conn.get_password() == PASSWORD
    # Something not sealed by this instance is no password.
    resp = admin_client.post("/connections/new", data=create_form(source, name="Other", password="",
                                                                   password_kept="forged"))
    assert resp.status_code == 422 and "password is required" in resp.get_data(as_text=True)
