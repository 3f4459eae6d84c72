"""CDS attacked from outside: each test is one attack that once worked (see
docs/security.md), made over real HTTP where the attack is over HTTP, and what
must happen instead. Siblings of each hole on other surfaces are tested beside it."""
from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from cds import ConfigError, ROOT, create_app
from cds.extensions import db
from cds.models import Connection, DeploymentProfile, Job, Setting, User
from tests.conftest import TEST_PASSWORD, make_admin, sign_in
from tests.e2e.conftest import LiveServer
from tests.profiles.test_profiles import profile_form

TOKEN_RE = re.compile(r"/r/([A-Za-z0-9_-]{43})")


# --- helpers: a live server and browser-like sessions over real HTTP ------------------------

@pytest.fixture
def live(make_app, app):
    """The app served by waitress on a loopback port (``app`` empties the database)."""
    served = make_app(JOB_EXECUTION="inline")
    server = LiveServer(served)
    served.config["PUBLIC_URL"] = server.url
    server.start()
    yield server
    server.stop()


def csrf_in(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or \
        re.search(r'"X-CSRFToken": "([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def http_sign_in(server, username: str, password: str = TEST_PASSWORD) -> requests.Session:
    s = requests.Session()
    token = csrf_in(s.get(server.url + "/login").text)
    resp = s.post(server.url + "/login", data={"username": username, "password": password,
                                               "csrf_token": token}, allow_redirects=False)
    assert resp.status_code == 302, resp.text[:300]
    s.csrf = csrf_in(s.get(server.url + "/users").text)
    return s


def profile_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(DeploymentProfile.id)))


def deploy_one_to_outbox(app) -> str:
    """Deploy one user with no SMTP server set: the e-mail lands in the Outbox. Returns the
    live token in it."""
    from cds.jobs.service import create_job, run_job
    from cds.profiles.service import default_profile
    with app.app_context():
        user = User(login_id="ann", first_name="Ann", last_name="Lee", email="ann@example.com",
                    profile_id=default_profile().id)
        user.set_secret("mcs_password", "Client-Secret-1")
        user.set_secret("voicemail_pin", "4711")
        db.session.add(user)
        db.session.commit()
        run_job(create_job("deploy", {"ids": [user.id]}, actor="alice").id)
    outbox = Path(app.instance_path) / "outbox"
    newest = max(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime)
    raw = newest.read_text(errors="replace")
    import email
    from email import policy
    msg = email.message_from_string(raw, policy=policy.default)
    text = msg.get_body(preferencelist=("plain",)).get_content()
    return TOKEN_RE.search(text).group(1)


# --- 1. a read-only administrator never sees a live deployment link ------------------------

def test_read_only_admin_cannot_obtain_a_live_link_from_the_outbox(live):
    app = live.app
    make_admin(app, "alice", "primary")
    make_admin(app, "rita", "readonly")
    token = deploy_one_to_outbox(app)
    alice, rita = http_sign_in(live, "alice"), http_sign_in(live, "rita")
    listing = rita.get(live.url + "/outbox").text
    name = re.search(r'href="/outbox/([^"/]+\.eml)"', listing).group(1)
    assert token not in listing
    # The message page, its HTML part, the QR image and the raw download: no token anywhere.
    page = rita.get(f"{live.url}/outbox/{name}")
    assert page.status_code == 200 and token not in page.text
    assert "only administrators who may deploy see it" in page.text
    assert "HIDDEN-link" in page.text and "download .eml" not in page.text
    html = rita.get(f"{live.url}/outbox/{name}/html")
    assert html.status_code == 200 and token not in html.text
    assert rita.get(f"{live.url}/outbox/{name}/cid/qr-code@cds").status_code == 404
    raw = rita.get(f"{live.url}/outbox/{name}/raw")
    assert raw.status_code == 403 and token not in raw.text
    # Someone who may deploy sees it, and the link is still unused.
    assert token in alice.get(f"{live.url}/outbox/{name}").text
    assert alice.get(f"{live.url}/outbox/{name}/raw").status_code == 200
    # With what the read-only administrator saw, activation gets nothing.
    masked = re.search(r"/r/(HIDDEN-[A-Za-z0-9_-]+)", page.text).group(1)
    resp = requests.post(live.url + "/client/v1/activate", json={"token": masked, "device": {}})
    assert resp.status_code in (400, 404, 410) and "voicemail" not in resp.text.lower()


def test_a_mail_scanner_opening_the_link_does_not_use_it(live):
    """Gateways open every link of an e-mail: that must neither activate nor use it up."""
    app = live.app
    make_admin(app, "alice", "primary")
    token = deploy_one_to_outbox(app)
    for _ in range(3):
        resp = requests.get(f"{live.url}/r/{token}")  # follows to the landing page
        assert resp.status_code == 200 and "4711" not in resp.text and "Client-Secret-1" not in resp.text
    device = {"id": "A1B2-C3", "platform": "android", "app_version": "9.8.1"}
    resp = requests.post(live.url + "/client/v1/activate", json={"token": token, "device": device})
    assert resp.status_code == 200 and "4711" in resp.text


# --- 2. signing out makes the cookie worthless -----------------------------------------------

def test_sign_out_ends_the_session_for_every_copy_of_the_cookie(live):
    app = live.app
    make_admin(app, "alice", "primary")
    browser = http_sign_in(live, "alice")
    stolen = requests.Session()
    stolen.cookies.update(browser.cookies)  # copied before sign-out
    assert stolen.get(live.url + "/users", allow_redirects=False).status_code == 200
    assert browser.post(live.url + "/logout", data={"csrf_token": browser.csrf},
                        allow_redirects=False).status_code == 302
    # Reading: sent to sign in. Writing, with the cookie and its CSRF token: nothing written.
    resp = stolen.get(live.url + "/users", allow_redirects=False)
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    before = profile_count(app)
    resp = stolen.post(live.url + "/profiles/new", data={"csrf_token": browser.csrf, "name": "Evil"},
                       allow_redirects=False)
    assert resp.status_code in (302, 400, 401, 403)
    assert profile_count(app) == before
    assert stolen.get(live.url + "/settings/mail", allow_redirects=False).status_code == 302
    # The owner signs in again as usual.
    assert http_sign_in(live, "alice").get(live.url + "/users").status_code == 200


# --- 3. no open redirect after sign-in -------------------------------------------------------

@pytest.mark.parametrize("target", ["/\t/evil.example", "/\n/evil.example", "/\\evil.example",
                                    "\\\\evil.example", " //evil.example", "//evil.example",
                                    "https://evil.example/", "/\r\n/evil.example", "\t//evil.example"])
def test_next_after_sign_in_never_leaves_the_site(live, target):
    make_admin(live.app, "alice", "primary")
    s = requests.Session()
    token = csrf_in(s.get(live.url + "/login").text)
    resp = s.post(live.url + "/login", params={"next": target}, allow_redirects=False,
                  data={"username": "alice", "password": TEST_PASSWORD, "csrf_token": token})
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location in ("/users", live.url + "/users"), location


def test_next_after_sign_in_keeps_a_local_path(live):
    make_admin(live.app, "alice", "primary")
    s = requests.Session()
    token = csrf_in(s.get(live.url + "/login").text)
    resp = s.post(live.url + "/login", params={"next": "/profiles?x=1"}, allow_redirects=False,
                  data={"username": "alice", "password": TEST_PASSWORD, "csrf_token": token})
    assert resp.headers["Location"].endswith("/profiles?x=1")


# --- 4. header injection: one validator for every header-bound value ------------------------

def test_sender_with_a_line_break_is_refused_and_the_default_sender_accepted(admin_client, app):
    form = {"server": "", "port": "25", "security": "none", "username": "", "password": "",
            "rate_limit": "0", "csrf_token": admin_client.csrf_token}
    bad = admin_client.post("/settings/mail", data={**form, "sender": "line1\r\nBcc: evil@example.com"})
    assert bad.status_code == 422
    assert "must be one line" in bad.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Setting, "MAIL_DEFAULT_SENDER") is None
    for refused in ("Name <not an address>", "Name <a@example.com> extra", "two words@example.com",
                    "x@example.com\nBcc: y@example.com"):
        assert admin_client.post("/settings/mail", data={**form, "sender": refused}).status_code == 422
    for accepted, stored in (("CDS <cds@localhost>", "CDS <cds@localhost>"),
                             ("cds@localhost", "cds@localhost"),
                             ("Doe, John <j@example.com>", '"Doe, John" <j@example.com>')):
        resp = admin_client.post("/settings/mail", data={**form, "sender": accepted})
        assert resp.status_code == 302, resp.get_data(as_text=True)[-500:]
        with app.app_context():
            assert db.session.get(Setting, "MAIL_DEFAULT_SENDER").value == stored


def test_the_default_sender_works_for_a_real_message(admin_client, app):
    """The product's own default, `CDS <cds@localhost>`, is valid on the page as shipped."""
    page = admin_client.get("/settings/mail").get_data(as_text=True)
    assert "CDS &lt;cds@localhost&gt;" in page
    form = {"server": "", "port": "25", "security": "none", "username": "", "password": "",
            "rate_limit": "0", "sender": "CDS <cds@localhost>", "csrf_token": admin_client.csrf_token}
    assert admin_client.post("/settings/mail", data=form).status_code == 302


def test_a_bad_sender_stored_earlier_fails_each_send_with_where_to_fix_it(app):
    from cds.jobs.service import create_job, run_job
    from cds.models import JobItem
    from cds.profiles.service import default_profile
    with app.app_context():
        db.session.add(Setting(key="MAIL_DEFAULT_SENDER", value="line1\r\nBcc: evil@example.com"))
        user = User(login_id="cy", last_name="Cy", email="cy@example.com", profile_id=default_profile().id)
        db.session.add(user)
        db.session.commit()
        job = run_job(create_job("deploy", {"ids": [user.id]}, actor="alice").id)
        item = db.session.scalar(select(JobItem).where(JobItem.job_id == job.id))
        assert item.outcome == "failed" and "Settings › E-mail" in item.message


def test_sender_is_checked_at_start_too(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_MAIL_DEFAULT_SENDER", "CDS <cds@localhost>\r\nBcc: evil@example.com")
    with pytest.raises(ConfigError, match="CDS_MAIL_DEFAULT_SENDER must be one line"):
        create_app({"SCHEDULER_ENABLED": False}, instance_path=str(tmp_path))
    monkeypatch.setenv("CDS_MAIL_DEFAULT_SENDER", "cds@localhost")
    create_app({"SCHEDULER_ENABLED": False}, instance_path=str(tmp_path))


def test_profile_address_and_subjects_refuse_line_breaks(admin_client, app):
    from cds.settings.tokens import create_api_token
    with app.app_context():
        _, token = create_api_token("t", "admin")
    headers = {"Authorization": f"Bearer {token}"}
    for field, value in (("central_email", "desk@example.com\r\nBcc: evil@example.com"),
                         ("email_subject", "Hello\r\nBcc: evil@example.com")):
        resp = admin_client.post("/api/v1/profiles", headers=headers,
                                 json={"name": f"P {field}", field: value})
        assert resp.status_code == 422, resp.get_data(as_text=True)
        assert field in resp.get_json()["details"]
    # The e-mail template's subject (Settings › E-mail template): refused, nothing stored.
    resp = admin_client.post("/settings/template", data={
        "subject": "Welcome\r\nBcc: evil@example.com", "text": "{{ link }}", "html": "{{ link }}"})
    assert resp.status_code == 422 and "must be one line" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Setting, "MAIL_TEMPLATE_SUBJECT") is None


# --- 5. template rendering is bounded --------------------------------------------------------

HEAVY = {
    "power": "{{ 9**(9**7) }}",
    "loops": "{% for i in range(4000) %}{% for j in range(4000) %}x{% endfor %}{% endfor %}",
    "huge range": "{{ range(10**9)|list|length }}",
    "repeat": "{{ 'x' * 10**9 }}",
    "width": "{{ '{:>1000000000}'.format(1) }}",
    "doubling": "{% set ns = namespace(x='ab') %}{% for i in range(60) %}"
                "{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x|length }}",
}


@pytest.mark.parametrize("kind", sorted(HEAVY))
def test_template_preview_and_save_refuse_unbounded_work(admin_client, app, kind):
    draft = {"subject": "Hi", "text": "{{ link }} " + HEAVY[kind], "html": "<p>{{ link }}</p>"}
    # Before, these never finished (or ran until memory ran out).
    preview = admin_client.post("/settings/template/preview", data=draft)
    saved = admin_client.post("/settings/template", data=draft)
    assert preview.status_code == 200 and "refused" in preview.get_data(as_text=True)
    assert saved.status_code == 422 and "refused" in saved.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Setting, "MAIL_TEMPLATE_TEXT") is None


@pytest.mark.parametrize("source,expected", [
    ("{{ 5000000|filesizeformat }}", "5.0 MB"),
    ("{% for i in range(3) %}{{ i }}{% endfor %} {{ 2**10 }} {{ 'ab' ~ 'cd' }}", "012 1024 abcd"),
    ("{{ '%05d'|format(42) }} {{ '{:>4}'.format(7) }} {{ 'x' * 3 }}", "00042    7 xxx"),
    ("{{ first_name|upper|center(9) }}", "ALEX".center(9)),
])
def test_ordinary_templates_render_within_the_budget(app, source, expected):
    from cds.mail.compose import _render, compile_template
    assert _render(compile_template(source, "text"), "text", {"first_name": "Alex"}) == expected


def test_every_send_refuses_an_unbounded_template(app):
    """A heavy body stored before this check (or in a profile) fails the send with the
    reason; nothing is sent and nothing hangs."""
    from cds.jobs.service import create_job, run_job
    from cds.models import JobItem
    from cds.profiles.service import default_profile
    with app.app_context():
        profile = default_profile()
        profile.email_body = "{{ link }} " + HEAVY["loops"]
        user = User(login_id="bo", last_name="Bo", email="bo@example.com", profile_id=profile.id)
        db.session.add(user)
        db.session.commit()
        job = run_job(create_job("deploy", {"ids": [user.id]}, actor="alice").id)
        item = db.session.scalar(select(JobItem).where(JobItem.job_id == job.id))
        assert item.outcome == "failed" and "refused" in item.message
        assert db.session.get(User, user.id).deployed_at is None


# --- 6. what an outsider sent to cause a server error now gets a clear 4xx ------------------

def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_deep_json_and_lone_surrogates_get_a_clear_400_without_sign_in(live):
    for body in (nested(5000), '{"token": "\\ud800", "device": {}}',
                 '{"token": "x", "device": ' + nested(100) + "}"):
        resp = requests.post(live.url + "/client/v1/activate", data=body,
                             headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, (body[:40], resp.status_code, resp.text[:200])
        assert resp.json()["error"] == "bad_request"
        assert "not acceptable" in resp.json()["message"]


def test_api_refuses_deep_json_lone_surrogates_and_huge_pages(live):
    from cds.settings.tokens import create_api_token
    with live.app.app_context():
        _, token = create_api_token("t", "admin")
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for path in ("/api/v1/users", "/api/v1/profiles", "/api/v1/connections", "/api/v1/imports/csv/preview",
                 "/api/v1/users/actions/force-config"):
        for body in (nested(5000), '{"last_name": "\\ud800", "login_id": "x1", "email": "x@example.com"}',
                     '{"csv": "Login ID,Lastname,Email address\\r\\nx,\\udfff,x@example.com"}',
                     '{"filter": {"search": "\\ud800"}}', '{"name": "\\ud800"}'):
            resp = requests.post(live.url + path, data=body, headers=h)
            assert resp.status_code == 400, (path, body[:40], resp.status_code, resp.text[:200])
            assert "not acceptable" in resp.json()["message"]
    resp = requests.get(live.url + "/api/v1/jobs", params={"page": "32589158477190044730"}, headers=h)
    assert resp.status_code == 400 and resp.json()["error"] == "bad_request"
    resp = requests.get(live.url + "/api/v1/users", params={"page": "32589158477190044730"}, headers=h)
    assert resp.status_code == 400
    with live.app.app_context():
        assert db.session.scalar(select(func.count(User.id))) == 0


def test_web_pages_refuse_huge_page_numbers(live):
    make_admin(live.app, "alice", "primary")
    s = http_sign_in(live, "alice")
    for path in ("/jobs", "/audit", "/outbox", "/import"):
        resp = s.get(live.url + path, params={"page": "32589158477190044730"})
        assert resp.status_code == 400, (path, resp.status_code)
        assert "Page numbers go from 1 to 1,000,000" in resp.text
    # The Users tab says so and shows the first page instead.
    resp = s.get(live.url + "/users", params={"page": "32589158477190044730"})
    assert resp.status_code == 200 and "Page numbers go from 1 to 1,000,000" in resp.text
    for path in ("/import", "/connections"):
        assert s.get(live.url + path, params={"job": "32589158477190044730"}).status_code == 200


@pytest.mark.parametrize("first,second", [("Österreich", "Österreich"), ("ÉVRY", "évry"),
                                          ("Straße", "STRASSE")])
def test_non_ascii_profile_names_are_unique_ignoring_case(admin_client, app, first, second):
    assert admin_client.post("/profiles/new", data=profile_form(name=first)).status_code == 302
    resp = admin_client.post("/profiles/new", data=profile_form(name=second))
    assert resp.status_code == 422 and "already exists" in resp.get_data(as_text=True)
    # The JSON API answers the same.
    from cds.settings.tokens import create_api_token
    with app.app_context():
        _, token = create_api_token("t", "admin")
    resp = admin_client.post("/api/v1/profiles", headers={"Authorization": f"Bearer {token}"},
                             json={"name": second})
    assert resp.status_code == 422 and "already exists" in resp.get_data(as_text=True)


def test_non_ascii_connection_names_are_unique_ignoring_case(admin_client, app):
    from tests.fixtures.source_server import PASSWORD, USERNAME, SourceServer, usa_user
    source = SourceServer([usa_user(1)]).start()
    try:
        form = {"kind": "usa", "url": source.url, "username": USERNAME, "password": PASSWORD,
                "sync_interval_minutes": "60", "enabled": "y", "timeout": "2", "page_size": "500",
                "verify_tls": "y"}
        assert admin_client.post("/connections/new", data={**form, "name": "Ünïcode Quelle"}).status_code == 302
        resp = admin_client.post("/connections/new", data={**form, "name": "ÜNÏCODE QUELLE"})
        assert resp.status_code == 422 and "already exists" in resp.get_data(as_text=True)
        with app.app_context():
            assert db.session.scalar(select(func.count(Connection.id))) == 1
    finally:
        source.stop()


@pytest.mark.parametrize("mode,words", [("deep", "nests deeper than"), ("surrogate", "lone surrogate")])
def test_a_hostile_source_gets_a_clear_message(admin_client, app, mode, words):
    from tests.fixtures.source_server import PASSWORD, USERNAME, SourceServer, usa_user
    source = SourceServer([usa_user(1)]).start()
    try:
        form = {"name": "Hostile", "kind": "usa", "url": source.url, "username": USERNAME,
                "password": PASSWORD, "sync_interval_minutes": "60", "enabled": "y", "timeout": "2",
                "page_size": "500", "verify_tls": "y"}
        assert admin_client.post("/connections/new", data=form).status_code == 302
        with app.app_context():
            conn_id = db.session.scalar(select(Connection.id))
        source.mode = mode
        resp = admin_client.post(f"/connections/{conn_id}/test", follow_redirects=True)
        assert resp.status_code == 200
        assert words in resp.get_data(as_text=True)
    finally:
        source.stop()


# --- 7. a typo in a bulk filter never selects everyone ---------------------------------------

def test_unknown_filter_key_is_refused_naming_it(admin_client, app):
    from cds.settings.tokens import create_api_token
    with app.app_context():
        _, token = create_api_token("t", "admin")
        jobs_before = db.session.scalar(select(func.count(Job.id)))
    h = {"Authorization": f"Bearer {token}"}
    resp = admin_client.post("/api/v1/users/actions/force-config", headers=h,
                             json={"filter": {"deployd": "no"}})
    assert resp.status_code == 422 and "'deployd'" in resp.get_json()["message"]
    resp = admin_client.get("/api/v1/users/export.csv?deployd=no", headers=h)
    assert resp.status_code == 400 and "'deployd'" in resp.get_json()["message"]
    resp = admin_client.get("/api/v1/users?deployd=no", headers=h)
    assert resp.status_code == 400 and "'deployd'" in resp.get_json()["message"]
    # The page's bulk form ("all matching") and its Export link.
    resp = admin_client.post("/users/actions/force_config", data={"all_matching": "1", "deployd": "no"})
    assert resp.status_code == 422 and "deployd" in resp.get_data(as_text=True)
    resp = admin_client.get("/users/export.csv?all_matching=1&deployd=no")
    assert resp.status_code in (400, 422) and "deployd" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count(Job.id))) == jobs_before
    # Known keys still work.
    from cds.profiles.service import default_profile
    with app.app_context():
        db.session.add(User(login_id="k1", last_name="K", email="k@example.com",
                            profile_id=default_profile().id))
        db.session.commit()
    resp = admin_client.post("/api/v1/users/actions/force-config", headers=h,
                             json={"filter": {"deployed": "no"}})
    assert resp.status_code in (200, 202)


def test_unknown_filter_key_in_an_import_selection_is_refused(admin_client, app):
    from tests.fixtures.source_server import PASSWORD, USERNAME, SourceServer, usa_user
    source = SourceServer([usa_user(i) for i in range(1, 4)]).start()
    try:
        form = {"name": "Src", "kind": "usa", "url": source.url, "username": USERNAME, "password": PASSWORD,
                "sync_interval_minutes": "60", "enabled": "y", "timeout": "2", "page_size": "500",
                "verify_tls": "y"}
        assert admin_client.post("/connections/new", data=form).status_code == 302
        resp = admin_client.post("/import/records", data={"all_matching": "1", "stat": "new"},
                                 follow_redirects=True)
        assert "Unknown filter key &#39;stat&#39;" in resp.get_data(as_text=True)
        with app.app_context():
            assert db.session.scalar(select(func.count(User.id))) == 0
        resp = admin_client.post("/import/records", data={"all_matching": "1", "state": "new"},
                                 follow_redirects=True)
        with app.app_context():
            assert db.session.scalar(select(func.count(User.id))) == 3
    finally:
        source.stop()


# --- 8. failed sign-ins throttle guessing but never lock the owner out ------------------------

def _post_login(server, username, password, source_ip="127.0.0.1") -> int:
    """A sign-in from a chosen loopback address (127.0.0.0/8 all reach the server)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, source_address=(source_ip, 0), timeout=30)
    conn.request("GET", "/login")
    resp = conn.getresponse()
    page = resp.read().decode()
    cookie = resp.getheader("Set-Cookie").split(";")[0]
    from urllib.parse import urlencode
    body = urlencode({"username": username, "password": password, "csrf_token": csrf_in(page)})
    conn.request("POST", "/login", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


def test_an_outsider_cannot_lock_the_primary_administrator_out(live):
    make_admin(live.app, "admin", "primary")
    attacker, owner = "127.0.0.2", "127.0.0.3"
    codes = [_post_login(live, "admin", "guess-guess-guess", attacker) for _ in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    # The guesser is stopped, even with the right password...
    assert _post_login(live, "admin", TEST_PASSWORD, attacker) == 429
    # ...but the owner, from an address that has not failed, signs in.
    assert _post_login(live, "admin", TEST_PASSWORD, owner) == 302
    # Another address joining the attack gets one guess, then waits: the account-wide
    # counter is spent, so any address with a failure for this account is stopped.
    helper = "127.0.0.4"
    assert _post_login(live, "admin", "guess-guess-guess", helper) == 401
    assert _post_login(live, "admin", "guess-guess-guess", helper) == 429


def test_sign_in_works_and_stays_throttled_while_the_shared_store_is_down(make_app, app):
    """Redis unreachable: counted in this process meanwhile, never a server error."""
    from tests.conftest import free_port
    down = make_app(RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{free_port()}/0",
                    LOGIN_LIMIT_PER_ACCOUNT="2/minute")
    make_admin(down, "alice", "primary")
    client = down.test_client()
    assert [sign_in(client, "alice", "wrong-wrong-wrong").status_code for _ in range(3)] == [401, 401, 429]
    other = down.test_client()
    resp = other.post("/login", environ_base={"REMOTE_ADDR": "127.0.0.9"}, data={
        "username": "alice", "password": TEST_PASSWORD, "csrf_token": other.refresh_csrf()})
    assert resp.status_code == 302


# --- 9. bad API tokens are limited per address -------------------------------------------------

def test_many_different_bad_api_tokens_hit_a_limit(make_app, app):
    served = make_app(API_AUTH_FAILURE_LIMIT="20/minute")
    server = LiveServer(served).start()
    try:
        codes = [requests.get(f"{server.url}/api/v1/users",
                              headers={"Authorization": f"Bearer cds_bad{i:06d}xxxxxxxxxxxxxxxx"}).status_code
                 for i in range(25)]
        assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
        resp = requests.get(f"{server.url}/api/v1/users")  # no token at all: the same budget
        assert resp.status_code == 429 and "Retry-After" in resp.headers
        assert resp.json()["error"] == "rate_limited"
    finally:
        server.stop()


def test_api_budget_is_per_whole_token_not_its_last_characters(app):
    from cds.api.blueprint import _api_key
    with app.test_request_context(headers={"Authorization": "Bearer cds_AAAA_same_tail_1234567890"}):
        a = _api_key()
    with app.test_request_context(headers={"Authorization": "Bearer cds_BBBB_same_tail_1234567890"}):
        b = _api_key()
    assert a != b


# --- 10. secrets from CSV are stored exactly as given ----------------------------------------

def test_csv_import_stores_secrets_exactly(admin_client, app):
    data = ("Login ID,Lastname,Email address,Voicemail PIN,MiCollab Client password\r\n"
            "pin1,One,one@example.com,'=123,  spaced pass  \r\n").encode()
    resp = admin_client.post("/import/csv/preview", data={"file": (__import__("io").BytesIO(data), "u.csv")},
                             content_type="multipart/form-data")
    assert resp.status_code == 200, resp.get_data(as_text=True)[-400:]
    assert admin_client.post("/import/csv/commit").status_code == 200
    with app.app_context():
        user = db.session.scalar(select(User).where(User.login_id == "pin1"))
        assert user.get_secret("voicemail_pin") == "'=123"
        assert user.get_secret("mcs_password") == "  spaced pass  "


def test_csv_secret_of_only_spaces_is_refused(admin_client, app):
    data = b"Login ID,Lastname,Email address,Voicemail PIN\r\npin2,Two,two@example.com,   \r\n"
    resp = admin_client.post("/import/csv/preview", data={"file": (__import__("io").BytesIO(data), "u.csv")},
                             content_type="multipart/form-data")
    assert "only spaces" in resp.get_data(as_text=True)


# --- 11. an uncommitted CSV upload is encrypted, and removed on commit, cancel, expiry -------

def _upload_files(app) -> list[Path]:
    folder = Path(app.instance_path) / "uploads"
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.exists() else []


def test_uploaded_csv_is_encrypted_and_deleted_on_cancel_and_expiry(admin_client, app):
    import io
    from cds.imports import service
    secret = "Very-Secret-Password-42"
    data = f"Login ID,Lastname,Email address,PBX SIP password\r\nenc1,Enc,e@example.com,{secret}\r\n".encode()
    before = _upload_files(app)
    admin_client.post("/import/csv/preview", data={"file": (io.BytesIO(data), "u.csv")},
                      content_type="multipart/form-data")
    new = [p for p in _upload_files(app) if p not in before]
    assert len(new) == 1
    stored = new[0].read_bytes()
    assert secret.encode() not in stored and b"enc1" not in stored
    assert (new[0].stat().st_mode & 0o777) == 0o600
    with app.app_context():
        assert app.extensions["cds_cipher"].decrypt(stored) == data
    admin_client.post("/import/csv/cancel")
    assert not new[0].exists()
    # Expiry: an upload older than the limit can no longer be read and is deleted.
    admin_client.post("/import/csv/preview", data={"file": (io.BytesIO(data), "u.csv")},
                      content_type="multipart/form-data")
    (path,) = [p for p in _upload_files(app) if p not in before]
    with app.app_context():
        old = app.extensions["cds_cipher"].encrypt_at_time(data, int(time.time()) - service.UPLOAD_MAX_AGE_SECONDS - 60)
    path.write_bytes(old)
    resp = admin_client.post("/import/csv/commit", follow_redirects=True)
    assert "no longer available" in resp.get_data(as_text=True)
    assert not path.exists()
    with app.app_context():
        assert db.session.scalar(select(func.count(User.id))) == 0
    # The scheduler's sweep removes expired files and plaintext left by older versions.
    with app.app_context():
        name = service.store_upload(data)
        stale = service.uploads_dir() / f"{name}{service.UPLOAD_SUFFIX}"
        legacy = service.uploads_dir() / "legacy-plaintext-upload-0000000000.csv"
        legacy.write_bytes(data)
        past = time.time() - service.UPLOAD_MAX_AGE_SECONDS - 60
        os.utime(stale, (past, past))
        service.prune_uploads(app)
        assert not stale.exists() and not legacy.exists()


def test_commit_deletes_the_upload(admin_client, app):
    import io
    data = b"Login ID,Lastname,Email address\r\nc1,C,c1@example.com\r\n"
    before = _upload_files(app)
    admin_client.post("/import/csv/preview", data={"file": (io.BytesIO(data), "u.csv")},
                      content_type="multipart/form-data")
    assert len(_upload_files(app)) == len(before) + 1
    assert admin_client.post("/import/csv/commit").status_code == 200
    assert _upload_files(app) == before


# --- 12. cross-site requests, separators in exports, an unusable instance folder ------------

def test_foreign_origin_or_referer_is_refused_even_with_a_valid_csrf_token(live):
    app = live.app
    make_admin(app, "alice", "primary")
    s = http_sign_in(live, "alice")
    before = profile_count(app)
    form = {"csrf_token": s.csrf, **profile_form(name="Cross")}
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Referer": "https://evil.example/page"},
                    {"Origin": live.url.replace("127.0.0.1", "localhost")}):
        resp = s.post(live.url + "/profiles/new", data=form, headers=headers, allow_redirects=False)
        assert resp.status_code == 403, (headers, resp.status_code)
        assert "another site" in resp.text
    assert profile_count(app) == before
    # The console's own pages send their origin: accepted.
    resp = s.post(live.url + "/profiles/new", data=form, allow_redirects=False,
                  headers={"Origin": live.url, "Referer": live.url + "/profiles/new"})
    assert resp.status_code == 302 and profile_count(app) == before + 1
    # Behind a proxy the public URL (here set in Settings) is the origin browsers send.
    with app.app_context():
        from cds.settings.service import save_settings
        save_settings({"PUBLIC_URL": "https://cds.example.com"}, "alice")
    form = {"csrf_token": s.csrf, **profile_form(name="Via proxy")}
    resp = s.post(live.url + "/profiles/new", data=form, allow_redirects=False,
                  headers={"Origin": "https://cds.example.com"})
    assert resp.status_code == 302 and profile_count(app) == before + 2
    # Console pages tell the browser to send the Referer to this site only.
    assert s.get(live.url + "/users").headers["Referrer-Policy"] == "same-origin"
    assert requests.get(live.url + "/r/unknown-token").headers["Referrer-Policy"] == "no-referrer"


def test_export_quotes_and_neutralises_cells_with_semicolons_or_tabs(admin_client, app):
    from cds.profiles.service import default_profile
    with app.app_context():
        db.session.add(User(login_id="semi", first_name="x;=1+1", last_name="a\t@SUM(A1)",
                            email="s@example.com", profile_id=default_profile().id))
        db.session.commit()
    text = admin_client.get("/users/export.csv?all_matching=1").get_data(as_text=True)
    line = next(row for row in text.splitlines() if "semi" in row)
    assert "\"'x;=1+1\"" in line and "\"'a\t@SUM(A1)\"" in line
    # Read as a spreadsheet set to ";" or tab as separator reads it (quotes honoured): no
    # cell starts a formula (before, "x;=1+1" gave a cell "=1+1,…").
    for separator in (";", "\t"):
        cells, current, quoted = [], "", False
        for char in line:
            if char == '"':
                quoted = not quoted
            if char == separator and not quoted:
                cells.append(current)
                current = ""
            else:
                current += char
        cells.append(current)
        assert len(cells) == 1, cells
        assert not any(cell.lstrip('"').startswith(("=", "@", "+", "-")) for cell in cells)


def test_unusable_instance_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the instance folder should be")
    with pytest.raises(ConfigError, match="the instance folder .* cannot be used"):
        create_app({"SCHEDULER_ENABLED": False}, instance_path=str(blocker / "instance"))
    # As `flask`/waitress start it: one line on stderr, no traceback.
    proc = subprocess.run([sys.executable, "-c", "import app"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "CDS_INSTANCE_PATH": str(blocker / "instance")}, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("cds: configuration error: the instance folder")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write a read-only folder")
def test_read_only_instance_folder_is_a_one_line_error(tmp_path):
    inst = tmp_path / "instance"
    inst.mkdir()
    create_app({"SCHEDULER_ENABLED": False}, instance_path=str(inst))
    inst.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot be used"):
            create_app({"SCHEDULER_ENABLED": False}, instance_path=str(inst))
    finally:
        inst.chmod(0o700)

