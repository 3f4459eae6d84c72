"""API v1 resources: users, profiles, connections, CSV import, audit, export.
Every response is checked against the OpenAPI document (tests/api_support.py)."""
import csv
import io

import pytest

from cds.extensions import db
from cds.models import AuditEvent, DeploymentProfile, User
from tests.api_support import ApiClient
from tests.fixtures.source_server import PASSWORD, USERNAME
from tests.conftest import add_imported_user, make_token


@pytest.fixture
def primary_api(app, client):
    return ApiClient(client, make_token(app, "primary", "owner"))


NEW_USER = {"login_id": "jdoe", "first_name": "Jane", "last_name": "Doe", "number": "+44 20 7946 0000",
            "email": "jane@example.com", "secrets": {"voicemail_pin": "482913", "pbx_sip_password": "S1p-Secret!"}}


def test_user_lifecycle_create_get_update_list_delete(app, api):
    resp = api.post("/api/v1/users", json=NEW_USER)
    assert resp.status_code == 201, resp.get_json()
    user = resp.get_json()
    assert user["secrets"] == {"mcs_password": False, "pbx_sip_password": True,
                               "teleworker_sip_password": False, "voicemail_pin": True}
    assert "482913" not in resp.get_data(as_text=True)
    uid = user["id"]
    assert api.get(f"/api/v1/users/{uid}").get_json()["number"] == "+44 20 7946 0000"
    # A partial update changes only what it names; null clears a secret.
    changed = api.patch(f"/api/v1/users/{uid}", json={"first_name": "Janet",
                                                       "secrets": {"voicemail_pin": None}}).get_json()
    assert changed["first_name"] == "Janet" and changed["last_name"] == "Doe"
    assert changed["secrets"]["voicemail_pin"] is False and changed["secrets"]["pbx_sip_password"] is True
    with app.app_context():
        assert db.session.get(User, uid).get_secret("pbx_sip_password") == "S1p-Secret!"
    listed = api.get("/api/v1/users?search=janet").get_json()
    assert listed["total"] == 1 and listed["items"][0]["login_id"] == "jdoe"
    assert api.get("/api/v1/users?search=nobody").get_json()["total"] == 0
    assert api.delete(f"/api/v1/users/{uid}").status_code == 204
    assert api.get(f"/api/v1/users/{uid}").status_code == 404
    with app.app_context():
        actions = set(db.session.scalars(db.select(AuditEvent.action)))
    assert {"user.create", "user.update"} <= actions


def test_user_validation_uses_the_form_rules(app, api):
    bad = api.post("/api/v1/users", json={"login_id": "x", "last_name": "", "email": "not-an-email",
                                          "number": "12a"})
    assert bad.status_code == 422
    details = bad.get_json()["details"]
    assert {"login_id", "last_name", "email", "number"} <= set(details)
    api.post("/api/v1/users", json=NEW_USER)
    dup = api.post("/api/v1/users", json={**NEW_USER, "secrets": {}})
    assert dup.status_code == 422 and "login_id" in dup.get_json()["details"]
    assert api.post("/api/v1/users", json={**NEW_USER, "colour": "red"}).status_code == 422
    assert api.post("/api/v1/users", json={**NEW_USER, "login_id": 7}).status_code == 422
    assert api.post("/api/v1/users", json=[1, 2]).status_code == 400
    assert api.patch("/api/v1/users/999999", json={"first_name": "x"}).status_code == 404
    assert api.get("/api/v1/users?sort=shoe_size").status_code == 400
    assert api.get("/api/v1/users?page=0").status_code == 400


def test_id_change_through_the_api_flags_redeploy(app, api):
    uid = api.post("/api/v1/users", json=NEW_USER).get_json()["id"]
    after = api.patch(f"/api/v1/users/{uid}", json={"login_id": "jane.doe"}).get_json()
    assert after["login_id"] == "jane.doe" and after["redeploy_required"] is True


def test_imported_user_fields_belong_to_the_source(app, api):
    uid = add_imported_user(app)
    resp = api.patch(f"/api/v1/users/{uid}", json={"last_name": "Changed"})
    assert resp.status_code == 409 and "last_name" in resp.get_json()["details"]


def test_read_only_token_is_refused_on_every_write(app, ro_api):
    for method, path, body in [
        ("POST", "/api/v1/users", NEW_USER), ("PATCH", "/api/v1/users/1", {"first_name": "x"}),
        ("DELETE", "/api/v1/users/1", None), ("POST", "/api/v1/profiles", {"name": "P"}),
        ("PATCH", "/api/v1/profiles/1", {"name": "P"}), ("DELETE", "/api/v1/profiles/1", None),
        ("POST", "/api/v1/connections", {"name": "c"}), ("PATCH", "/api/v1/connections/1", {}),
        ("DELETE", "/api/v1/connections/1", None), ("POST", "/api/v1/connections/1/sync", None),
        ("POST", "/api/v1/connections/1/authorize", {}), ("POST", "/api/v1/imports/csv", {"csv": ""}),
        ("POST", "/api/v1/imports/csv/preview", {"csv": ""}),
        ("POST", "/api/v1/users/actions/deploy", {"ids": [1]}), ("DELETE", "/api/v1/jobs/1", None),
    ]:
        kwargs = {"json": body} if body is not None else {}
        resp = ro_api.request(method, path, **kwargs)
        assert resp.status_code == 403, (method, path, resp.status_code)
        assert resp.get_json()["error"] == "forbidden"


def test_profiles_crud_and_rules(app, api):
    created = api.post("/api/v1/profiles", json={"name": "Sales", "mbg_sip_host": "mbg.example.com",
                                                 "mbg_sip_port": 5061, "link_validity_hours": 48})
    assert created.status_code == 201
    pid = created.get_json()["id"]
    bad = api.post("/api/v1/profiles", json={"name": "Bad", "mbg_sip_port": 70000,
                                             "mbg_sip_transport": "SCTP", "mbg_sip_host": "no host!"})
    assert bad.status_code == 422
    assert {"mbg_sip_port", "mbg_sip_transport", "mbg_sip_host"} <= set(bad.get_json()["details"])
    assert api.patch(f"/api/v1/profiles/{pid}", json={"description": "Field sales"}).get_json()["description"] \
        == "Field sales"
    uid = api.post("/api/v1/users", json={**NEW_USER, "profile_id": pid}).get_json()["id"]
    in_use = api.delete(f"/api/v1/profiles/{pid}")
    assert in_use.status_code == 409 and in_use.get_json()["details"] == {"users": 1}
    with app.app_context():
        dnd = db.session.scalar(db.select(DeploymentProfile.id).where(DeploymentProfile.is_do_not_deploy))
    assert api.delete(f"/api/v1/profiles/{dnd}").status_code == 409
    assert api.patch(f"/api/v1/profiles/{dnd}", json={"name": "Renamed"}).status_code == 422
    assert api.delete(f"/api/v1/profiles/{pid}?reassign_to={dnd}").status_code == 204
    assert api.get(f"/api/v1/users/{uid}").get_json()["profile_id"] == dnd
    listing = api.get("/api/v1/profiles").get_json()
    assert {p["name"] for p in listing["items"]} == {"Default", "Do Not Deploy"}


# Users in the HTTP source the `source` fixture (tests/conftest.py) starts.
SOURCE_USERS = 5


def test_connections_crud_sync_and_primary_rule(app, api, primary_api, source):
    body = {"name": "USA", "kind": "usa", "url": source.url, "username": USERNAME, "password": PASSWORD}
    refused = api.post("/api/v1/connections", json=body)
    assert refused.status_code == 403
    created = primary_api.post("/api/v1/connections", json=body)
    assert created.status_code == 201, created.get_json()
    conn = created.get_json()
    assert conn["verified"] is True and PASSWORD not in created.get_data(as_text=True)
    wrong = primary_api.post("/api/v1/connections", json={**body, "name": "Other", "password": "wrong"})
    assert wrong.status_code == 422
    cid = conn["id"]
    synced = api.post(f"/api/v1/connections/{cid}/sync")
    assert synced.status_code == 200 and synced.get_json()["records"]["total"] == 5
    assert api.patch(f"/api/v1/connections/{cid}", json={"sync_interval_minutes": 30}).get_json()[
        "sync_interval_minutes"] == 30
    assert api.patch(f"/api/v1/connections/{cid}", json={"url": "http://elsewhere"}).status_code == 422
    assert api.post(f"/api/v1/connections/{cid}/authorize", json={"password": PASSWORD}).status_code == 403
    assert primary_api.post(f"/api/v1/connections/{cid}/authorize", json={"password": PASSWORD}).status_code == 200
    assert api.get("/api/v1/connections").get_json()["total"] == 1
    assert api.delete(f"/api/v1/connections/{cid}").status_code == 204
    assert api.get(f"/api/v1/connections/{cid}").status_code == 404


def test_csv_import_preview_then_commit(app, api):
    text = ("Login ID,Lastname,Email address,Voicemail PIN\r\n"
            "alice,Smith,alice@example.com,1111\r\n"
            "bob,Jones,not-an-email,2222\r\n")
    preview = api.post("/api/v1/imports/csv/preview", json={"csv": text}).get_json()
    assert preview["counts"] == {"create": 1, "update": 0, "unchanged": 0, "errors": 1}
    assert preview["writable"] is False
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(User.id))) == 0
    refused = api.post("/api/v1/imports/csv", json={"csv": text})
    assert refused.status_code == 422 and refused.get_json()["details"]["counts"]["errors"] == 1
    done = api.post("/api/v1/imports/csv", json={"csv": text, "partial": True}).get_json()
    assert done["created"] == 1 and done["skipped"][0]["line"] == 3
    with app.app_context():
        alice = db.session.scalar(db.select(User).where(User.login_id == "alice"))
        assert alice.get_secret("voicemail_pin") == "1111"
    assert api.post("/api/v1/imports/csv", json={"csv_base64": "%%%"}).status_code == 422
    assert api.post("/api/v1/imports/csv", json={"file": "x"}).status_code == 422


def test_export_csv_and_audit_events(app, api):
    api.post("/api/v1/users", json=NEW_USER)
    resp = api.get("/api/v1/users/export.csv?search=jane")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    body = resp.get_data(as_text=True)
    assert body.startswith("\ufeff") and "482913" not in body and "S1p-Secret!" not in body
    rows = list(csv.reader(io.StringIO(body.lstrip("\ufeff"))))
    assert rows[0][:3] == ["ID", "Login ID", "Profile"] and rows[1][1] == "jdoe"
    assert rows[1][rows[0].index("Number")] == "+44 20 7946 0000"
    events = api.get("/api/v1/audit-events?action=users.export").get_json()
    assert events["total"] == 1 and events["items"][0]["actor"] == "api:script"
    assert api.get("/api/v1/audit-events?since=yesterday").status_code == 400
    assert api.get("/api/v1/audit-events?user=jdoe").get_json()["total"] >= 1
