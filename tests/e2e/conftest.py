"""Browser tests: the real app served by waitress on a loopback port, driven by
Debian's chromium through Playwright. Skipped (with the reason) where chromium
is not installed; .ci/run installs it."""
from __future__ import annotations

import os
import shutil
import threading

import pytest

from tests.conftest import TEST_PASSWORD, free_port, make_admin

CHROMIUM = os.environ.get("CDS_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def pytest_collection_modifyitems(config, items):
    if not os.path.exists(CHROMIUM):
        skip = pytest.mark.skip(reason="chromium is not installed (apt-get install chromium)")
        for item in items:
            if "e2e" in str(item.fspath):
                item.add_marker(skip)


class LiveServer:
    def __init__(self, app):
        from cds.serving import create_server
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = create_server(app, host="127.0.0.1", port=self.port, threads=4)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.close()


@pytest.fixture
def live_app(make_app, app):
    """The app as `make run` serves it: jobs on background threads. `app` empties the DB."""
    live = make_app(JOB_EXECUTION="thread")
    live.config["PUBLIC_URL"] = "http://127.0.0.1"  # replaced below once the port is known
    return live


@pytest.fixture
def live_server(live_app):
    server = LiveServer(live_app)
    live_app.config["PUBLIC_URL"] = server.url
    live_app.config["REDIRECT_URL"] = server.url
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(15000)
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.js_errors = errors
    yield pg
    context.close()


@pytest.fixture
def signed_in_page(page, live_server):
    """A browser page signed in as the primary administrator `alice`."""
    make_admin(live_server.app, "alice", "primary")
    page.goto(live_server.url + "/login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", TEST_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/users**")
    return page
