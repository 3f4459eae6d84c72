"""The first day with CDS, in a real browser: sign in with the printed password and
choose one's own, create a profile with servers, add users, import a CSV with bad rows
and re-import the fixed rejected rows, Deploy, open the message from the user page,
open the landing page on a phone, Set Force Config, Auto deploy, export, change an ID
(confirmed), delete. Any script error or Content-Security-Policy violation in the
console fails it.

With CDS_TEST_SCREENSHOTS=<folder>, the screens are also saved there at 1280 and 390
pixels wide."""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import requests
from playwright.sync_api import expect

NEW_PASSWORD = "our own long passphrase"
SHOTS = os.environ.get("CDS_TEST_SCREENSHOTS")


class Console:
    """Collects what the browser console says; script errors and CSP violations fail."""

    def __init__(self):
        self.problems: list[str] = []

    def watch(self, page):
        page.on("pageerror", lambda exc: self.problems.append(f"script error: {exc}"))
        page.on("console", self._message)

    def _message(self, msg):
        text = msg.text
        if "Content Security Policy" in text or "Refused to" in text:
            self.problems.append(f"CSP: {text}")
        elif msg.type == "error" and not text.startswith("Failed to load resource"):
            # A 4xx answer (a form with errors) is logged as a failed load: not a script error.
            self.problems.append(f"console error: {text}")


def shot(page, name: str) -> None:
    if not SHOTS:
        return
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=f"{SHOTS}/{name}-{width}.png", full_page=True)
    page.set_viewport_size(size)


def csv_bytes(rows) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


def rows(page):
    return page.locator("#users-table tbody tr[data-href]")


def select_by_search(page, base, text):
    page.goto(f"{base}/users?search={text}")
    expect(rows(page)).to_have_count(1)
    page.locator(".row-check").first.check()


def run_bulk(page, kind, answers):
    """Click a bulk button, answer its confirmation (recorded in ``answers``), return the summary."""
    count = page.locator("#job-area .job-progress").count()

    def answer(dialog):
        answers.append(dialog.message)
        dialog.accept()
    page.once("dialog", answer)
    page.click(f"[data-bulk={kind}]")
    box = page.locator("#job-area .job-progress").first
    expect(page.locator("#job-area .job-progress")).to_have_count(count + 1, timeout=20000)
    expect(box).to_have_attribute("data-state", re.compile("done|failed"), timeout=20000)
    return box.inner_text()


def test_the_first_day(browser, live_server):
    from cds.auth.service import ensure_first_admin

    app, base = live_server.app, live_server.url
    with app.app_context():
        printed = ensure_first_admin()  # what `make run` prints on a fresh install
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15000)
    console = Console()
    console.watch(page)

    # Sign in with the printed password; CDS asks for our own at once.
    page.goto(base + "/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", printed)
    page.click("button[type=submit]")
    page.wait_for_url("**/settings/account")
    expect(page.locator("#one-time-password")).to_be_visible()
    shot(page, "account-one-time-password")
    page.fill("input[name=current]", printed)
    page.fill("input[name=new]", NEW_PASSWORD)
    page.fill("input[name=repeat]", NEW_PASSWORD)
    page.click("#account-form button[type=submit]")
    expect(page.locator("#one-time-password")).to_have_count(0)

    # A profile with its servers.
    page.goto(base + "/profiles/new")
    page.fill("input[name=name]", "Head office")
    page.fill("input[name=mbg_sip_host]", "mbg.example.com")
    page.fill("input[name=pbx_sip_host]", "pbx.example.com")
    page.fill("input[name=mcs_host]", "mcs.example.com")
    page.check("input[name=make_default]")
    page.click("#profile-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/profiles(\?.*)?$"))
    expect(page.locator("table.profiles")).to_contain_text("Head office")
    shot(page, "profiles")

    # Two users by hand; the second one first with a mistake (banner and field).
    for login, first, last in (("jdoe", "Jane", "Doe"), ("rroe", "Rick", "Roe")):
        page.goto(base + "/users/new")
        page.fill("#login_id", login)
        page.fill("#first_name", first)
        page.fill("#last_name", last)
        page.fill("#email", f"{login}-at-example.com" if login == "rroe" else f"{login}@example.com")
        page.click("button:has-text('Add user')")
        if login == "rroe":
            expect(page.locator(".form-errors")).to_contain_text("Email address")
            shot(page, "add-user-errors")
            page.fill("#email", f"{login}@example.com")
            page.click("button:has-text('Add user')")
        page.wait_for_url(re.compile(r".*/users\?search="))
    # The same ID in another case is the same ID.
    page.goto(base + "/users/new")
    page.fill("#login_id", "JDOE")
    page.fill("#last_name", "Again")
    page.fill("#email", "again@example.com")
    page.click("button:has-text('Add user')")
    expect(page.locator("#login_id-error")).to_contain_text("Jane Doe (jdoe)")

    # A CSV with bad rows: allow partial import after the preview, without choosing the file again.
    header = ["Login ID", "Firstname", "Lastname", "Email address", "Number"]
    good = [[f"csv{i}", "Csv", f"User {i}", f"csv{i}@example.com", f"{2000 + i}"] for i in range(4)]
    bad = [["csv-bad1", "Bad", "Address", "bad1-at-example.com", "2101"],
           ["csv-bad2", "Bad", "Number", "bad2@example.com", "call me"]]
    page.goto(base + "/import/csv")
    page.set_input_files("input[type=file]", {"name": "staff.csv", "mimeType": "text/csv",
                                               "buffer": csv_bytes([header] + good + bad)})
    page.click(".src-upload-form button[type=submit]")
    expect(page.locator("#csv-errors-head")).to_contain_text("2 rows with errors")
    shot(page, "csv-preview-errors")
    page.click("#csv-allow-partial button")
    page.click("#csv-commit")
    expect(page.locator(".src-result")).to_contain_text("4")
    with page.expect_download() as download:
        page.click("#csv-rejected")
    rejected = list(csv.reader(io.StringIO(Path(download.value.path()).read_text("utf-8-sig"))))
    assert rejected[0] == header + ["Reason"] and len(rejected) == 3
    shot(page, "csv-result")
    fixed = [rejected[0]] + [[c.replace("-at-", "@").replace("call me", "2102") for c in r] for r in rejected[1:]]
    page.set_input_files("input[type=file]", {"name": "staff-fixed.csv", "mimeType": "text/csv",
                                               "buffer": csv_bytes(fixed)})
    page.click(".src-upload-form button[type=submit]")
    page.click("#csv-commit")
    expect(page.locator(".src-result")).to_contain_text("2")
    page.goto(base + "/users")
    expect(page.locator("#table-meta")).to_contain_text("8 users")
    expect(page.locator("#outbox-notice")).to_be_visible()

    # Deploy one user: the confirmation says what will happen; the summary says where it went.
    answers: list[str] = []
    select_by_search(page, base, "jdoe")
    summary = run_bulk(page, "deploy", answers)
    assert answers[-1].startswith("Deploy for 1 user?")
    assert "Written to the Outbox (no SMTP configured)" in summary
    assert "Jane Doe (jdoe)" in summary
    shot(page, "users-after-deploy")

    # The message, from the user page.
    page.locator("#users-table tbody tr[data-href] td:nth-child(4) a").first.click()
    page.wait_for_url(re.compile(r".*/users/\d+$"))
    user_url = page.url
    page.click("#user-outbox-link")
    expect(page.locator("#outbox-filter")).to_contain_text("1 message")
    shot(page, "outbox-search")
    page.locator("table.outbox a").first.click()
    expect(page.locator("main")).to_contain_text("Set up your MiCollab app")
    link = re.search(r"https?://\S+/r/[A-Za-z0-9_-]+", page.locator("main").inner_text()).group(0)

    # The landing page on a phone.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                user_agent="Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
                                           "(KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36")
    phone_page = phone.new_page()
    console.watch(phone_page)
    answer = phone_page.goto(link)
    assert answer.status == 200 and "/deploy/" in phone_page.url
    expect(phone_page.locator("body")).not_to_contain_text("Jane")
    # On a phone the page offers a button that opens the app, and install links.
    button = phone_page.locator("#open-app")
    expect(button).to_be_visible()
    assert button.get_attribute("href").startswith("cds-client://activate?link=")
    expect(phone_page.locator("#on-phone .install a").first).to_be_visible()
    expect(phone_page.locator("#on-computer img.qr")).to_be_hidden()
    if SHOTS:
        phone_page.screenshot(path=f"{SHOTS}/landing-phone-390.png", full_page=True)
    phone.close()

    # The app activates (over the client protocol), then Set Force Config.
    token = link.rsplit("/", 1)[1]
    activated = requests.post(f"{base}/client/v1/activate", json={
        "token": token, "device": {"id": "pixel-8", "platform": "android", "app_version": "9.1"}}, timeout=10)
    assert activated.status_code == 200
    select_by_search(page, base, "jdoe")
    assert "1 succeeded" in run_bulk(page, "force_config", answers)

    # rroe gets a link now; Auto deploy then leaves that link alone.
    select_by_search(page, base, "rroe")
    run_bulk(page, "deploy", answers)
    page.goto(base + "/users")
    page.check("#check-page")
    summary = run_bulk(page, "auto_deploy", answers)
    question = answers[-1]
    assert question.startswith("Auto deploy for 8 users?")
    assert "1 get Set Force Config" in question and "6 get a new deployment e-mail" in question
    assert "1 skipped" in question and "still valid and not used yet" in question
    assert "1 × Force config set." in summary and "6 × Written to the Outbox" in summary
    assert "still valid and not used yet" in summary
    shot(page, "users-after-auto-deploy")

    # Deploy at: the chosen time is said unambiguously.
    page.fill("#deploy-at", "2031-02-03T14:30")
    expect(page.locator("#deploy-at-readout")).to_contain_text("2031")
    expect(page.locator("#deploy-at-readout")).to_contain_text("Feb")
    page.fill("#deploy-at", "")
    page.locator("#deploy-at").dispatch_event("change")

    # Export what is selected (the finished job refreshed the table: select again).
    page.check("#check-page")
    page.once("dialog", lambda d: d.accept())
    with page.expect_download() as download:
        page.click("[data-bulk=export]")
    exported = Path(download.value.path()).read_text("utf-8-sig")
    assert "Login ID" in exported.splitlines()[0] and "csv3" in exported

    # An ID change asks first, saying what it does.
    page.goto(user_url)
    page.fill("#login_id", "jane.doe")
    page.once("dialog", lambda d: (answers.append(d.message), d.accept()))
    page.click("#user-form button[type=submit]")
    expect(page.locator("#id-change-notice")).to_contain_text("from jdoe to jane.doe")
    assert "Change the ID from jdoe to jane.doe?" in answers[-1]
    assert "the app on 1 device stops working" in answers[-1]
    shot(page, "user-after-id-change")

    # Delete a user.
    select_by_search(page, base, "csv-bad2")
    summary = run_bulk(page, "delete", answers)
    assert answers[-1].startswith("Delete 1 user?") and "1 succeeded" in summary
    page.goto(base + "/users")
    expect(page.locator("#table-meta")).to_contain_text("7 users")

    assert console.problems == [], console.problems
    context.close()
