"""Logs: one line per request and per job step in instance/logs/cds.log, and never a secret.

The test plants every kind of secret the console handles — user secrets typed in the
user form, an administrator's password at sign-in, an SMTP password in the settings,
deployment tokens in /r/ and /deploy/ paths, a client key as a bearer credential — drives
them through real requests, a real deploy job and a real SMTP server, then searches the
log file for each of them."""
from __future__ import annotations

import logging
import re

import pytest
from sqlalchemy import select

from cds.extensions import db
from cds.models import User
from cds.profiles.service import default_profile
from cds.security import token_ref
from tests.conftest import make_admin, sign_in

ADMIN_PASSWORD = "Planted-Admin-Pass-41"
SMTP_PASSWORD = "Planted-Smtp-Pass-42"
USER_SECRETS = {"mcs_password": "Planted-Mcs-43", "pbx_sip_password": "Planted-Pbx-44",
                "teleworker_sip_password": "Planted-Tw-45", "voicemail_pin": "918273"}


@pytest.fixture
def logged_app(app, make_app, smtp_server, tmp_path):
    """An app whose log goes to a fresh instance folder, at the most talkative level."""
    port = smtp_server.port
    return make_app(instance_path=str(tmp_path), LOG_LEVEL="DEBUG", MAIL_SERVER="127.0.0.1",
                    MAIL_PORT=port, MAIL_USERNAME="relay")


def test_the_log_has_requests_and_job_steps_but_no_secret(logged_app, smtp_server):
    from cds.jobs.service import create_job, run_job
    from cds.settings.service import save_settings

    app = logged_app
    make_admin(app, "alice", "primary", password=ADMIN_PASSWORD)
    browser = app.test_client()
    # A wrong password and the right one, through the sign-in form.
    browser.refresh_csrf()
    assert browser.post("/login", data={"username": "alice", "password": ADMIN_PASSWORD + "x",
                                        "csrf_token": browser.csrf_token}).status_code == 401
    assert sign_in(browser, "alice", ADMIN_PASSWORD).status_code == 302
    # User secrets typed into the user form.
    with app.app_context():
        profile_id = default_profile().id
    for login_id in ("ann", "bob"):
        resp = browser.post("/users/new", data={
            "login_id": login_id, "profile_id": profile_id, "first_name": login_id.title(),
            "last_name": "Planted", "email": f"{login_id}@example.com",
            **{name: f"{value}-{login_id}" for name, value in USER_SECRETS.items()}})
        assert resp.status_code in (302, 204), resp.get_data(as_text=True)[:500]
    with app.app_context():
        save_settings({"MAIL_PASSWORD": SMTP_PASSWORD}, "alice")
        ann = db.session.scalar(select(User).where(User.login_id == "ann"))
        assert ann.get_secret("voicemail_pin") == "918273-ann"
        ids = list(db.session.scalars(select(User.id)))
        job = create_job("deploy", {"ids": ids}, actor="alice")
        run_job(job.id)
        job_id = job.id
    tokens = smtp_server.tokens()
    assert len(tokens) == 2
    assert set(smtp_server.handler.logins) == {("relay", SMTP_PASSWORD)}
    # The links as a phone and a mail scanner open them, then the client protocol.
    device = app.test_client()
    for token in tokens:
        assert device.get(f"/r/{token}").status_code == 302
        assert device.get(f"/deploy/{token}").status_code == 200
        device.get(f"/deploy/{token}/qr.png")
    resp = device.post("/client/v1/activate", json={"token": tokens[0], "device": {
        "id": "phone-1", "platform": "ios", "app_version": "1.0"}})
    assert resp.status_code == 200
    client_key = resp.get_json()["client_key"]
    assert device.get("/client/v1/status", headers={"Authorization": f"Bearer {client_key}"}).status_code == 200
    assert device.get("/client/v1/config", headers={"Authorization": f"Bearer {client_key}"}).status_code == 200
    # An error message that quotes a request as it came in is cleaned as well.
    logging.getLogger("cds.test").warning(
        "unexpected error on GET /deploy/%s (Authorization: Bearer %s)", tokens[1], client_key)

    for handler_ in logging.getLogger("cds").handlers:
        handler_.flush()
    text = (app.instance_path and open(f"{app.instance_path}/logs/cds.log", encoding="utf-8").read())
    planted = [ADMIN_PASSWORD, SMTP_PASSWORD, client_key, *tokens,
               *(f"{v}-{u}" for v in USER_SECRETS.values() for u in ("ann", "bob"))]
    leaked = [secret for secret in planted if secret in text]
    assert leaked == [], f"secrets in the log: {leaked}"
    # What the log is for: one line per request (tokens shown as a short hash prefix) ...
    assert re.search(r"POST /login 401 .*-$", text, re.M)
    assert re.search(r"POST /login 302 ", text)
    assert re.search(r"POST /users/new 30\d .* alice$", text, re.M)
    assert f"GET /r/tok:{token_ref(tokens[0])} 302" in text
    assert f"GET /deploy/tok:{token_ref(tokens[0])} 200" in text
    assert "GET /client/v1/status 200" in text
    # ... and one per job step.
    assert re.search(rf"job {job_id} \(deploy\) started by .*: 2 users", text)
    assert f"job {job_id} progress 2/2" in text
    assert f"job {job_id} finished: 2 ok, 0 skipped, 0 failed" in text


def test_log_level_setting_is_applied(make_app, app, tmp_path):
    quiet = make_app(instance_path=str(tmp_path / "quiet"), LOG_LEVEL="WARNING")
    quiet.test_client().get("/login")
    for handler in logging.getLogger("cds").handlers:
        handler.flush()
    assert "GET /login" not in (tmp_path / "quiet" / "logs" / "cds.log").read_text()
    assert logging.getLogger("cds").level == logging.WARNING


def test_health_checks_are_logged_only_at_debug_level(make_app, app, tmp_path):
    """A load balancer asking every few seconds must not drown the log."""
    for level in ("INFO", "DEBUG"):
        folder = tmp_path / level
        make_app(instance_path=str(folder), LOG_LEVEL=level).test_client().get("/healthz")
        for handler in logging.getLogger("cds").handlers:
            handler.flush()
        logged = "GET /healthz 200" in (folder / "logs" / "cds.log").read_text()
        assert logged == (level == "DEBUG")


def test_behind_a_reverse_proxy_the_client_address_comes_from_x_forwarded_for(make_app, app, tmp_path):
    """CDS_PROXY_FIX=1: the address logged (and rate limited) is the client's, not the proxy's;
    without it a forged header changes nothing."""
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    for proxies, expected in ((1, "203.0.113.7"), (0, "127.0.0.1")):
        folder = tmp_path / f"proxy-{proxies}"
        proxied = make_app(instance_path=str(folder), PROXY_FIX=proxies)
        proxied.test_client().get("/login", headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        for handler in logging.getLogger("cds").handlers:
            handler.flush()
        assert re.search(rf"INFO cds: {re.escape(expected)} GET /login 200 ",
                         (folder / "logs" / "cds.log").read_text())
