"""The user field table (cds/users/fields.py) and the one way to change a user
(cds/users/changes.py): the surfaces are built from the table, the models agree with
it, and every writer of users follows the same rules."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy import String, select

from cds.extensions import db
from cds.models import SourceRecord, User
from cds.users.changes import BY_SOURCE, plan_change
from cds.users.fields import CONFIG_FIELDS, FIELD_NAMES, FIELDS, MAX_SECRET_LENGTH, SOURCE_OWNED_FIELDS, USER_SECRETS
from tests.conftest import add_imported_user

ROOT = Path(__file__).resolve().parents[2]

# Columns of User that are not fields of the table (keys, state, secrets, times).
USER_OTHER_COLUMNS = {"id", "login_key", "profile_id", "secrets_enc", "source", "connection_id",
                      "source_key", "deployed_at", "downloaded_at", "force_config", "redeploy_required",
                      "not_in_source", "send_error", "send_error_at", "config_version", "created_at",
                      "updated_at"}
RECORD_OTHER_COLUMNS = {"id", "connection_id", "source_key", "fetched_at"}


def test_the_model_columns_agree_with_the_field_table():
    """Names and sizes: the table says what a column holds, the model declares it."""
    user_cols = {c.key: c for c in User.__table__.columns}
    record_cols = {c.key: c for c in SourceRecord.__table__.columns}
    assert set(user_cols) - USER_OTHER_COLUMNS == set(FIELD_NAMES)
    assert set(record_cols) - RECORD_OTHER_COLUMNS == set(SOURCE_OWNED_FIELDS)
    for spec in FIELDS:
        assert isinstance(user_cols[spec.name].type, String) and user_cols[spec.name].type.length == spec.size, \
            spec.name
        assert not user_cols[spec.name].nullable, spec.name
        if spec.source_owned:
            assert record_cols[spec.name].type.length == spec.size, spec.name
    # The search index (migration 0002_users) covers every field.
    from cds.users.query import SEARCH_COLUMNS
    assert {c.key for c in SEARCH_COLUMNS} == set(FIELD_NAMES)


def test_every_field_of_the_client_configuration_is_where_the_table_says(app, client):
    """``config`` of each field names its place in the document the client downloads."""
    from tests.client.test_client_protocol import activate, issue
    from tests.deploy.test_deploy import make_profile, make_users
    make_profile(app, "Berlin", pbx_sip_host="pbx.example.com", mbg_sip_host="mbg.example.com",
                 mcs_host="mcs.example.com")
    [uid] = make_users(app, 1, profile_name="Berlin", pbx_number="4001", pbx_sip_username="sip7",
                       mbg_sip_username="mbg7", mcs_account="acc7")
    doc = activate(client, issue(app, uid)).get_json()
    with app.app_context():
        user = db.session.get(User, uid)
        for spec in FIELDS:
            if spec.config:
                section, key = spec.config.split(".")
                assert doc[section][key] == getattr(user, spec.name), spec.name
    assert CONFIG_FIELDS == tuple(f.name for f in FIELDS if f.config)


# --- one way to change a user ---------------------------------------------------------

class _Current:
    """A stored user as plan_change reads it."""

    def __init__(self, **values):
        base = {name: "" for name in FIELD_NAMES}
        base.update(login_id="ann", last_name="User", email="ann@example.org", source="manual",
                    profile_id=1)
        base.update(values)
        self.__dict__.update(base)

    def has_secret(self, name):
        return name == "voicemail_pin"


def test_plan_change_says_when_the_configuration_version_rises():
    assert not plan_change(_Current(), {"login_id": "ann", "last_name": "User"}).raises_config_version
    for values, secrets in (({"first_name": "Ann"}, {}), ({"profile_id": 2}, {}),
                            ({}, {"pbx_sip_password": "new-Secret-1"}), ({}, {"voicemail_pin": None})):
        change = plan_change(_Current(), values, secrets)
        assert change.ok and change.raises_config_version, (values, secrets)
    # Clearing a secret that is not set changes nothing.
    assert plan_change(_Current(), {}, {"mcs_password": None}).is_empty
    # A new user starts at version 1: nothing to raise.
    new = plan_change(None, {"login_id": "bob", "last_name": "B", "email": "b@example.org", "profile_id": 1},
                      {"voicemail_pin": "1234"})
    assert new.created and new.ok and not new.raises_config_version and new.fields["first_name"] == ""


def test_plan_change_reports_the_login_id_change_and_the_errors():
    change = plan_change(_Current(), {"login_id": "ann.new", "email": "not an address"})
    assert change.login_id_changed and change.old_login_id == "ann"
    assert set(change.errors) == {"email"}
    change = plan_change(_Current(), {}, {"voicemail_pin": "7" * (MAX_SECRET_LENGTH + 1)})
    assert change.errors["voicemail_pin"].startswith(f"Voicemail PIN must be at most {MAX_SECRET_LENGTH}")
    assert "nope" in plan_change(_Current(), {}, {"nope": "x"}).errors


def test_the_source_alone_changes_the_fields_it_owns():
    imported = _Current(source="connection")
    refused = plan_change(imported, {"last_name": "Other", "first_name": "X"})
    assert "set by the source" in refused.errors["source"] and "Firstname, Lastname are" in refused.errors["source"]
    assert plan_change(imported, {"last_name": "Other"}, by=BY_SOURCE).ok
    # The profile and the secrets (which no source provides) are the administrator's.
    assert plan_change(imported, {"profile_id": 3}, {"voicemail_pin": "1234"}).ok


def test_sync_and_the_form_refuse_the_same_values_with_the_same_message(app, admin_client):
    """Sync used its own copy of the rules; now both ask plan_change."""
    from cds.connections.service import _apply_record
    from cds.users.service import user_errors
    uid = add_imported_user(app)
    with app.app_context():
        from cds.profiles.service import default_profile
        user = db.session.get(User, uid)
        manual = User(login_id="man", last_name="Manual", email="m@example.org", profile_id=default_profile().id)
        db.session.add(manual)
        db.session.commit()
        rec = {"login_id": "imp", "last_name": "Imported", "email": "bad@", "first_name": ""}
        _, outcome = _apply_record(user, rec, tuple(rec), set())
        form = user_errors(manual, {"email": "bad@", "profile_id": manual.profile_id})
        assert outcome.outcome == "failed" and form["email"] in outcome.message
        before = user.config_version
        rec["email"] = "new@example.org"
        assert _apply_record(user, rec, tuple(rec), set())[0] == "updated"
        assert user.email == "new@example.org" and user.config_version == before + 1


def test_the_api_sets_an_imported_users_secrets_as_the_csv_import_does(app, api):
    """The source owns the fields it provides, never the secrets: CSV, API and CLI agree."""
    uid = add_imported_user(app)
    resp = api.patch(f"/api/v1/users/{uid}", json={"secrets": {"voicemail_pin": "2468"}})
    assert resp.status_code == 200 and resp.get_json()["secrets"]["voicemail_pin"] is True
    assert resp.get_json()["config_version"] == 2
    with app.app_context():
        assert db.session.get(User, uid).get_secret("voicemail_pin") == "2468"


def test_the_cli_refuses_to_change_a_field_an_imported_users_source_owns(app, runner):
    """It used to say the user was saved and drop the value."""
    add_imported_user(app)
    result = runner.invoke(args=["cds", "users", "edit", "imp", "--last-name", "Other"])
    assert result.exit_code == 1 and "Lastname is set by the source" in result.output
    with app.app_context():
        assert db.session.scalar(select(User.last_name)) == "Imported"


# --- the surfaces are built from the table -----------------------------------------------

SCRATCH_SCRIPT = textwrap.dedent('''
    import json, sys
    from sqlalchemy import select, text
    from cds import create_app
    from cds.extensions import db

    tmp = sys.argv[1]
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp}/cds.sqlite3", "SCHEDULER_ENABLED": False,
                      "TESTING": True, "JOB_EXECUTION": "inline"}, instance_path=f"{tmp}/instance")
    out = {}
    with app.app_context():
        from cds.cli import upgrade_database
        upgrade_database()
        # The column the scratch model declares (a real installation gets a migration).
        for table in ("user", "source_record"):
            db.session.execute(text(f'ALTER TABLE "{table}" ADD COLUMN department VARCHAR(64) NOT NULL DEFAULT \\'\\''))
        db.session.commit()
        with app.test_request_context():
            from flask import render_template_string
            from cds.users.forms import UserForm
            out["form"] = render_template_string(
                '{% from "users/_fields.html" import user_fields %}{{ user_fields(form) }}', form=UserForm())
        from cds.imports.csv_import import CsvOptions, commit_import, plan_import, template_csv
        out["template"] = template_csv()
        data = b"Login ID,Lastname,Email address,Department\\r\\nann,User,ann@example.org,Sales\\r\\n"
        out["import_columns"] = plan_import(data, CsvOptions()).unknown_columns
        commit_import(data, CsvOptions(), actor="test")
        from cds.models import User
        out["stored"] = db.session.scalar(select(User.department))
        from cds.export.service import export_csv
        out["export"] = "".join(export_csv({"filter": {}}))
        from cds.api.openapi import build_document
        out["openapi"] = build_document()["components"]["schemas"]["UserCreate"]["properties"]
        from cds.api.users import user_json
        out["api"] = user_json(db.session.scalar(select(User)))
        from cds.client.service import _USER_COLUMNS, _document
        from cds.models import DeploymentProfile, utcnow
        row = db.session.execute(select(*_USER_COLUMNS).join(
            DeploymentProfile, DeploymentProfile.id == User.profile_id)).one()
        out["client"] = _document(row, utcnow())["user"]
        from cds.sources import FIELD_SIZES
        from cds.sources.ldap import DEFAULT_MAPPING
        out["source"] = {"size": FIELD_SIZES.get("department"), "ldap": DEFAULT_MAPPING.get("department")}
        with app.test_request_context():
            from cds.connections.forms import ConnectionCreateForm
            out["mapping"] = [f.label.text for f in ConnectionCreateForm().mapping_fields()]
    out["cli"] = app.test_cli_runner().invoke(args=["cds", "users", "add", "--help"]).output
    print(json.dumps(out))
''')


def test_a_field_added_to_the_table_appears_on_every_surface(tmp_path):
    """Adds a "Department" field to the field table of a scratch copy of CDS (and its
    column to the scratch User model and database), and finds it — with nothing else
    edited — in the user form, the CSV template and import, the export, the OpenAPI
    document, the API's user object, the CLI's options, the client's configuration
    document, the sources' field sizes, the default LDAP mapping and the connection
    form's mapping inputs. A real column and a real round trip (import, then export and download),
    not only a look at the headers."""
    tree = tmp_path / "tree"
    for name in ("cds", "templates", "static", "migrations"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    fields_py = tree / "cds" / "users" / "fields.py"
    text = fields_py.read_text()
    marker = 'ldap="mail", hint="Deployment e-mails go to this address.", input="email"),\n'
    assert marker in text
    fields_py.write_text(text.replace(marker, marker + '    UserField("department", "Department", 64, '
                                                       'config="user.department", ldap="departmentNumber"),\n'))
    models_py = tree / "cds" / "models.py"
    text = models_py.read_text()
    # In the columns User and SourceRecord share: a source may provide the new field.
    column = '    email: Mapped[str] = mapped_column(String(254), default="")\n'
    assert column in text
    models_py.write_text(text.replace(column, column + '    department: Mapped[str] = '
                                                       'mapped_column(String(64), default="")\n', 1))
    proc = subprocess.run([sys.executable, "-c", SCRATCH_SCRIPT, str(tmp_path)], cwd=tree,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 'name="department"' in out["form"] and ">Department</label>" in out["form"]
    assert "Department" in out["template"].splitlines()[0].split(",")
    assert out["import_columns"] == [] and out["stored"] == "Sales"
    header, row = out["export"].lstrip("\ufeff").splitlines()[:2]
    assert "Department" in header.split(",") and "Sales" in row.split(",")
    assert out["openapi"]["department"]["maxLength"] == 64
    assert out["api"]["department"] == "Sales"
    assert "--department" in out["cli"]
    assert out["client"]["department"] == "Sales"
    assert out["source"] == {"size": 64, "ldap": "departmentNumber"}
    assert out["mapping"][-1] == "Department"


def test_the_secrets_are_defined_once():
    from cds.api.openapi import SCHEMAS
    from cds.imports.csv_import import SECRET_COLUMNS
    from cds.users.forms import UserForm
    assert set(SCHEMAS["Secrets"]["properties"]) == set(USER_SECRETS)
    assert {p["maxLength"] for p in SCHEMAS["Secrets"]["properties"].values()} == {MAX_SECRET_LENGTH}
    assert dict((k, label) for label, k in SECRET_COLUMNS) == USER_SECRETS
    assert all(hasattr(UserForm, name) for name in USER_SECRETS)


def test_an_id_change_with_another_field_raises_the_version_once_whoever_writes_it(app, admin_client, runner):
    """The CSV import used to raise config_version twice for an ID change plus another
    field (once for each), the form once: now every writer applies plan_change's answer."""
    from cds.profiles.service import default_profile
    from tests.imports.test_csv_import import make_csv, preview
    with app.app_context():
        pid = default_profile().id
        db.session.add_all([User(login_id=f"{who}1", last_name="L", email=f"{who}@example.org", profile_id=pid)
                            for who in ("csv", "cli")])
        db.session.commit()
        ids = {u.login_id: u.id for u in db.session.scalars(select(User))}
    page = preview(admin_client, make_csv([[str(ids["csv1"]), "csv2", "New", "L", "csv@example.org"]],
                                          header=["ID", "Login ID", "Firstname", "Lastname", "Email address"]),
                   overwrite="1").get_data(as_text=True)
    assert "Import 1 user" in page
    admin_client.post("/import/csv/commit")
    result = runner.invoke(args=["cds", "users", "edit", "cli1", "--login-id", "cli2", "--first-name", "New"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        for login in ("csv2", "cli2"):
            user = db.session.scalar(select(User).where(User.login_id == login))
            assert user.first_name == "New" and user.redeploy_required and user.config_version == 2, login
