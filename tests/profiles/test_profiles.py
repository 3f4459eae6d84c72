"""The Deployment Profiles tab: list, create, edit, delete with reassignment, default."""
from __future__ import annotations

from cds.extensions import db
from cds.models import DO_NOT_DEPLOY, AuditEvent, DeploymentProfile, User
from cds.profiles.service import default_profile, host_problem

HTMX = {"HX-Request": "true"}
FORM = {"HX-Request": "true", "HX-Target": "profile-form"}


def profile_form(**values):
    data = {"name": "Sales", "description": "Sales team", "client_types": ["mobile", "desktop"],
            "mbg_sip_host": "mbg.example.com", "mbg_sip_port": "5061", "mbg_sip_transport": "TLS",
            "pbx_sip_host": "10.0.0.5", "pbx_sip_port": "5060", "pbx_sip_transport": "UDP",
            "mcs_host": "mcs.example.com", "mcs_port": "443", "voicemail_number": "*86",
            "link_validity_hours": "48", "central_email": "", "email_subject": "", "email_body": ""}
    data.update(values)
    return {k: v for k, v in data.items() if v is not None}


def ids_by_name(app):
    with app.app_context():
        return {p.name: p.id for p in db.session.scalars(db.select(DeploymentProfile))}


def add_users(app, profile_id, n):
    with app.app_context():
        for i in range(n):
            db.session.add(User(login_id=f"p{profile_id}-{i}", last_name="X", email="x@example.com",
                                profile_id=profile_id))
        db.session.commit()


def test_list_shows_profiles_with_user_counts(app, admin_client):
    ids = ids_by_name(app)
    add_users(app, ids["Default"], 3)
    html = admin_client.get("/profiles").get_data(as_text=True)
    assert DO_NOT_DEPLOY in html and "Default" in html and ">default</span>" in html
    assert f'href="/users?profile={ids["Default"]}" title="Show these users">3</a>' in html


def test_create_profile_with_every_field(app, admin_client):
    resp = admin_client.post("/profiles/new", headers=FORM, data=profile_form(
        central_email="deploy@example.com", email_subject="Your phone app", email_body="Hello {name}"))
    assert resp.status_code == 204 and resp.headers["HX-Redirect"] == "/profiles"
    with app.app_context():
        p = db.session.scalar(db.select(DeploymentProfile).where(DeploymentProfile.name == "Sales"))
        assert p.client_types == "mobile,desktop" and p.mbg_sip_port == 5061 and p.pbx_sip_host == "10.0.0.5"
        assert p.link_validity_hours == 48 and p.central_email == "deploy@example.com"
        assert p.email_subject == "Your phone app" and p.voicemail_number == "*86" and not p.is_default
        assert db.session.scalar(db.select(AuditEvent).where(AuditEvent.action == "profile.create"))


def test_profile_validation(app, admin_client):
    resp = admin_client.post("/profiles/new", headers=FORM, data=profile_form(
        name="", mbg_sip_host="bad host!", mbg_sip_port="70000", pbx_sip_transport="SCTP",
        mcs_port="0", link_validity_hours="9000", client_types=None, central_email="not-an-address",
        voicemail_number="abc"))
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    assert 'id="profile-form"' in html and "<html" not in html
    for message in ("Name is required.", "host name (like mbg.example.com) or an IP address",
                    "Port must be a number from 1 to 65535.", "Not a valid choice",
                    "Link validity must be 1 to 8760 hours", "Choose at least one client type",
                    "is not a valid e-mail address", "Voicemail number may hold only digits"):
        assert message in html, message
    assert 'value="bad host!"' in html  # what was typed is kept
    resp = admin_client.post("/profiles/new", headers=FORM, data=profile_form(name="default"))
    assert resp.status_code == 422 and "already exists" in resp.get_data(as_text=True)
    resp = admin_client.post("/profiles/new", headers=FORM, data=profile_form(mcs_port="https"))
    assert resp.status_code == 422
    assert set(ids_by_name(app)) == {DO_NOT_DEPLOY, "Default"}


def test_host_names_and_addresses():
    for good in ("mbg.example.com", "mbg", "10.1.2.3", "2001:db8::1", "[2001:db8::1]", "a-b.c0.example."):
        assert host_problem(good) is None, good
    for bad in ("bad host", "-mbg.example.com", "mbg..example.com", "x" * 64 + ".com", "mbg_1.example"):
        assert host_problem(bad), bad


def test_edit_profile_bumps_its_users_config(app, admin_client):
    ids = ids_by_name(app)
    add_users(app, ids["Default"], 2)
    page = admin_client.get(f"/profiles/{ids['Default']}").get_data(as_text=True)
    assert 'value="Default"' in page
    resp = admin_client.post(f"/profiles/{ids['Default']}", headers=FORM,
                             data=profile_form(name="Default", mbg_sip_host="new-mbg.example.com"))
    assert resp.status_code == 204
    with app.app_context():
        assert db.session.get(DeploymentProfile, ids["Default"]).mbg_sip_host == "new-mbg.example.com"
        assert set(db.session.scalars(db.select(User.config_version))) == {2}


def test_do_not_deploy_cannot_be_renamed_deleted_or_default(app, admin_client):
    dnd = ids_by_name(app)[DO_NOT_DEPLOY]
    page = admin_client.get(f"/profiles/{dnd}").get_data(as_text=True)
    assert "cannot be renamed or deleted" in page and 'name="name"' not in page
    resp = admin_client.post(f"/profiles/{dnd}", headers=FORM, data={"name": "Renamed", "description": "x"})
    assert resp.status_code == 422 and "cannot be renamed" in resp.get_data(as_text=True)
    resp = admin_client.post(f"/profiles/{dnd}", headers=FORM, data={"description": "Never e-mail these"})
    assert resp.status_code == 204
    resp = admin_client.post(f"/profiles/{dnd}/delete", headers=HTMX)
    assert resp.status_code == 409 and "cannot be deleted" in resp.get_data(as_text=True)
    resp = admin_client.post(f"/profiles/{dnd}/default", headers=HTMX)
    assert resp.status_code == 409
    with app.app_context():
        p = db.session.get(DeploymentProfile, dnd)
        assert p.name == DO_NOT_DEPLOY and p.description == "Never e-mail these" and not p.is_default


def test_delete_in_use_is_refused_with_the_count_then_reassigned(app, admin_client):
    admin_client.post("/profiles/new", headers=FORM, data=profile_form(name="Sales"))
    ids = ids_by_name(app)
    add_users(app, ids["Sales"], 4)
    resp = admin_client.post(f"/profiles/{ids['Sales']}/delete", headers=HTMX)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert 'id="reassign-panel"' in html and "is used by 4 users" in html
    assert "Move users and delete Sales" in html
    with app.app_context():
        assert db.session.get(DeploymentProfile, ids["Sales"]) is not None
    resp = admin_client.post(f"/profiles/{ids['Sales']}/delete", headers=HTMX,
                             data={"reassign_to": str(ids["Default"])})
    assert resp.status_code == 200 and "4 users moved to Default" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(DeploymentProfile, ids["Sales"]) is None
        assert set(db.session.scalars(db.select(User.profile_id))) == {ids["Default"]}
        event = db.session.scalar(db.select(AuditEvent).where(AuditEvent.action == "profile.delete"))
        assert event.detail["moved_users"] == 4


def test_delete_unused_profile_and_the_default_rule(app, admin_client):
    admin_client.post("/profiles/new", headers=FORM, data=profile_form(name="Temp"))
    ids = ids_by_name(app)
    resp = admin_client.post(f"/profiles/{ids['Default']}/delete", headers=HTMX)
    assert resp.status_code == 409 and "default profile" in resp.get_data(as_text=True)
    resp = admin_client.post(f"/profiles/{ids['Temp']}/default", headers=HTMX)
    assert resp.status_code == 200 and "New users now get the profile Temp" in resp.get_data(as_text=True)
    with app.app_context():
        assert default_profile().id == ids["Temp"]
    assert admin_client.post(f"/profiles/{ids['Default']}/delete", headers=HTMX).status_code == 200
    assert set(ids_by_name(app)) == {DO_NOT_DEPLOY, "Temp"}
    # A new user gets the default profile preselected.
    assert f'<option selected value="{ids["Temp"]}">Temp</option>' in admin_client.get("/users/new").get_data(as_text=True)


def test_create_as_default(app, admin_client):
    admin_client.post("/profiles/new", headers=FORM, data=profile_form(name="Main", make_default="y"))
    with app.app_context():
        assert default_profile().name == "Main"
        assert db.session.scalar(db.select(db.func.count()).where(DeploymentProfile.is_default)) == 1


def test_read_only_sees_profiles_but_cannot_change_them(app, readonly_client):
    ids = ids_by_name(app)
    html = readonly_client.get("/profiles").get_data(as_text=True)
    assert "Default" in html and "New profile" not in html and "Delete" not in html
    assert readonly_client.get(f"/profiles/{ids['Default']}").status_code == 200
    assert readonly_client.post(f"/profiles/{ids['Default']}/delete").status_code == 403
    assert readonly_client.post("/profiles/new", data={"name": "X"}).status_code == 403


def test_a_profile_in_use_is_not_offered_for_deletion_with_a_plain_question(app, admin_client):
    """"Delete?" then "it has users" is a question answered wrongly: a profile in use says so
    first, and its Delete opens the choice of where the users move."""
    import re
    with app.app_context():
        used, empty = DeploymentProfile(name="Sales"), DeploymentProfile(name="Spare")
        db.session.add_all([used, empty])
        db.session.commit()
        used_id, empty_id = used.id, empty.id
    add_users(app, used_id, 2)
    page = admin_client.get("/profiles").get_data(as_text=True)
    used_button = re.search(rf'hx-post="/profiles/{used_id}/delete"[^>]*>', page).group(0)
    empty_button = re.search(rf'hx-post="/profiles/{empty_id}/delete"[^>]*>', page).group(0)
    assert "hx-confirm" not in used_button and "choose where they move" in used_button
    assert "hx-confirm" in empty_button
    panel = admin_client.post(f"/profiles/{used_id}/delete", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'id="reassign-panel"' in panel and "used by 2 users" in panel
