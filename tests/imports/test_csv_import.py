"""CSV import with a hostile file set: each file gets the right preview, and the
database holds either the whole import, the good rows (partial), or nothing."""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

from sqlalchemy import func, select

from cds.extensions import db
from cds.imports.csv_import import TEMPLATE_HEADER
from cds.models import AuditEvent, ClientDevice, DeploymentProfile, User
from cds.profiles.service import default_profile

HEADER = ["Login ID", "Firstname", "Lastname", "Number", "Email address"]


def make_csv(rows, header=HEADER, bom=False, encoding="utf-8") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = out.getvalue().encode(encoding)
    return (b"\xef\xbb\xbf" + data) if bom else data


def person(i, **changes):
    row = {"Login ID": f"p{i}", "Firstname": f"First{i}", "Lastname": f"Last{i}",
           "Number": str(1000 + i), "Email address": f"p{i}@example.org"}
    row.update(changes)
    return [row[h] for h in HEADER]


def preview(client, data: bytes, name="users.csv", **options):
    form = {"file": (io.BytesIO(data), name)}
    form.update({k: v for k, v in options.items()})
    return client.post("/import/csv/preview", data=form, content_type="multipart/form-data")


def count_users(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(User.id)))


def uploads(app) -> list[Path]:
    path = Path(app.instance_path) / "uploads"
    return [p for p in path.iterdir() if p.is_file()] if path.exists() else []


def test_template_lists_every_import_column(admin_client):
    resp = admin_client.get("/import/csv/template")
    assert resp.mimetype == "text/csv"
    header = next(csv.reader(io.StringIO(resp.get_data(as_text=True))))
    assert header == TEMPLATE_HEADER
    for name in ("ID", "Login ID", "Profile", "Firstname", "Lastname", "Number", "PBX Number",
                 "PBX SIP User name", "MBG SIP User name", "MiCollab Client Service Account",
                 "Email address", "MiCollab Client password", "PBX SIP password",
                 "Teleworker SIP password", "Voicemail PIN"):
        assert name in header


def test_preview_writes_nothing_then_commit_imports(admin_client, app):
    before = uploads(app)
    data = make_csv([person(1), person(2)])
    resp = preview(admin_client, data)
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "Preview of users.csv" in page and "Import 2 users" in page
    assert count_users(app) == 0
    files = [f for f in uploads(app) if f not in before]
    assert len(files) == 1 and (files[0].stat().st_mode & 0o777) == 0o600
    # The session cookie carries a reference, not the file.
    cookie = admin_client.get_cookie("cds_session")
    assert cookie is not None and len(cookie.value) < 1000
    resp = admin_client.post("/import/csv/commit")
    assert resp.status_code == 200 and "2 created" in resp.get_data(as_text=True)
    assert count_users(app) == 2 and uploads(app) == before
    with app.app_context():
        u = db.session.scalar(select(User).where(User.login_id == "p1"))
        assert (u.first_name, u.last_name, u.number, u.email, u.source) == \
            ("First1", "Last1", "1001", "p1@example.org", "csv")
        assert u.profile_id == default_profile().id
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "users.import_csv"))
        assert event.count == 2 and event.actor == "alice"
    # Committing again: the upload is gone.
    resp = admin_client.post("/import/csv/commit", follow_redirects=True)
    assert "no previewed file" in resp.get_data(as_text=True)


def test_cancel_discards_the_upload(admin_client, app):
    before = uploads(app)
    preview(admin_client, make_csv([person(1)]))
    assert len(uploads(app)) == len(before) + 1
    resp = admin_client.post("/import/csv/cancel", follow_redirects=True)
    assert "nothing was written" in resp.get_data(as_text=True)
    assert uploads(app) == before and count_users(app) == 0


def test_columns_in_any_order_ignoring_case_and_spaces_with_a_bom(admin_client, app):
    header = [" email ADDRESS", "lastname", "LOGIN  ID", "first name"]
    data = make_csv([["a@example.org", "Alpha", "alpha", "Al"]], header=header, bom=True)
    page = preview(admin_client, data).get_data(as_text=True)
    assert "Import 1 user" in page and "Unknown columns" not in page
    admin_client.post("/import/csv/commit")
    with app.app_context():
        u = db.session.scalar(select(User))
        assert (u.login_id, u.first_name, u.last_name, u.email) == ("alpha", "Al", "Alpha", "a@example.org")


def test_wrong_encoding_is_refused_clearly(admin_client, app):
    before = uploads(app)
    data = make_csv([person(1, Lastname="Müller")], encoding="latin-1")
    resp = preview(admin_client, data)
    page = resp.get_data(as_text=True)
    assert resp.status_code == 422
    assert "not UTF-8 text (byte 0xFC on line 2)" in page and "CSV UTF-8" in page
    resp = preview(admin_client, make_csv([person(1)], encoding="utf-16"))
    assert resp.status_code == 422 and "UTF-16" in resp.get_data(as_text=True)
    assert uploads(app) == before and count_users(app) == 0


def test_quoted_commas_and_newlines(admin_client, app):
    rows = [person(1, Lastname="Doe, Jr."),
            person(2, Firstname="Two\nLines"),
            person(3, Lastname='Say "hi"')]
    page = preview(admin_client, make_csv(rows), partial="1").get_data(as_text=True)
    # Line numbers count the file's lines: row 2 spans lines 3-4, so row 3 starts on line 5.
    assert re.search(r"<td>3</td><td>p2</td><td class=\"reason\">Firstname contains control characters", page)
    assert "Import 2 users (skip 1 row)" in page
    admin_client.post("/import/csv/commit")
    with app.app_context():
        names = dict(db.session.execute(select(User.login_id, User.last_name)).all())
        assert names == {"p1": "Doe, Jr.", "p3": 'Say "hi"'}


def test_formula_looking_cells_are_stored_as_text(admin_client, app):
    rows = [person(1, Firstname="=HYPERLINK(\"http://evil.example\",\"x\")"),
            person(2, Firstname="'=1+2", Number="+44 20 7946 0000"),
            person(3, Firstname="@SUM(A1)", Number="-12")]
    page = preview(admin_client, make_csv(rows)).get_data(as_text=True)
    assert "&#34;http://evil.example&#34;" in page or "&quot;http://evil.example&quot;" in page
    admin_client.post("/import/csv/commit")
    with app.app_context():
        got = {u.login_id: (u.first_name, u.number) for u in db.session.scalars(select(User))}
    assert got["p1"][0] == "=HYPERLINK(\"http://evil.example\",\"x\")"
    assert got["p2"] == ("=1+2", "+44 20 7946 0000")  # the export's apostrophe comes off
    assert got["p3"] == ("@SUM(A1)", "-12")


def big_file(n=10_000, bad=(1234, 5678, 9999)) -> bytes:
    rows = []
    for i in range(1, n + 1):
        if i == bad[0]:
            rows.append(person(i, **{"Email address": "not-an-email"}))
        elif i == bad[1]:
            rows.append(person(i, **{"Login ID": "p1"}))  # duplicate of row 1
        elif i == bad[2]:
            rows.append(person(i, Lastname=""))
        else:
            rows.append(person(i))
    return make_csv(rows)


def test_ten_thousand_rows_three_bad_all_or_nothing(admin_client, app):
    resp = preview(admin_client, big_file())
    page = resp.get_data(as_text=True)
    lines = re.findall(r"<tr><td>(\d+)</td><td>[^<]*</td><td class=\"reason\">([^<]*)</td></tr>", page)
    assert [int(n) for n, _ in lines] == [1235, 5679, 10000]
    assert "not a valid e-mail address" in lines[0][1]
    assert "Login ID &#39;p1&#39; is also on line 2" in lines[1][1]
    assert "Lastname is required" in lines[2][1]
    assert "Fix the errors first" in page and "All or nothing" in page
    resp = admin_client.post("/import/csv/commit")
    assert resp.status_code == 422
    assert "3 rows have errors; nothing was imported" in resp.get_data(as_text=True)
    assert count_users(app) == 0


def test_ten_thousand_rows_three_bad_partial(admin_client, app):
    page = preview(admin_client, big_file(), partial="1").get_data(as_text=True)
    assert "Import 9997 users (skip 3 rows)" in page
    resp = admin_client.post("/import/csv/commit")
    page = resp.get_data(as_text=True)
    assert "9997 created" in page.replace(",", "") and "<td>10000</td>" in page
    assert count_users(app) == 9997
    with app.app_context():
        assert db.session.scalar(select(User.id).where(User.login_id == "p1234")) is None
    # The Users tab's search index covers the bulk-imported users, and still follows
    # users added one by one afterwards.
    assert "Last7777" in admin_client.get("/users?search=last7777").get_data(as_text=True)
    preview(admin_client, make_csv([person(20001, Lastname="Zyxwvut")]))
    admin_client.post("/import/csv/commit")
    page = admin_client.get("/users?search=zyxwv").get_data(as_text=True)
    assert "Zyxwvut" in page and "Last7777" not in page


def test_duplicate_ids_login_ids_and_unknown_profile(admin_client, app):
    with app.app_context():
        db.session.add(DeploymentProfile(name="Sales"))
        db.session.add(User(login_id="existing", last_name="E", email="e@example.org",
                            profile_id=default_profile().id))
        db.session.add(User(login_id="taken", last_name="T", email="t@example.org",
                            profile_id=default_profile().id))
        db.session.commit()
        existing_id = db.session.scalar(select(User.id).where(User.login_id == "existing"))
    header = ["ID", "Login ID", "Lastname", "Email address", "Profile", "Shoe size"]
    rows = [[str(existing_id), "existing", "E2", "e@example.org", "", "42"],
            [str(existing_id), "other", "O", "o@example.org", "", "43"],
            ["", "existing", "Dup", "d@example.org", "", ""],
            ["", "taken", "Dup", "t2@example.org", "", ""],
            ["", "new1", "N", "n@example.org", "sales", ""],
            ["", "new2", "N", "n2@example.org", "Marketing", ""],
            ["", "short", "N", "n3@example.org", ""]]
    page = preview(admin_client, make_csv(rows, header=header), overwrite="1").get_data(as_text=True)
    assert "Unknown columns (not imported): Shoe size" in page
    assert f"ID {existing_id} is also on line 2" in page
    assert "Login ID &#39;existing&#39; is also on line 2" in page
    assert "Login ID &#39;taken&#39; is already used by" in page
    assert "Unknown profile &#39;Marketing&#39;" in page
    assert "Has 5 cells; the header has 6" in page
    admin_client.post("/import/csv/commit")
    with app.app_context():
        assert db.session.scalar(select(func.count(User.id))) == 2  # all or nothing


def test_profile_column_and_one_profile_for_all(admin_client, app):
    with app.app_context():
        sales = DeploymentProfile(name="Sales")
        support = DeploymentProfile(name="Support")
        db.session.add_all([sales, support])
        db.session.commit()
        sales_id, support_id = sales.id, support.id
    header = HEADER + ["Profile"]
    rows = [person(1) + ["SALES"], person(2) + [""]]
    preview(admin_client, make_csv(rows, header=header))
    admin_client.post("/import/csv/commit")
    with app.app_context():
        got = dict(db.session.execute(select(User.login_id, User.profile_id)).all())
        assert got == {"p1": sales_id, "p2": default_profile().id}
    page = preview(admin_client, make_csv([person(3) + ["Sales"]], header=header),
                   profile_id=str(support_id)).get_data(as_text=True)
    assert "Every row gets the profile &#39;Support&#39; (the Profile column is ignored)" in page
    admin_client.post("/import/csv/commit")
    with app.app_context():
        assert db.session.scalar(select(User.profile_id).where(User.login_id == "p3")) == support_id


def test_overwrite_by_id_with_both_empty_cell_policies_and_secrets(admin_client, app):
    preview(admin_client, make_csv([person(1), person(2)],
                                   header=HEADER))
    admin_client.post("/import/csv/commit")
    with app.app_context():
        ids = dict(db.session.execute(select(User.login_id, User.id)).all())
        db.session.get(User, ids["p1"]).set_secret("mcs_password", "mcs-kept-7")
        db.session.commit()
    header = ["ID", "Login ID", "Firstname", "Lastname", "Number", "Email address", "Voicemail PIN",
              "PBX SIP password"]
    rows = [[str(ids["p1"]), "p1", "", "Changed", "", "p1@example.org", "4321", "sip-secret-1"],
            [str(ids["p2"]), "p2", "", "Last2", "", "p2@example.org", "", ""]]
    page = preview(admin_client, make_csv(rows, header=header), overwrite="1",
                   empty_cells="keep").get_data(as_text=True)
    assert "Empty cells leave the user&#39;s current value unchanged." in page
    assert "Empty secret cells never clear a stored secret." in page
    assert "4321" not in page and "sip-secret-1" not in page
    admin_client.post("/import/csv/commit")
    with app.app_context():
        u1 = db.session.get(User, ids["p1"])
        assert (u1.first_name, u1.last_name, u1.number) == ("First1", "Changed", "1001")
        assert u1.get_secret("voicemail_pin") == "4321" and "4321" not in u1.secrets_enc
        assert u1.get_secret("pbx_sip_password") == "sip-secret-1"
        assert u1.get_secret("mcs_password") == "mcs-kept-7"  # not in the file: kept
        assert db.session.get(User, ids["p2"]).config_version == 1  # unchanged row
    rows[0][6] = ""
    rows[0][7] = ""
    page = preview(admin_client, make_csv(rows, header=header), overwrite="1",
                   empty_cells="clear").get_data(as_text=True)
    assert "Empty cells clear the field" in page
    admin_client.post("/import/csv/commit")
    with app.app_context():
        u1 = db.session.get(User, ids["p1"])
        assert (u1.first_name, u1.number) == ("", "")
        assert u1.get_secret("voicemail_pin") == "4321"  # never cleared by an empty cell


def test_overwrite_rules(admin_client, app):
    preview(admin_client, make_csv([person(1), person(2)]))
    admin_client.post("/import/csv/commit")
    with app.app_context():
        ids = dict(db.session.execute(select(User.login_id, User.id)).all())
        db.session.add(ClientDevice(user_id=ids["p1"], key_hash="c" * 64))
        db.session.commit()
    header = ["ID"] + HEADER
    # Without overwrite an existing ID is refused.
    page = preview(admin_client, make_csv([[str(ids["p1"])] + person(1)],
                                          header=header)).get_data(as_text=True)
    assert "tick &#34;allow overwrite&#34;" in page or "allow overwrite" in page
    # With overwrite an unknown ID is refused.
    page = preview(admin_client, make_csv([["999999"] + person(9)], header=header),
                   overwrite="1").get_data(as_text=True)
    assert "No user has ID 999999" in page
    # Swapping two login ids in one file works, and runs the ID-change flow.
    rows = [[str(ids["p1"])] + person(1, **{"Login ID": "p2"}),
            [str(ids["p2"])] + person(2, **{"Login ID": "p1"})]
    page = preview(admin_client, make_csv(rows, header=header), overwrite="1").get_data(as_text=True)
    assert "Import 2 users" in page
    page = admin_client.post("/import/csv/commit").get_data(as_text=True)
    assert "Login ID changed for 2 user(s)" in page and "factory reset" in page
    with app.app_context():
        u = db.session.get(User, ids["p1"])
        assert u.login_id == "p2" and u.redeploy_required
        assert db.session.scalar(select(ClientDevice.revoked_at)) is not None


def test_imported_users_keep_source_owned_fields(admin_client, app):
    with app.app_context():
        from cds.models import Connection
        conn = Connection(name="MBG", kind="mbg", url="https://mbg.example.org")
        db.session.add(conn)
        db.session.flush()
        db.session.add(User(login_id="src", last_name="Source", email="s@example.org",
                            source="connection", connection_id=conn.id, source_key="1",
                            profile_id=default_profile().id))
        db.session.commit()
        uid = db.session.scalar(select(User.id))
    header = ["ID", "Login ID", "Lastname", "Email address", "Voicemail PIN"]
    page = preview(admin_client, make_csv([[str(uid), "src", "Other", "s@example.org", ""]],
                                          header=header), overwrite="1").get_data(as_text=True)
    assert "Imported from a connection: Lastname is set by the source" in page
    page = preview(admin_client, make_csv([[str(uid), "src", "Source", "s@example.org", "1111"]],
                                          header=header), overwrite="1").get_data(as_text=True)
    assert "Import 1 user" in page
    admin_client.post("/import/csv/commit")
    with app.app_context():
        assert db.session.get(User, uid).get_secret("voicemail_pin") == "1111"


def test_not_a_header_and_empty_files(admin_client):
    resp = preview(admin_client, b"just,some,words\r\n1,2,3\r\n")
    assert resp.status_code == 422 and "not a header this import knows" in resp.get_data(as_text=True)
    resp = preview(admin_client, b"\r\n\r\n")
    assert resp.status_code == 422 and "The file is empty" in resp.get_data(as_text=True)
    resp = preview(admin_client, b"")
    assert resp.status_code == 422 and "is empty" in resp.get_data(as_text=True)


def test_a_50_mb_file_is_refused_with_a_clear_message(admin_client, app):
    before = uploads(app)
    row = ",".join(["x" * 60] * 4) + ",x@example.org\r\n"
    data = make_csv([]) + row.encode() * (50 * 2**20 // len(row) + 1)
    assert len(data) > 50 * 2**20
    resp = preview(admin_client, data)
    page = resp.get_data(as_text=True)
    assert resp.status_code == 413
    assert "larger than the upload limit of 20 MB" in page and "Split it" in page
    assert uploads(app) == before and count_users(app) == 0


def test_read_only_admin_cannot_upload(readonly_client):
    assert preview(readonly_client, make_csv([person(1)])).status_code == 403
    assert "Upload a CSV file" not in readonly_client.get("/import/csv").get_data(as_text=True)


def test_cli_import_csv(app, tmp_path):
    path = tmp_path / "users.csv"
    path.write_bytes(big_file(n=50, bad=(10, 20, 30)))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["cds", "import-csv", str(path)])
    assert result.exit_code == 1
    assert "3 with errors" in result.output and "line 11 (p10)" in result.output
    assert "nothing was imported" in result.output
    assert count_users(app) == 0
    result = runner.invoke(args=["cds", "import-csv", str(path), "--partial", "--dry-run"])
    assert result.exit_code == 0 and "dry run" in result.output and count_users(app) == 0
    result = runner.invoke(args=["cds", "import-csv", str(path), "--partial", "--profile", "nope"])
    assert result.exit_code == 1 and "no deployment profile is named 'nope'" in result.output
    result = runner.invoke(args=["cds", "import-csv", str(path), "--partial"])
    assert result.exit_code == 0 and "47 created" in result.output
    assert count_users(app) == 47
    latin = tmp_path / "latin.csv"
    latin.write_bytes("Login ID,Lastname,Email address\r\nx,Müller,x@example.org\r\n".encode("latin-1"))
    result = runner.invoke(args=["cds", "import-csv", str(latin)])
    assert result.exit_code == 1 and "not UTF-8" in result.output
    assert os.path.exists(path)


def test_retry_with_partial_import_and_fix_the_rejected_rows(app, admin_client):
    """The file is kept for the retry, every error is listed with the count, and the
    rejected rows come back as a CSV with the reason, to fix and import again."""
    header = HEADER + ["Voicemail PIN"]
    good = [person(i) + ["1234"] for i in range(5)]
    bad = [person(100 + i, **{"Email address": f"broken{i}-at-example"}) + ["9876"] for i in range(12)]
    data = make_csv(good + bad, header=header)
    page = preview(admin_client, data, name="staff.csv").get_data(as_text=True)
    assert "12 rows with errors" in page and page.count('class="reason"') == 12
    assert "Allow partial import: skip these rows" in page
    # Tick "allow partial import" without choosing the file again.
    resp = admin_client.post("/import/csv/preview", data={"partial": "1", "empty_cells": "keep"})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Import 5 users (skip 12 rows)" in page
    rejected_before = admin_client.get("/import/csv/rejected.csv?of=preview")
    assert rejected_before.mimetype == "text/csv" and "broken0-at-example" in rejected_before.get_data(as_text=True)
    page = admin_client.post("/import/csv/commit").get_data(as_text=True)
    assert "12</strong> rows skipped" in page and 'id="csv-rejected"' in page
    assert count_users(app) == 5
    resp = admin_client.get("/import/csv/rejected.csv")
    assert "staff-rejected-rows.csv" in resp.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(resp.get_data(as_text=True).lstrip("\ufeff"))))
    assert rows[0] == header + ["Reason"] and len(rows) == 13
    assert all("not a valid e-mail address" in r[-1] for r in rows[1:])
    assert all(r[header.index("Voicemail PIN")] == "" for r in rows[1:])  # never a secret in a download
    # Fix the addresses and import the same file again: the Reason column is ignored.
    fixed = [r[:2] + [r[2], r[3], r[4].replace("-at-example", "@example.org")] + r[5:] for r in rows[1:]]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([rows[0]] + fixed)
    page = preview(admin_client, out.getvalue().encode(), name="staff-fixed.csv").get_data(as_text=True)
    assert "Unknown columns" not in page and "Reason" in page, page[page.find("csv-preview"):][:3000]
    done = admin_client.post("/import/csv/commit").get_data(as_text=True)
    assert count_users(app) == 17, re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", done))[:3000]


# --- the same rules for secrets as the form, the API and the CLI ----------------------

def test_a_secret_changed_by_csv_raises_config_version_as_the_form_does(admin_client, app):
    """The client protocol promises a new configuration when a secret changes."""
    with app.app_context():
        db.session.add(User(login_id="p1", last_name="Last1", email="p1@example.org",
                            profile_id=default_profile().id))
        db.session.commit()
        uid = db.session.scalar(select(User.id))
        before = db.session.get(User, uid).config_version
    header = ["ID", "Login ID", "Lastname", "Email address", "PBX SIP password"]
    page = preview(admin_client, make_csv([[str(uid), "p1", "Last1", "p1@example.org", "new-Sip-9"]],
                                          header=header), overwrite="1").get_data(as_text=True)
    assert "Import 1 user" in page
    admin_client.post("/import/csv/commit")
    with app.app_context():
        user = db.session.get(User, uid)
        assert user.get_secret("pbx_sip_password") == "new-Sip-9"
        assert user.config_version == before + 1
    # The same change from the user form raises it the same way.
    from tests.users.test_users import form_data
    admin_client.post(f"/users/{uid}", data=form_data(login_id="p1", last_name="Last1", first_name="",
                                                      number="", pbx_number="", pbx_sip_username="",
                                                      mbg_sip_username="", mcs_account="",
                                                      email="p1@example.org",
                                                      profile_id=str(user.profile_id),
                                                      pbx_sip_password="newer-Sip-10"))
    with app.app_context():
        assert db.session.get(User, uid).config_version == before + 2


def test_one_secret_length_limit_on_form_api_cli_and_csv(admin_client, app, runner):
    from cds.users.fields import MAX_SECRET_LENGTH
    from tests.api_support import ApiClient
    from tests.users.test_users import form_data
    from cds.settings.tokens import create_api_token
    longest, too_long = "7" * MAX_SECRET_LENGTH, "7" * (MAX_SECRET_LENGTH + 1)
    message = f"Voicemail PIN must be at most {MAX_SECRET_LENGTH} characters"
    with app.app_context():
        profile_id = str(default_profile().id)
        token = create_api_token("script", "admin")[1]
    api = ApiClient(app.test_client(), token)

    for value, accepted in ((too_long, False), (longest, True)):
        n = 1 if accepted else 0
        form = admin_client.post("/users/new", data=form_data(login_id=f"form{n}", profile_id=profile_id,
                                                              voicemail_pin=value))
        assert (form.status_code == 302) is accepted and (message in form.get_data(as_text=True)) is not accepted
        resp = api.post("/api/v1/users", json={"login_id": f"api{n}", "last_name": "L", "email": "a@example.org",
                                               "secrets": {"voicemail_pin": value}})
        assert (resp.status_code == 201) is accepted
        assert accepted or message in resp.get_json()["details"]["voicemail_pin"]
        result = runner.invoke(args=["cds", "users", "add", f"cli{n}", "--last-name", "L", "--email",
                                     "c@example.org", "--secret", "voicemail_pin"], input=value + "\n")
        assert (result.exit_code == 0) is accepted and (message in result.output) is not accepted
        page = preview(admin_client, make_csv([[f"csv{n}", "F", "L", "1", "v@example.org", value]],
                                              header=HEADER + ["Voicemail PIN"])).get_data(as_text=True)
        assert (message in page) is not accepted
        if accepted:
            admin_client.post("/import/csv/commit")
    with app.app_context():
        pins = {u.login_id: u.get_secret("voicemail_pin") for u in db.session.scalars(select(User))}
    assert pins == {"form1": longest, "api1": longest, "cli1": longest, "csv1": longest}
