"""Export the current filter and open the file; delete users after confirming; cancel a
scheduled job and manage an administrator — in a real browser."""
from __future__ import annotations

import codecs
import csv
import io
from datetime import timedelta

from playwright.sync_api import expect
from sqlalchemy import func, select

from cds.extensions import db
from cds.models import User, utcnow


def seed_users(app):
    from cds.profiles.service import default_profile
    with app.app_context():
        pid = default_profile().id
        db.session.add_all(User(login_id=f"sales{i:02}", profile_id=pid, first_name=f"Sam{i:02}",
                                last_name="Sales", number=f"+44 20 7946 {i:04}", email=f"s{i}@example.com")
                           for i in range(60))
        db.session.add_all(User(login_id=f"ops{i}", profile_id=pid, first_name=f"Olga{i}", last_name="Ops",
                                email=f"o{i}@example.com") for i in range(5))
        db.session.commit()


def user_total(page) -> int:
    return int(page.locator("#table-meta").get_attribute("data-total"))


def test_export_the_current_filter_and_open_the_file(signed_in_page, live_server, tmp_path):
    page = signed_in_page
    seed_users(live_server.app)
    # The filter as the address bar carries it (typed earlier, bookmarked, shared…).
    page.goto(live_server.url + "/users?per_page=50&search=sales")
    assert page.locator("#user-search").input_value() == "sales"
    assert user_total(page) == 60
    page.check("#check-page")
    page.click("#select-all-matching")
    assert page.locator("#selection-count").inner_text() == "All 60 users matching selected"
    page.on("dialog", lambda dialog: dialog.accept())
    with page.expect_download() as info:
        page.click("[data-bulk=export]")
    download = info.value
    assert download.suggested_filename.startswith("cds-users-") and download.suggested_filename.endswith(".csv")
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    body = path.read_bytes()
    assert body.startswith(codecs.BOM_UTF8)
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"), newline="")))
    assert len(rows) == 60 and {r["Lastname"] for r in rows} == {"Sales"}
    assert rows[0]["Login ID"] == "sales00" and rows[0]["Number"] == "+44 20 7946 0000"
    assert page.js_errors == []


def test_delete_three_users_after_confirming(signed_in_page, live_server):
    page = signed_in_page
    seed_users(live_server.app)
    page.goto(live_server.url + "/users?search=ops")
    assert user_total(page) == 5
    questions = []

    def answer(dialog):
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    for box in page.locator(".row-check").all()[:3]:
        box.check()
    assert page.locator("#selection-count").inner_text() == "3 users selected"
    page.click("[data-bulk=delete]")
    page.wait_for_selector("#job-area .job-progress[data-state=done]")
    assert questions and questions[0].startswith("Delete 3 users?")
    expect(page.locator("#table-meta")).to_have_attribute("data-total", "2")
    assert user_total(page) == 2
    with live_server.app.app_context():
        assert db.session.scalar(select(func.count(User.id)).where(User.last_name == "Ops")) == 2
    # The Jobs tab and the Audit log tell what happened.
    page.goto(live_server.url + "/jobs")
    assert "Delete: 3 selected users" in page.locator("#h-finished + p + .table-wrap").inner_text()
    page.goto(live_server.url + "/audit?action=user.delete")
    assert page.locator("table.audit tbody tr").count() == 3
    assert page.js_errors == []


def test_cancel_a_scheduled_job_in_the_jobs_tab(signed_in_page, live_server):
    from cds.jobs.service import create_job
    page = signed_in_page
    seed_users(live_server.app)
    with live_server.app.app_context():
        ids = list(db.session.scalars(select(User.id).where(User.last_name == "Ops")))
        create_job("delete", {"ids": ids}, run_at=utcnow() + timedelta(hours=1), actor="alice")
    page.goto(live_server.url + "/jobs")
    row = page.locator("#h-scheduled ~ .table-wrap tbody tr")
    assert "Delete: 5 selected users" in row.inner_text()
    page.on("dialog", lambda dialog: dialog.accept())
    row.locator("button", has_text="Cancel").click()
    page.wait_for_selector("text=Nothing is scheduled.")
    assert "cancelled" in page.locator("#h-finished ~ .table-wrap").inner_text()
    assert page.js_errors == []


def test_add_an_administrator_and_show_the_password_once(signed_in_page, live_server):
    page = signed_in_page
    page.goto(live_server.url + "/settings")
    page.click(".settings-nav >> text=Administrators")
    page.fill(".add-admin input[name=username]", "bob")
    page.select_option(".add-admin select[name=role]", "readonly")
    page.click(".add-admin button[type=submit]")
    shown = page.locator(".one-time code.password").inner_text()
    assert len(shown) == 16
    assert page.locator("#admins tbody tr", has_text="bob").locator("select").input_value() == "readonly"
    assert page.js_errors == []
