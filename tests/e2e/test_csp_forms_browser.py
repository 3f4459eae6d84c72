"""Forms that come back with errors, and the two framed e-mail views, raise no
Content-Security-Policy report in a real browser.

The console's CSP forbids inline styles (`style-src 'self'`). The only inline styles
CDS has are those of the deployment e-mail's HTML part, which is shown in sandboxed
frames served with their own policy (the e-mail template preview and the Outbox
message view). Every page with a form is submitted with empty fields (the browser's
own checks off, so the server answers with its errors), normally and, where the page
uses it, through htmx; the template preview is fed a broken and a working template;
an Outbox message is opened. Any CSP report or script error fails the test."""
from __future__ import annotations

from playwright.sync_api import expect

from cds.extensions import db
from cds.models import DeploymentProfile, User
from tests.conftest import configure_default_profile
from tests.e2e.test_first_day_browser import Console

FORM_PAGES = ["/login", "/users/new", "/profiles/new", "/connections/new", "/settings",
              "/settings/mail", "/settings/template", "/settings/admins", "/settings/account",
              "/settings/api-tokens", "/import/csv"]
SKIP_ACTIONS = ("logout", "delete", "empty", "reset", "revoke", "cancel", "commit")


def _submit_every_form_empty(page, url: str, statuses: list[int]) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")
    count = page.locator("form").count()
    for i in range(count):
        page.goto(url)
        page.wait_for_load_state("networkidle")
        form = page.locator("form").nth(i)
        action = (form.get_attribute("action") or "") + (form.get_attribute("hx-post") or "")
        posts = (form.get_attribute("method") or "").lower() == "post" or form.get_attribute("hx-post")
        if not posts or any(word in action for word in SKIP_ACTIONS):
            continue
        # The server's answer to bad input is what is under test, not the browser's checks.
        page.evaluate("""() => {
            document.querySelectorAll('form').forEach(f => { f.noValidate = true; });
            document.querySelectorAll('form:not([hx-post])[hx-confirm], form:not([hx-post]) [hx-confirm]')
                .forEach(e => e.removeAttribute('hx-confirm'));
        }""")
        for field in form.locator("input[type=text]:visible, input[type=email]:visible, "
                                  "input[type=password]:visible, input[type=number]:visible, "
                                  "input[type=url]:visible, input:not([type]):visible, "
                                  "textarea:visible").all():
            field.fill("")
        button = form.locator("button[type=submit], button:not([type]), input[type=submit]").first
        if button.count() == 0 or not button.is_visible():
            continue
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            button.click()
        statuses.append(answer.value.status)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(200)  # let any frame in the answer load and report


def test_forms_with_errors_and_mail_frames_raise_no_csp_report(signed_in_page, live_server):
    page = signed_in_page
    app = live_server.app
    with app.app_context():
        configure_default_profile()
    cli = app.test_cli_runner()
    assert cli.invoke(args=["cds", "users", "add", "u1", "--first-name", "Una", "--last-name", "One",
                            "--email", "u1@example.com", "--number", "100"]).exit_code == 0
    assert cli.invoke(args=["cds", "deploy", "--user", "u1"]).exit_code == 0

    console = Console()
    console.watch(page)
    base = live_server.url
    statuses: list[int] = []

    # Login with a wrong password, in a second page (this one is signed in).
    login = page.context.browser.new_context().new_page()
    console.watch(login)
    login.goto(base + "/login")
    login.fill("input[name=username]", "alice")
    login.fill("input[name=password]", "not the password")
    login.click("button[type=submit]")
    login.wait_for_load_state("networkidle")
    login.context.close()

    # The edit pages of a user and of a profile, with the pages that create them.
    with app.app_context():
        user_href = f"/users/{db.session.scalar(db.select(User.id).where(User.login_id == 'u1'))}"
        # The default profile (an editable one; the built-in Do Not Deploy has no name field to fill).
        profile_href = f"/profiles/{db.session.scalar(db.select(DeploymentProfile.id).where(DeploymentProfile.is_default))}"
    for path in FORM_PAGES[1:] + [user_href, profile_href]:
        _submit_every_form_empty(page, base + path, statuses)
    assert statuses.count(422) >= 10, statuses  # the forms did come back with their errors

    # The template preview: its frame on load, a broken template through htmx and on save,
    # then a working one through htmx again.
    page.goto(base + "/settings/template")
    page.wait_for_load_state("networkidle")
    expect(page.frame_locator("iframe.mail-frame").locator("a").first).to_be_visible()
    html = page.input_value("textarea[name=html]")
    with page.expect_response("**/settings/template/preview"):
        page.fill("textarea[name=text]", "{{ unclosed")
    page.wait_for_load_state("networkidle")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#template-form button.primary")
    assert answer.value.status == 422
    page.wait_for_load_state("networkidle")
    with page.expect_response("**/settings/template/preview"):
        page.fill("textarea[name=text]", "Hello {{ first_name }}")
        page.fill("textarea[name=html]", html + " ")
    page.wait_for_load_state("networkidle")
    expect(page.frame_locator("iframe.mail-frame").locator("a").first).to_be_visible()

    # The Outbox message view shows the deployment e-mail's HTML part in its frame.
    page.goto(base + "/outbox")
    page.locator("table.outbox a").first.click()
    page.wait_for_load_state("networkidle")
    expect(page.frame_locator("iframe.mail-frame").locator("a").first).to_be_visible()
    page.wait_for_timeout(300)

    assert console.problems == [], console.problems
