"""Every tab loads in a real browser without a script error (htmx reports bad
attributes as console errors) and without the page itself overflowing a phone screen."""
import pytest

TABS = ["/users", "/import", "/import/csv", "/profiles", "/profiles/new", "/connections", "/jobs",
        "/audit", "/settings", "/settings/mail", "/settings/template", "/settings/admins",
        "/settings/api-tokens", "/settings/backup", "/settings/account", "/outbox", "/users/new"]


@pytest.mark.parametrize("width", [1280, 390])
def test_every_tab_loads_cleanly(signed_in_page, live_server, width):
    page = signed_in_page
    page.set_viewport_size({"width": width, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
    for path in TABS:
        resp = page.goto(live_server.url + path)
        assert resp.status == 200, path
        page.wait_for_load_state("networkidle")
        # Wide tables scroll inside their own box; the page itself must not.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{path} overflows a {width}px screen by {overflow}px"
    assert errors == [] and page.js_errors == []
