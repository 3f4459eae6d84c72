"""Export (CSV): format, selection, secrets never exported, formula neutralisation, streaming."""
from __future__ import annotations

import codecs
import csv
import io
from datetime import datetime

import pytest

from cds.extensions import db
from cds.models import AuditEvent, Connection, User

SECRETS = {
    "mcs_password": "Planted-MCS-pw-9f3a",
    "pbx_sip_password": "Planted-PBX-pw-71c2",
    "teleworker_sip_password": "Planted-TW-pw-e08d",
    "voicemail_pin": "804217",
}

HEADER = ["ID", "Login ID", "Profile", "Firstname", "Lastname", "Number", "PBX Number",
          "PBX SIP User name", "MBG SIP User name", "MiCollab Client Service Account",
          "Email address", "Source", "Deployed", "Downloaded"]


def add_user(login_id, **fields):
    from cds.profiles.service import default_profile
    user = User(login_id=login_id, profile_id=fields.pop("profile_id", None) or default_profile().id,
                first_name=fields.pop("first_name", login_id.title()), last_name=fields.pop("last_name", "Test"),
                email=fields.pop("email", f"{login_id}@example.com"), **fields)
    db.session.add(user)
    db.session.commit()
    return user


def parse(body: bytes) -> list[list[str]]:
    assert body.startswith(codecs.BOM_UTF8)
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline="")))


@pytest.fixture
def people(app):
    with app.app_context():
        ids = {}
        ids["ann"] = add_user("ann", first_name="Ann", last_name="Archer", number="+44 20 7946 0000",
                              pbx_number="2001", deployed_at=datetime(2026, 11, 24, 10, 0, 0)).id
        ids["bob"] = add_user("bob", first_name="Bob", last_name="Baker", number="2002",
                              mbg_sip_username="bob.sip", downloaded_at=datetime(2026, 11, 25, 8, 30, 5)).id
        ids["cy"] = add_user("cy", first_name="Cy, Jr.", last_name='O"Neil', number="2003").id
        return ids


def test_export_of_selection(admin_client, people):
    resp = admin_client.get("/users/export.csv", query_string=[("ids", people["ann"]), ("ids", people["cy"])])
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="cds-users-')
    body = resp.get_data()
    rows = parse(body)
    assert rows[0] == HEADER
    assert [r[1] for r in rows[1:]] == ["ann", "cy"]
    ann = dict(zip(HEADER, rows[1]))
    assert ann["ID"] == str(people["ann"])
    assert ann["Profile"] == "Default" and ann["Source"] == "Manual"
    assert ann["Number"] == "+44 20 7946 0000"  # a phone number comes out exactly as stored
    assert ann["Deployed"] == "2026-11-24T10:00:00Z" and ann["Downloaded"] == ""
    cy = dict(zip(HEADER, rows[2]))
    assert cy["Firstname"] == "Cy, Jr." and cy["Lastname"] == 'O"Neil'
    # RFC 4180: CRLF line ends, quoted commas and doubled quotes.
    text = body.decode("utf-8-sig")
    assert text.endswith("\r\n") and text.count("\r\n") == 3
    assert '"Cy, Jr.","O""Neil"' in text


def test_export_of_filter(admin_client, people, app):
    with app.app_context():
        db.session.add(Connection(name="MBG East", kind="mbg", url="https://mbg.example"))
        db.session.commit()
        conn_id = db.session.scalars(db.select(Connection.id)).one()
        add_user("dan", first_name="Dan", last_name="Baker", source="connection",
                 connection_id=conn_id, source_key="d1")
    resp = admin_client.get("/users/export.csv?all_matching=1&search=baker")
    rows = parse(resp.get_data())
    assert [r[1] for r in rows[1:]] == ["bob", "dan"]
    assert rows[1][HEADER.index("Downloaded")] == "2026-11-25T08:30:05Z"
    assert rows[2][HEADER.index("Source")] == "MBG East"
    # Filter that matches nobody: just the header.
    rows = parse(admin_client.get("/users/export.csv?all_matching=1&search=nobody-here").get_data())
    assert rows == [HEADER]
    # No selection at all is a clear error.
    resp = admin_client.get("/users/export.csv")
    assert resp.status_code == 400 and "No users are selected" in resp.get_data(as_text=True)


def test_export_never_contains_the_four_secrets(admin_client, app):
    with app.app_context():
        for i in range(5):
            user = add_user(f"secret{i}")
            for name, value in SECRETS.items():
                user.set_secret(name, f"{value}-{i}")
            db.session.commit()
    body = admin_client.get("/users/export.csv?all_matching=1").get_data()
    text = body.decode("utf-8-sig")
    assert len(parse(body)) == 6
    for value in SECRETS.values():
        assert value not in text
    for header in ("password", "PIN", "Voicemail"):
        assert header not in text.splitlines()[0]
    # Nor the encrypted form of them.
    with app.app_context():
        stored = db.session.scalars(db.select(User.secrets_enc)).all()
        details = " ".join(str(e.detail) for e in db.session.scalars(db.select(AuditEvent)))
    assert all(s and s not in text for s in stored)
    # The export's audit event carries none of them either.
    assert details and all(v not in details for v in SECRETS.values())


def test_formula_cells_are_neutralised(admin_client, app):
    with app.app_context():
        add_user("f1", first_name="=HYPERLINK(\"http://evil\")", last_name="@SUM(A1)",
                 number="+44 20 7946 0000", pbx_number="-2001")
        add_user("f2", first_name="+cmd|' /C calc'!A0", last_name="-1+1", number="(020) 7946.0000",
                 mcs_account="\tTabbed", email="\rcr@example.com")
    rows = parse(admin_client.get("/users/export.csv?all_matching=1").get_data())
    f1, f2 = (dict(zip(HEADER, r)) for r in rows[1:])
    assert f1["Firstname"] == "'=HYPERLINK(\"http://evil\")"
    assert f1["Lastname"] == "'@SUM(A1)"
    assert f1["Number"] == "+44 20 7946 0000"
    assert f1["PBX Number"] == "-2001"
    assert f2["Firstname"] == "'+cmd|' /C calc'!A0"
    assert f2["Lastname"] == "'-1+1"
    assert f2["Number"] == "(020) 7946.0000"
    assert f2["MiCollab Client Service Account"] == "'\tTabbed"
    assert f2["Email address"] == "'\rcr@example.com"


def test_neutralise_rules():
    from cds.csvfile import neutralise
    for safe in ("", "Ann", "+44 20 7946 0000", "+1 (555) 010-9999", "-42", "2001", "a=b", "1.5"):
        assert neutralise(safe) == safe
    for bad in ("=1+1", "@x", "\tx", "\rx", "+", "-", "+x", "-1+1", "+44 20 7946 0000=A1"):
        assert neutralise(bad) == "'" + bad


def test_export_is_streamed(admin_client, app, monkeypatch):
    """The response is a generator read a batch at a time: a user added after the
    first rows were sent still appears, which a body built up front could not do."""
    from cds.export import service
    monkeypatch.setattr(service, "BATCH_SIZE", 2)
    with app.app_context():
        for i in range(5):
            add_user(f"s{i}")
    resp = admin_client.get("/users/export.csv?all_matching=1", buffered=False)
    assert resp.is_streamed
    chunks = iter(resp.response)
    header = next(chunks)
    assert header.decode("utf-8-sig").startswith("ID,Login ID,")
    first_batch = next(chunks).decode()
    assert first_batch.count("\r\n") == 2
    with app.app_context():
        add_user("zz-late")
    rest = b"".join(chunks).decode()
    resp.close()
    assert "zz-late" in rest
    assert first_batch.count("\r\n") + rest.count("\r\n") == 6


def test_export_is_audited(admin_client, people, app):
    admin_client.get("/users/export.csv?all_matching=1&search=baker")
    with app.app_context():
        event = db.session.scalars(db.select(AuditEvent).where(AuditEvent.action == "users.export")).one()
        assert event.actor == "alice" and event.count == 1
        assert event.detail["selection"] == {"filter": {"search": "baker"}}


def test_readonly_may_export(readonly_client, people):
    resp = readonly_client.get("/users/export.csv?all_matching=1")
    assert resp.status_code == 200 and len(parse(resp.get_data())) == 4


def test_export_requires_sign_in(client):
    resp = client.get("/users/export.csv?all_matching=1")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_cli_export(app, people, tmp_path):
    out = tmp_path / "users.csv"
    runner = app.test_cli_runner()
    result = runner.invoke(args=["cds", "export-csv", "--search", "baker", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = parse(out.read_bytes())
    assert rows[0] == HEADER and [r[1] for r in rows[1:]] == ["bob"]
    result = runner.invoke(args=["cds", "export-csv", "--profile", "default"])
    assert result.exit_code == 0
    assert result.stdout_bytes.startswith(codecs.BOM_UTF8)
    assert len(parse(result.stdout_bytes)) == 4
    result = runner.invoke(args=["cds", "export-csv", "--profile", "No Such"])
    assert result.exit_code == 1 and "no deployment profile is named 'No Such'" in result.output
    with app.app_context():
        events = db.session.scalars(db.select(AuditEvent).where(AuditEvent.action == "users.export")).all()
        assert [e.actor for e in events] == ["cli", "cli"]


def test_export_edit_reimport_round_trip(admin_client, app):
    """The administrators' workflow: export, edit in a spreadsheet, re-import with "allow overwrite"."""
    from cds.imports.csv_import import CsvOptions, commit_import, plan_import
    with app.app_context():
        ann = add_user("ann", first_name="=Ann", number="+44 20 7946 0000", pbx_number="-2001")
        bob = add_user("bob", first_name="Bob")
        ann_id, bob_id = ann.id, bob.id
    body = admin_client.get("/users/export.csv?all_matching=1").get_data()
    with app.app_context():
        # Unedited, the file changes nothing (neutralised cells come back as stored).
        plan = plan_import(body, CsvOptions(overwrite=True))
        assert plan.error_count == 0 and plan.unknown_columns == []
        assert plan.count("unchanged") == 2 and plan.count("update") == 0
    rows = parse(body)
    header = rows[0] + ["Voicemail PIN"]
    edited = [header]
    for row in rows[1:]:
        cells = dict(zip(rows[0], row))
        if cells["Login ID"] == "bob":
            cells["Firstname"] = "Robert"
        edited.append([cells[h] for h in rows[0]] + ["5511" if cells["Login ID"] == "bob" else ""])
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(edited)
    with app.app_context():
        result = commit_import(out.getvalue().encode("utf-8-sig"), CsvOptions(overwrite=True), actor="alice")
        assert (result.created, result.updated) == (0, 1)
        bob, ann = db.session.get(User, bob_id), db.session.get(User, ann_id)
        assert bob.first_name == "Robert" and bob.get_secret("voicemail_pin") == "5511"
        assert (ann.first_name, ann.number, ann.pbx_number) == ("=Ann", "+44 20 7946 0000", "-2001")
        assert not ann.has_secret("voicemail_pin")
