"""The landing page on a phone (390 px, touch) and a computer (1280 px), for each client
kind; and the Users tab's Deploy confirmation saying who will be skipped and why,
before anything is sent. Chromium through Playwright."""
from __future__ import annotations

from cds.extensions import db
from cds.models import DeploymentProfile, User

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "user_agent": "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "Chrome/120.0 Mobile Safari/537.36"}
COMPUTER = {"viewport": {"width": 1280, "height": 900}}


def _user_with_link(app, **profile) -> str:
    from cds.deploy.service import issue_deployment
    from cds.profiles.service import save_profile
    with app.app_context():
        p = save_profile(None, {"name": profile.pop("name"), **profile})
        user = User(login_id="jane", profile_id=p.id, first_name="Jane", last_name="Roe",
                    email="jane@example.com", pbx_sip_username="2001")
        db.session.add(user)
        db.session.flush()
        user.set_secret("pbx_sip_password", "Secret-2001")
        _, token = issue_deployment(user)
        db.session.commit()
        return token


def _open(browser, url, device):
    context = browser.new_context(**device)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    return context, page, errors


def test_linphone_landing_page_on_a_phone_and_a_computer(browser, live_server):
    token = _user_with_link(live_server.app, name="Phones", client="linphone", sip_domain="example.com",
                            sip_realm="example.com", pbx_sip_host="pbx.example.com")
    # The link of the e-mail itself, opened by the browser: the landing page, nothing used up.
    url = f"{live_server.url}/provisioning/linphone/{token}"

    context, page, errors = _open(browser, url, PHONE)
    button = page.locator("#open-app")
    assert button.is_visible() and button.inner_text() == "Open in Linphone"
    assert button.get_attribute("href") == f"linphone-config:{url}"
    assert page.locator("a.store", has_text="Google Play").is_visible()
    assert page.locator("a.store", has_text="App Store").is_visible()
    assert not page.locator("img.qr").is_visible()
    box = button.bounding_box()
    assert box["width"] <= 390 and box["height"] >= 40  # something to tap, within the screen
    assert "Jane" not in page.content() and "2001" not in page.content()
    assert errors == []
    context.close()

    context, page, errors = _open(browser, url, COMPUTER)
    assert page.locator("img.qr").is_visible()
    assert not page.locator("#open-app").is_visible()
    assert "Fetch remote configuration" in page.inner_text("main")
    assert errors == []
    context.close()

    with live_server.app.app_context():
        assert db.session.scalar(db.select(User.downloaded_at).where(User.login_id == "jane")) is None


def test_v1_landing_page_offers_the_app_link_on_a_phone(browser, live_server):
    token = _user_with_link(live_server.app, name="MiCollab", pbx_sip_host="pbx.example.com",
                            mcs_host="mcs.example.com")
    context, page, errors = _open(browser, f"{live_server.url}/deploy/{token}", PHONE)
    button = page.locator("#open-app")
    assert button.is_visible()
    assert button.get_attribute("href").startswith("cds-client://activate?link=")
    assert errors == []
    context.close()


def test_deploy_confirmation_counts_skipped_users_before_sending(signed_in_page, live_server):
    app = live_server.app
    with app.app_context():
        default = db.session.scalar(db.select(DeploymentProfile).where(DeploymentProfile.is_default))
        default.pbx_sip_host = default.mbg_sip_host = default.mcs_host = ""  # a fresh install
        for i in range(3):
            db.session.add(User(login_id=f"u{i}", profile_id=default.id, last_name=f"User{i}",
                                email=f"u{i}@example.com"))
        db.session.commit()
    page = signed_in_page
    page.goto(live_server.url + "/users")
    assert page.locator("#default-profile-incomplete").is_visible()
    page.check("#check-page")
    # Answered as it opens: a dialog left open would block the page the click waits on.
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("[data-bulk=deploy]")
    for _ in range(150):  # the question comes once the server has counted the selection
        if asked:
            break
        page.wait_for_timeout(100)
    q = asked[0]
    assert "Deploy for 3 users?" in q
    assert "0 users will be sent an e-mail; 3 users will not" in q
    assert "Profile 'Default' is incomplete" in q and "no SIP host" in q
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(User).where(
            User.deployed_at.is_not(None))) == 0
