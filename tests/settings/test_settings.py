"""Settings: General values, administrator accounts and their rules, my own password."""
from __future__ import annotations

import re

import pytest

from sqlalchemy import select

from cds.extensions import db
from cds.models import AdminAccount, AuditEvent
from tests.conftest import TEST_PASSWORD, make_admin, sign_in

NEW_PASSWORD = "a brand new passphrase"


def admin_id(app, name):
    with app.app_context():
        return db.session.scalar(select(AdminAccount.id).where(AdminAccount.username == name))


def events(app, action):
    with app.app_context():
        return db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                  .order_by(AuditEvent.id)).all()


# --- General ---------------------------------------------------------------------

def test_settings_index_has_sections(admin_client):
    page = admin_client.get("/settings").get_data(as_text=True)
    for href, label in (("/settings", "General"), ("/settings/mail", "Mail server"),
                        ("/settings/template", "E-mail template"), ("/settings/admins", "Administrators"),
                        ("/settings/account", "My account")):
        assert f'href="{href}"' in page and label in page
    assert 'value="http://cds.test"' in page and 'name="JOB_RETENTION_DAYS" value="30"' in page


def test_general_settings_are_saved_and_audited(admin_client, app):
    form = {"PUBLIC_URL": "https://cds.example.com/", "REDIRECT_URL": "https://go.example.com",
            "JOB_RETENTION_DAYS": "14", "AUTO_REDEPLOY_ON_ID_CHANGE": "1"}
    resp = admin_client.post("/settings", data=form, headers={"HX-Request": "true", "HX-Target": "general-form"})
    assert resp.status_code == 200
    text = resp.get_data(as_text=True)
    assert "Settings saved." in text and 'value="https://cds.example.com"' in text
    with app.app_context():
        from cds.settings.service import get_settings
        assert get_settings("PUBLIC_URL", "REDIRECT_URL", "JOB_RETENTION_DAYS", "AUTO_REDEPLOY_ON_ID_CHANGE") == {
            "PUBLIC_URL": "https://cds.example.com", "REDIRECT_URL": "https://go.example.com",
            "JOB_RETENTION_DAYS": 14, "AUTO_REDEPLOY_ON_ID_CHANGE": True}
    [event] = events(app, "settings.change")
    assert event.actor == "alice"
    assert event.detail == {"PUBLIC_URL": {"from": "http://cds.test", "to": "https://cds.example.com"},
                            "REDIRECT_URL": {"from": "http://cds.test", "to": "https://go.example.com"},
                            "JOB_RETENTION_DAYS": {"from": 30, "to": 14},
                            "AUTO_REDEPLOY_ON_ID_CHANGE": {"from": False, "to": True}}
    # Saving the same again changes nothing and records nothing.
    resp = admin_client.post("/settings", data=form)
    assert resp.status_code == 302
    assert "Nothing was changed." in admin_client.get("/settings").get_data(as_text=True)
    assert len(events(app, "settings.change")) == 1
    # Unticking the box is a change too.
    admin_client.post("/settings", data={**form, "AUTO_REDEPLOY_ON_ID_CHANGE": ""})
    assert events(app, "settings.change")[-1].detail == {"AUTO_REDEPLOY_ON_ID_CHANGE": {"from": True, "to": False}}


def test_invalid_general_settings_change_nothing(admin_client, app):
    resp = admin_client.post("/settings", data={"PUBLIC_URL": "cds.example.com", "REDIRECT_URL": "ftp://x",
                                                "JOB_RETENTION_DAYS": "-3"},
                             headers={"HX-Request": "true", "HX-Target": "general-form"})
    assert resp.status_code == 422
    text = resp.get_data(as_text=True)
    assert "The CDS public URL must be an http:// or https:// address" in text
    assert "The redirect server URL must be an http:// or https:// address" in text
    assert "Enter a number of days from 0 to 3650" in text
    assert 'value="cds.example.com"' in text  # what was typed stays in the form
    with app.app_context():
        from cds.settings.service import get_setting, is_overridden
        assert get_setting("PUBLIC_URL") == "http://cds.test" and not is_overridden("PUBLIC_URL")
    assert events(app, "settings.change") == []


def test_readonly_sees_settings_but_cannot_change_them(readonly_client, app):
    page = readonly_client.get("/settings").get_data(as_text=True)
    assert "Your account is read-only." in page and "disabled" in page
    resp = readonly_client.post("/settings", data={"PUBLIC_URL": "https://evil.example",
                                                   "REDIRECT_URL": "https://evil.example", "JOB_RETENTION_DAYS": "1"})
    assert resp.status_code == 403
    with app.app_context():
        from cds.settings.service import get_setting
        assert get_setting("PUBLIC_URL") == "http://cds.test"


# --- Administrator accounts ------------------------------------------------------------

def hx(client, url, **data):
    return client.post(url, data=data, headers={"HX-Request": "true", "HX-Target": "admins"})


def test_primary_adds_an_administrator_with_a_generated_password(admin_client, app):
    resp = hx(admin_client, "/settings/admins", username="bob", role="admin", password="")
    assert resp.status_code == 200
    text = resp.get_data(as_text=True)
    shown = re.search(r'<code class="password">([^<]+)</code>', text).group(1)
    assert "shown only this once" in text and "Administrator bob added." in text
    # The generated password works, and is not kept anywhere readable.
    bob = app.test_client()
    assert sign_in(bob, "bob", shown).status_code == 302
    [event] = events(app, "admin.create")
    assert event.detail == {"account": "bob", "role": "admin", "password_generated": True}
    assert shown not in str(event.detail)
    assert shown not in admin_client.get("/settings/admins").get_data(as_text=True)


def test_add_administrator_errors(admin_client, app):
    resp = hx(admin_client, "/settings/admins", username="alice", role="admin", password=NEW_PASSWORD)
    assert resp.status_code == 422 and "already exists" in resp.get_data(as_text=True)
    resp = hx(admin_client, "/settings/admins", username="bob", role="admin", password="short")
    assert resp.status_code == 422 and "at least 10 characters" in resp.get_data(as_text=True)
    resp = hx(admin_client, "/settings/admins", username="b b", role="admin", password=NEW_PASSWORD)
    assert resp.status_code == 422 and "A user name has 2-64 letters" in resp.get_data(as_text=True)
    resp = hx(admin_client, "/settings/admins", username="bob", role="root", password=NEW_PASSWORD)
    assert resp.status_code == 422 and "The role must be one of" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalars(select(AdminAccount.username)).all() == ["alice"]


def test_change_role_reset_password_disable_enable(admin_client, app):
    make_admin(app, "bob", "admin")
    bob_id = admin_id(app, "bob")
    bob = app.test_client()
    assert sign_in(bob, "bob").status_code == 302

    resp = hx(admin_client, f"/settings/admins/{bob_id}/role", role="readonly", confirm="1")
    assert resp.status_code == 200 and "bob is now read-only." in resp.get_data(as_text=True)
    assert bob.get("/users").status_code == 200  # a role change keeps the session
    assert bob.post("/settings", data={}).status_code == 403  # …with the new role

    resp = hx(admin_client, f"/settings/admins/{bob_id}/password", password=NEW_PASSWORD)
    assert "sessions have ended" in resp.get_data(as_text=True)
    assert bob.get("/users").status_code == 302  # signed out by the reset
    assert sign_in(bob, "bob", TEST_PASSWORD).status_code == 401
    assert sign_in(bob, "bob", NEW_PASSWORD).status_code == 302

    resp = hx(admin_client, f"/settings/admins/{bob_id}/disable")
    assert "bob is disabled and signed out." in resp.get_data(as_text=True)
    assert bob.get("/users").status_code == 302
    assert sign_in(bob, "bob", NEW_PASSWORD).status_code == 401
    hx(admin_client, f"/settings/admins/{bob_id}/enable")
    assert sign_in(bob, "bob", NEW_PASSWORD).status_code == 302

    assert [e.action for e in events(app, "admin.role") + events(app, "admin.password_reset")
            + events(app, "admin.disable") + events(app, "admin.enable")] == \
        ["admin.role", "admin.password_reset", "admin.disable", "admin.enable"]
    assert events(app, "admin.role")[0].detail == {"account": "bob", "from": "admin", "to": "readonly"}
    assert all(NEW_PASSWORD not in str(e.detail) for e in events(app, "admin.password_reset"))


def test_the_last_primary_administrator_stays(admin_client, app):
    alice_id = admin_id(app, "alice")
    resp = hx(admin_client, f"/settings/admins/{alice_id}/role", role="admin")
    assert resp.status_code == 422
    assert "alice is the last primary administrator and cannot be made administrator" in resp.get_data(as_text=True)
    resp = hx(admin_client, f"/settings/admins/{alice_id}/disable")
    assert resp.status_code == 422 and "cannot be disabled" in resp.get_data(as_text=True)
    with app.app_context():
        alice = db.session.get(AdminAccount, alice_id)
        assert alice.role == "primary" and not alice.disabled
    # A disabled primary does not count: still the last active one.
    make_admin(app, "carol", "primary")
    carol_id = admin_id(app, "carol")
    hx(admin_client, f"/settings/admins/{carol_id}/disable")
    assert hx(admin_client, f"/settings/admins/{alice_id}/role", role="readonly").status_code == 422
    # With a second active primary, alice may step down.
    hx(admin_client, f"/settings/admins/{carol_id}/enable")
    resp = hx(admin_client, f"/settings/admins/{alice_id}/role", role="admin", confirm="1")
    assert resp.status_code == 200
    with app.app_context():
        assert db.session.get(AdminAccount, alice_id).role == "admin"


def test_only_the_primary_administrator_changes_accounts(app, admin_client):
    make_admin(app, "bob", "admin")
    make_admin(app, "rita", "readonly")
    alice_id = admin_id(app, "alice")
    for name in ("bob", "rita"):
        c = app.test_client()
        assert sign_in(c, name).status_code == 302
        page = c.get("/settings/admins").get_data(as_text=True)
        assert "Only the primary administrator changes administrator accounts." in page
        assert "alice" in page and "Reset password" not in page and "Add an administrator" not in page
        for url, data in (("/settings/admins", {"username": "mallory", "role": "primary",
                                                "password": NEW_PASSWORD}),
                          (f"/settings/admins/{alice_id}/role", {"role": "readonly"}),
                          (f"/settings/admins/{alice_id}/password", {"password": NEW_PASSWORD}),
                          (f"/settings/admins/{alice_id}/disable", {})):
            assert c.post(url, data=data).status_code == 403, (name, url)
    with app.app_context():
        alice = db.session.get(AdminAccount, alice_id)
        assert alice.role == "primary" and not alice.disabled and alice.session_epoch == 0
        assert db.session.scalar(select(AdminAccount.id).where(AdminAccount.username == "mallory")) is None


def test_unknown_account_is_a_clear_error(admin_client):
    resp = hx(admin_client, "/settings/admins/999/disable")
    assert resp.status_code == 422 and "Administrator account 999 does not exist." in resp.get_data(as_text=True)


# --- My account ----------------------------------------------------------------------

def test_change_my_own_password(app, admin_client):
    other = app.test_client()
    assert sign_in(other, "alice").status_code == 302
    resp = admin_client.post("/settings/account", data={"current": "wrong password!", "new": NEW_PASSWORD,
                                                       "repeat": NEW_PASSWORD},
                             headers={"HX-Request": "true", "HX-Target": "account-form"})
    assert resp.status_code == 422 and "The current password is wrong." in resp.get_data(as_text=True)
    resp = admin_client.post("/settings/account", data={"current": TEST_PASSWORD, "new": NEW_PASSWORD,
                                                       "repeat": NEW_PASSWORD + "x"},
                             headers={"HX-Request": "true", "HX-Target": "account-form"})
    assert resp.status_code == 422 and "do not match" in resp.get_data(as_text=True)
    resp = admin_client.post("/settings/account", data={"current": TEST_PASSWORD, "new": NEW_PASSWORD,
                                                       "repeat": NEW_PASSWORD})
    assert resp.status_code == 302
    # This session goes on; the other one has ended; the new password signs in.
    assert "Your password is changed" in admin_client.get("/settings/account").get_data(as_text=True)
    assert other.get("/users").status_code == 302
    assert sign_in(app.test_client(), "alice", NEW_PASSWORD).status_code == 302
    [event] = events(app, "admin.password_change")
    assert event.actor == "alice" and NEW_PASSWORD not in str(event.detail)


def test_readonly_may_change_their_own_password(readonly_client, app):
    resp = readonly_client.post("/settings/account", data={"current": TEST_PASSWORD, "new": NEW_PASSWORD,
                                                          "repeat": NEW_PASSWORD})
    assert resp.status_code == 302
    assert sign_in(app.test_client(), "rita", NEW_PASSWORD).status_code == 302


def test_public_url_changed_in_settings_reaches_new_links(ctx):
    """Links and redirect entries use the URLs saved in Settings, not the start-up values."""
    from datetime import timedelta

    from cds.deploy.service import link_for
    from cds.models import RedirectEntry, utcnow
    from cds.redirect.service import register_link
    from cds.settings.service import save_settings

    save_settings({"PUBLIC_URL": "https://cds.example.org"})
    assert link_for("tok") == "https://cds.example.org/r/tok"  # no separate redirect server
    register_link("h" * 64, utcnow() + timedelta(hours=1))
    db.session.commit()
    assert db.session.get(RedirectEntry, "h" * 64).cds_url == "https://cds.example.org"
    save_settings({"REDIRECT_URL": "https://go.example.org"})
    assert link_for("tok") == "https://go.example.org/r/tok"


def test_role_changes_and_locking_oneself_out_ask_first(admin_client, app):
    from cds.settings import accounts
    make_admin(app, "bob", "admin")
    make_admin(app, "carol", "primary")
    bob_id, alice_id = admin_id(app, "bob"), admin_id(app, "alice")
    # The drop-down alone changes nothing: the page asks, saying what the role may do.
    page = hx(admin_client, f"/settings/admins/{bob_id}/role", role="readonly").get_data(as_text=True)
    assert 'id="admin-confirm"' in page and "Change bob from administrator to read-only?" in page
    assert "only look" in page and 'name="confirm" value="1"' in page
    # Demoting oneself (another primary exists) says so, and needs the confirmation.
    page = hx(admin_client, f"/settings/admins/{alice_id}/role", role="readonly").get_data(as_text=True)
    assert "This is your own account" in page
    page = hx(admin_client, f"/settings/admins/{alice_id}/disable").get_data(as_text=True)
    assert 'id="admin-confirm"' in page and "disabling it signs you out" in page
    with app.app_context():
        assert db.session.get(AdminAccount, bob_id).role == "admin"
        alice = db.session.get(AdminAccount, alice_id)
        assert alice.role == "primary" and not alice.disabled
        # The service enforces it for every caller, not only the page.
        with pytest.raises(accounts.ConfirmationNeeded):
            accounts.change_role(alice_id, "admin", actor="alice")
        with pytest.raises(accounts.ConfirmationNeeded):
            accounts.set_disabled(alice_id, True, actor="alice")
    hx(admin_client, f"/settings/admins/{bob_id}/role", role="read-only", confirm="1")
    with app.app_context():
        assert db.session.get(AdminAccount, bob_id).role == "readonly"
