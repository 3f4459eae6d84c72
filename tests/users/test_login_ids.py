"""Login IDs are unique ignoring upper/lower case, on every surface (form, CSV import,
API, CLI, sync), and the message says which user has the ID. The migration refuses
existing clashes with nothing changed."""
from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from cds import create_app
from cds.extensions import db
from cds.models import User
from tests.api.test_api import make_token
from tests.api_support import ApiClient
from tests.imports.test_csv_import import make_csv, person, preview
from tests.test_database import insert_profile_sql


def test_the_same_id_in_another_case_is_refused_everywhere(app, admin_client, client, runner):
    with app.app_context():
        from cds.profiles.service import default_profile
        db.session.add(User(login_id="Ärger.Jörg", first_name="Jörg", last_name="Ärger",
                            email="j@example.com", profile_id=default_profile().id))
        db.session.commit()
    # CSV import: against the table, and within the file.
    page = preview(admin_client, make_csv([person(1, **{"Login ID": "ärger.jörg"}),
                                           person(2, **{"Login ID": "NEW"}),
                                           person(3, **{"Login ID": "new"})])).get_data(as_text=True)
    assert "is already used by Jörg Ärger (Ärger.Jörg)" in page
    assert "also on line 3" in page and "same ignoring upper/lower case" in page
    # API.
    api = ApiClient(client, make_token(app))
    resp = api.post("/api/v1/users", json={"login_id": "ÄRGER.JÖRG", "last_name": "X", "email": "x@example.com"})
    assert resp.status_code == 422 and "Jörg Ärger" in resp.get_json()["details"]["login_id"]
    # CLI.
    result = runner.invoke(args=["cds", "users", "add", "ärger.jörg", "--last-name", "Y", "--email", "y@example.com"])
    assert result.exit_code != 0 and "already used by" in result.output
    # The CLI finds users by their ID in any case.
    assert "Ärger.Jörg" in runner.invoke(args=["cds", "users", "show", "ärger.JÖRG"]).output
    # The database holds the rule too.
    with app.app_context():
        db.session.add(User(login_id="ÄRGER.jörg", last_name="Z", email="z@example.com", profile_id=1))
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()


def test_api_accepts_the_profile_by_name_as_get_returns_it(app, client):
    api = ApiClient(client, make_token(app))
    with app.app_context():
        from cds.models import DeploymentProfile
        db.session.add(DeploymentProfile(name="Teleworkers"))
        db.session.commit()
    resp = api.post("/api/v1/users", json={"login_id": "jdoe", "last_name": "Doe", "email": "j@example.com",
                                           "profile": "teleworkers"})
    assert resp.status_code == 201 and resp.get_json()["profile"] == "Teleworkers"
    got = resp.get_json()
    resp = api.patch(f"/api/v1/users/{got['id']}", json={"profile": "Default", "profile_id": got["profile_id"]})
    assert resp.status_code == 422 and "different profiles" in resp.get_json()["message"]
    resp = api.patch(f"/api/v1/users/{got['id']}", json={"profile": "Nope"})
    assert resp.status_code == 422 and resp.get_json()["details"] == {"profile": "no such profile"}


def test_upgrade_stops_on_ids_that_differ_only_in_case(tmp_path, capfd):
    from flask_migrate import upgrade

    app = create_app({"SCHEDULER_ENABLED": False}, instance_path=str(tmp_path))
    with app.app_context():
        from cds.extensions import migrations
        directory = migrations(app).directory
        upgrade(directory=directory, revision="0003_user_secrets")
        insert_profile_sql()
        for login in ("jdoe", "JDoe"):
            db.session.execute(text(
                "INSERT INTO user (login_id, profile_id, first_name, last_name, number, pbx_number,"
                " pbx_sip_username, mbg_sip_username, mcs_account, email, source, force_config,"
                " redeploy_required, not_in_source, config_version, created_at, updated_at)"
                " VALUES (:l, 1, '', 'Doe', '', '', '', '', '', 'j@example.com', 'manual', 0, 0, 0, 1,"
                " '2026-01-01', '2026-01-01')"), {"l": login})
        db.session.commit()
        with pytest.raises(SystemExit):  # Flask-Migrate logs the error and exits
            upgrade(directory=directory, revision="0006_login_key")
        shown = "".join(capfd.readouterr())
        assert "differ only in upper/lower case" in shown and "'JDoe'" in shown and "'jdoe'" in shown
        db.session.remove()
        columns = [r[1] for r in db.session.execute(text("PRAGMA table_info(user)"))]
        assert "login_key" not in columns
