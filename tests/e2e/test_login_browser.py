"""Sign in with a real browser and see the Users tab."""
from tests.conftest import TEST_PASSWORD, make_admin


def test_sign_in_see_users_tab_and_sign_out(page, live_server):
    make_admin(live_server.app, "alice", "primary")
    page.goto(live_server.url + "/users")
    assert "/login" in page.url
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "Wrong user name or password."
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", TEST_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/users**")
    assert page.locator("nav.tabs a.active").inner_text() == "Users"
    tabs = page.locator("nav.tabs a").all_inner_texts()
    assert tabs == ["Users", "Import Users", "Deployment Profiles", "Connections", "Jobs",
                    "Audit log", "Settings"]
    assert page.locator("h1").first.inner_text().startswith("Users")
    page.click("text=Sign out")
    page.wait_for_url("**/login**")
    assert page.js_errors == []
