"""One way to ask before a change: hx-confirm on the control, asked in the browser's
dialog for htmx requests and plain forms alike; declining sends nothing."""
from __future__ import annotations

from playwright.sync_api import expect


def test_a_plain_form_asks_its_hx_confirm_question_and_declining_sends_nothing(signed_in_page,
                                                                              live_server):
    page = signed_in_page
    page.goto(live_server.url + "/settings/template")
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    questions = []
    page.once("dialog", lambda d: (questions.append(d.message), d.dismiss()))
    page.get_by_role("button", name="Use built-in template").click()
    page.wait_for_timeout(300)
    assert questions == ["Use the built-in template again? Your changes are discarded."]
    assert not [u for u in posts if u.endswith("/settings/template/reset")]

    page.once("dialog", lambda d: (questions.append(d.message), d.accept()))
    page.get_by_role("button", name="Use built-in template").click()
    expect(page.locator("#toasts")).to_contain_text("The built-in e-mail template is in use again.")
    assert len(questions) == 2

