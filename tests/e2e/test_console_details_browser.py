"""Details an administrator sees on the first day, checked in the browser: table cells
that line up, links that look like links, columns that are not cut off, a Copy button for
a token shown once, role changes that ask first, and a connection saved while its source
is down."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from cds.extensions import db
from cds.models import User
from cds.profiles.service import default_profile
from tests.conftest import free_port, make_admin


def test_users_table_cells_line_up_and_are_not_cut_off(signed_in_page, live_server):
    with live_server.app.app_context():
        db.session.add(User(login_id="ann", first_name="Ann", last_name="Lee", email="ann@example.com",
                            profile=default_profile(), mbg_sip_username="ann.lee.teleworker01",
                            mcs_account="ann@mcs.example.com"))
        db.session.commit()
    page = signed_in_page
    page.goto(live_server.url + "/users")
    row = page.locator("#users-table tbody tr[data-href]").first
    account = row.locator("td.account")
    # The header's account widget style (a flex box) no longer reaches the table's cell.
    assert account.evaluate("el => getComputedStyle(el).display") == "table-cell"
    assert abs(account.bounding_box()["y"] - row.locator("td.email").bounding_box()["y"]) < 1
    sip = row.locator("td.sip")
    assert sip.evaluate("el => el.scrollWidth <= el.clientWidth"), "MBG SIP user name is cut off"
    # Empty state: its links are coloured and underlined like links.
    page.goto(live_server.url + "/users?search=nobody-at-all")
    link = page.locator("tr.empty a").first
    style = link.evaluate("el => [getComputedStyle(el).color, getComputedStyle(el).textDecorationLine]")
    assert style == ["rgb(31, 95, 191)", "underline"], style
    assert page.js_errors == []


def test_copy_button_for_a_new_api_token(browser, live_server):
    make_admin(live_server.app, "alice", "primary")
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(live_server.url + "/login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "correct horse battery")
    page.click("button[type=submit]")
    page.wait_for_url("**/users**")
    page.goto(live_server.url + "/settings/api-tokens")
    page.fill("input[name=name]", "nightly")
    page.click("button:has-text('Create token')")
    token = page.locator(".new-token code.token").inner_text().strip()
    page.click(".new-token button[data-copy]")
    expect(page.locator(".toast")).to_contain_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == token
    context.close()


def test_a_role_change_asks_first(signed_in_page, live_server):
    make_admin(live_server.app, "bob", "admin")
    page = signed_in_page
    page.goto(live_server.url + "/settings/admins")
    bob = page.locator("tr", has_text="bob")
    bob.locator("select[name=role]").select_option("readonly")
    expect(page.locator("#admin-confirm")).to_have_count(0)  # choosing alone changes nothing
    bob.locator("button:has-text('Change')").click()
    expect(page.locator("#admin-confirm")).to_contain_text("Change bob from administrator to read-only?")
    expect(page.locator("#admin-confirm")).to_contain_text("only look")
    page.click("#admin-confirm button[type=submit]")
    expect(page.locator(".toast")).to_contain_text("bob is now read-only.")
    expect(page.locator("tr", has_text="bob").locator("select[name=role]")).to_have_value("readonly")
    assert page.js_errors == []


def test_a_connection_is_saved_while_its_source_is_down(signed_in_page, live_server):
    page = signed_in_page
    page.goto(live_server.url + "/connections/new")
    page.select_option("select[name=kind]", "usa")
    page.fill("input[name=url]", f"http://127.0.0.1:{free_port()}")
    page.fill("input[name=username]", "cds")
    page.fill("input[name=password]", "s3cret-pass")
    page.fill("input[name=timeout]", "1")
    page.click("button:has-text('Create and authorize')")  # no name: an error, the password is kept
    expect(page.locator(".form-errors")).to_contain_text("name is required")
    expect(page.locator("input[name=password]")).to_have_value("")
    assert "s3cret-pass" not in page.content()
    page.fill("input[name=name]", "Users and Services")
    page.click("button:has-text('Create and authorize')")
    page.wait_for_url(re.compile(r".*/connections$"))
    expect(page.locator("table")).to_contain_text("not verified")
    expect(page.locator(".toast")).to_contain_text("saved")
    assert page.js_errors == []
