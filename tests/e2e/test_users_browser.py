"""The Users tab in a real browser: search as you type, select all matching and
assign a profile, add a user (fixing a bad e-mail), change a user's ID."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from cds.extensions import db
from cds.models import DeploymentProfile, User
from cds.profiles.service import default_profile

FIRST = ["Anna", "Ben", "Carla", "David", "Emma", "Felix", "Greta", "Hugo", "Ida", "Jonas"]
LAST = ["Müller", "Schmidt", "Weber", "Fischer", "Becker", "Hoffmann", "Koch", "Richter", "Wolf", "Klein"]


def seed_users(app, n: int, *, prefix: str = "user") -> None:
    from cds.models import utcnow
    with app.app_context():
        profile = default_profile()
        now = utcnow()
        for i in range(n):
            first, last = FIRST[i % 10], LAST[(i // 10) % 10]
            db.session.add(User(
                login_id=f"{prefix}{i:03d}", profile=profile, first_name=first, last_name=last,
                number=f"{2000 + i}", mbg_sip_username=f"mbg{2000 + i}",
                mcs_account=f"{first.lower()}{i}@mcs.example.com",
                email=f"{first.lower()}.{last.lower()}{i}@example.com",
                deployed_at=now if i % 3 == 0 else None, downloaded_at=now if i % 6 == 0 else None,
                force_config=i % 17 == 0, send_error="550 mailbox unavailable" if i % 41 == 0 else None))
        db.session.commit()


def add_profile(app, name: str) -> int:
    with app.app_context():
        profile = DeploymentProfile(name=name, mbg_sip_host="mbg.example.com")
        db.session.add(profile)
        db.session.commit()
        return profile.id


def rows(page):
    return page.locator("#users-table tbody tr[data-href]")


def test_search_as_you_type_narrows_the_table(signed_in_page, live_server):
    seed_users(live_server.app, 200)
    page = signed_in_page
    page.goto(live_server.url + "/users")
    expect(rows(page)).to_have_count(50)
    expect(page.locator("#table-meta .total")).to_contain_text("200 users")
    page.locator("#user-search").press_sequentially("hoffm", delay=40)
    expect(page.locator("#table-meta .total")).to_contain_text("20 users match")
    expect(rows(page)).to_have_count(20)
    assert set(page.locator("#users-table tbody td:nth-child(4)").all_inner_texts()) == {"Hoffmann"}
    assert "search=hoffm" in page.url  # the address carries the state
    page.locator("#user-search").press_sequentially(" anna", delay=40)
    expect(rows(page)).to_have_count(2)
    page.reload()
    expect(rows(page)).to_have_count(2)
    assert page.locator("#user-search").input_value() == "hoffm anna"
    page.go_back()
    expect(rows(page)).to_have_count(20)
    assert page.js_errors == []


def test_select_all_matching_across_pages_and_assign_a_profile(signed_in_page, live_server):
    seed_users(live_server.app, 200)
    sales = add_profile(live_server.app, "Sales")
    page = signed_in_page
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(live_server.url + "/users?deployed=no")  # 133 users, three pages of 50
    expect(page.locator("#table-meta .total")).to_contain_text("133 users match")
    assign = page.locator("[data-bulk=assign_profile]")
    expect(assign).to_be_disabled()
    page.check("#check-page")
    expect(page.locator("#selection-count")).to_have_text("50 users selected")
    page.click("#select-all-matching")
    expect(page.locator("#selection-count")).to_have_text("All 133 users matching selected")
    page.select_option("#bulk select[name=profile_id]", label="Sales")
    assign.click()
    expect(page.locator("#job-area .job-progress")).to_contain_text("133 succeeded", timeout=20000)
    # The table refreshes by itself once the job is done.
    expect(page.locator("#users-table tbody tr[data-href] td:nth-child(2)").first).to_have_text("Sales")
    with live_server.app.app_context():
        on_sales = db.session.scalar(db.select(db.func.count(User.id)).where(User.profile_id == sales))
        undeployed_elsewhere = db.session.scalar(db.select(db.func.count(User.id)).where(
            User.profile_id != sales, User.deployed_at.is_(None)))
    assert on_sales == 133 and undeployed_elsewhere == 0
    assert page.js_errors == []


def test_add_user_with_bad_email_then_fix_it(signed_in_page, live_server):
    page = signed_in_page
    page.goto(live_server.url + "/users")
    page.click("text=Add user")
    page.fill("#login_id", "jdoe")
    page.fill("#first_name", "Jane")
    page.fill("#last_name", "Doe")
    page.fill("#email", "jane.doe-at-example.com")
    page.fill("#number", "+44 20 7946 0000")
    page.fill("#voicemail_pin", "482913")
    page.click("button:has-text('Add user')")
    expect(page.locator("#email-error")).to_contain_text("not a valid e-mail address")
    assert page.locator("#first_name").input_value() == "Jane"  # what was typed is kept
    assert page.locator("#number").input_value() == "+44 20 7946 0000"
    page.fill("#email", "jane.doe@example.com")
    page.fill("#voicemail_pin", "482913")  # secrets are never sent back to the browser
    page.click("button:has-text('Add user')")
    page.wait_for_url(re.compile(r".*/users\?search=jdoe"))
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("jane.doe@example.com")
    expect(page.locator(".toast")).to_contain_text("added")
    assert page.js_errors == []


def test_change_a_users_id_and_see_the_warning(signed_in_page, live_server):
    seed_users(live_server.app, 3)
    page = signed_in_page
    page.goto(live_server.url + "/users")
    rows(page).first.locator("td:nth-child(3)").click()  # a click on the row opens the user
    page.wait_for_url(re.compile(r".*/users/\d+$"))
    old = page.locator("#login_id").input_value()
    page.fill("#login_id", old + "-new")
    questions = []
    page.once("dialog", lambda d: (questions.append(d.message), d.dismiss()))
    page.click("#user-form button[type=submit]")  # asked first; "Cancel" changes nothing
    expect(page.locator("#login_id")).to_have_value(old + "-new")
    assert f"Change the ID from {old} to {old}-new?" in questions[0]
    assert "redeploy required" in questions[0] and "new deployment e-mail" in questions[0]
    assert page.locator("#id-change-notice").count() == 0
    page.once("dialog", lambda d: d.accept())
    page.click("#user-form button[type=submit]")
    notice = page.locator("#id-change-notice")
    expect(notice).to_contain_text("factory reset")
    expect(notice).to_contain_text("new deployment e-mail")
    expect(notice).to_contain_text(f"from {old} to {old}-new")
    expect(page.locator(".user-badges")).to_contain_text("redeploy required")
    assert page.js_errors == []


def test_screenshot_of_the_users_tab_with_200_users(signed_in_page, live_server):
    seed_users(live_server.app, 200)
    page = signed_in_page
    page.goto(live_server.url + "/users")
    expect(rows(page)).to_have_count(50)
    page.locator(".row-check").nth(1).check()
    page.locator(".row-check").nth(2).check()
    page.screenshot(path="/tmp/users-200.png", full_page=False)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path="/tmp/users-200-phone.png", full_page=False)
    assert page.js_errors == []


def test_deploy_at_schedules_only_the_actions_that_can_wait(signed_in_page, live_server):
    """With "Deploy at" filled in, Set Force Config is scheduled for that time (the
    browser's local time, sent with its offset), while Assign profile still runs at once."""
    from cds.models import Job
    seed_users(live_server.app, 3)
    add_profile(live_server.app, "Sales")
    page = signed_in_page
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(live_server.url + "/users")
    page.check("#check-page")
    page.fill("#deploy-at", "2031-05-04T09:30")
    force = page.locator("[data-bulk=force_config]")
    # Said with the month's name: the picker's own 05/04 could be April or May.
    expect(force).to_have_text(re.compile(r"Set Force Config at .*May.*2031.*09:30"))
    force.click()
    expect(page.locator("#job-area .job-progress").first).to_contain_text("Runs at")
    page.select_option("#bulk select[name=profile_id]", label="Sales")
    page.locator("[data-bulk=assign_profile]").click()
    expect(page.locator("#job-area .job-progress").first).to_contain_text("3 succeeded", timeout=20000)
    local_utc = page.evaluate("new Date('2031-05-04T09:30').toISOString().slice(0, 16)")
    with live_server.app.app_context():
        jobs = {j.kind: j for j in db.session.scalars(db.select(Job))}
    assert jobs["force_config"].state == "scheduled"
    assert jobs["force_config"].run_at.strftime("%Y-%m-%dT%H:%M") == local_utc
    assert jobs["assign_profile"].state == "done" and jobs["assign_profile"].run_at is None
    assert page.js_errors == []
