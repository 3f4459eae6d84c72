"""Import Users in a real browser: add a connection to a real HTTP JSON source,
import its users with Import and Deploy, and see them Deployed in the Users tab
(the e-mails reach a real SMTP server on loopback)."""
from __future__ import annotations

from playwright.sync_api import expect
from sqlalchemy import select

from cds.extensions import db
from cds.models import User
from tests.fixtures.source_server import PASSWORD, USERNAME


# Users in the HTTP source the `source` fixture (tests/conftest.py) starts.
SOURCE_USERS = 5


def test_import_and_deploy_from_an_http_source(signed_in_page, live_server, source, smtp_server):
    from cds.settings.service import save_settings
    with live_server.app.app_context():
        save_settings({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp_server.port})
    page = signed_in_page
    questions = []
    page.on("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))

    page.goto(live_server.url + "/connections")
    page.get_by_role("link", name="Add connection").click()
    page.fill("input[name=name]", "Users and Services")
    page.select_option("select[name=kind]", "usa")
    page.fill("input[name=url]", source.url)
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit].primary")
    expect(page.locator("#toasts")).to_contain_text("Read 5 users")
    expect(page.locator("table.src-connections")).to_contain_text("verified")
    expect(page.locator("td.token-expiry")).to_contain_text("days")
    page.screenshot(path="/tmp/cds-connections.png", full_page=True)

    page.get_by_role("link", name="Import Users").first.click()
    expect(page.locator("#records-table tbody tr")).to_have_count(5)
    page.locator("#record-search").press_sequentially("last2", delay=30)
    expect(page.locator("#records-table tbody tr")).to_have_count(1)
    page.locator("#record-search").fill("")
    page.locator("#record-search").dispatch_event("input")
    expect(page.locator("#records-table tbody tr")).to_have_count(5)
    page.check("#check-page")
    expect(page.locator("#selection-count")).to_have_text("5 records selected")
    page.screenshot(path="/tmp/cds-import.png", full_page=True)
    page.get_by_role("button", name="Import and Deploy").click()
    expect(page.locator("#toasts")).to_contain_text("Imported 5 users.")
    assert questions[-1] == "Import 5 records and send each new user a deployment e-mail?"
    expect(page.locator(".job-progress[data-state=done]")).to_be_visible(timeout=30000)
    expect(page.locator(".job-progress")).to_contain_text("5 succeeded")
    expect(page.locator("#records-table")).to_contain_text("imported")

    smtp_server.wait_for(5)
    page.goto(live_server.url + "/users")
    table = page.locator("#users-table tbody")
    expect(table.locator("tr[data-href]")).to_have_count(5)
    # Every row shows a Deployed time (the 9th column, after the checkbox).
    deployed = table.locator("tr[data-href] td:nth-child(9)").all_inner_texts()
    assert len(deployed) == 5 and all(text.strip() for text in deployed), deployed
    with live_server.app.app_context():
        users = db.session.scalars(select(User)).all()
        assert {u.source for u in users} == {"connection"}
        assert all(u.deployed_at is not None for u in users)
    assert not page.js_errors


def test_csv_preview_in_the_browser(signed_in_page, live_server, tmp_path):
    page = signed_in_page
    path = tmp_path / "users.csv"
    path.write_text("Login ID,Lastname,Email address,Shoe size\r\n"
                    "a1,Alpha,a1@example.org,42\r\n"
                    "a2,Beta,not-an-email,43\r\n", encoding="utf-8")
    page.goto(live_server.url + "/import/csv")
    page.set_input_files("input[type=file]", str(path))
    page.check("input[name=partial]")
    page.get_by_role("button", name="Preview").click()
    preview = page.locator("#csv-preview")
    expect(preview).to_contain_text("Unknown columns (not imported): Shoe size")
    expect(preview).to_contain_text("not a valid e-mail address")
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path="/tmp/cds-csv-preview-phone.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path="/tmp/cds-csv-preview.png", full_page=True)
    page.get_by_role("button", name="Import 1 user").click()
    expect(page.locator(".src-result")).to_contain_text("1 users created")
    assert not page.js_errors
