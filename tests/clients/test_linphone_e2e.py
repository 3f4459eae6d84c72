"""Linphone end to end, over real HTTP and SMTP only: a Linphone profile whose registrar
is a Kamailio the test starts, Deploy from the Users tab, the e-mail received by
aiosmtpd, its QR code decoded by zxing-cpp, and that URL, nothing else, given to
liblinphone's `linphonec`. Kamailio must then hold its registered contact.

Skipped (with the reason) where kamailio or linphonec is not installed; .ci/run
installs them."""
from __future__ import annotations

import re
import time

import pytest
import requests

from tests.conftest import TEST_PASSWORD, make_admin
from tests.e2e.conftest import LiveServer
from tests.fixtures import sip
from tests.mailsink import MailSink, decode_qr, parts

pytestmark = pytest.mark.skipif(sip.missing_reason() is not None, reason=sip.missing_reason() or "")

DOMAIN = "sip.test"
SIP_USER = "1001"
PASSWORD = "Pbx-Secret-1001"
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/120.0 Safari/537.36",
           "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
# A bounded wait for a registration that must not happen (the negative control).
REFUSAL_WAIT = 8



@pytest.fixture
def cds(make_app, app, smtp_server):
    """CDS served by waitress on loopback, sending through the aiosmtpd server."""
    live = make_app()
    server = LiveServer(live)
    live.config["PUBLIC_URL"] = live.config["REDIRECT_URL"] = server.url
    with live.app_context():
        from cds.settings.tokens import create_api_token
        from cds.settings.service import save_settings
        save_settings({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp_server.port,
                       "MAIL_DEFAULT_SENDER": "IT <it@example.com>"})
        _, server.api_token = create_api_token("e2e", "admin")
    make_admin(live, "alice", "primary")
    server.start()
    yield server
    server.stop()


class Console:
    """An administrator: the Users tab through its session, the rest through the JSON API."""

    def __init__(self, base: str, api_token: str):
        self.base = base
        self.web = requests.Session()
        page = self.web.get(f"{base}/login").text
        csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        resp = self.web.post(f"{base}/login", data={"username": "alice", "password": TEST_PASSWORD,
                                                    "csrf_token": csrf}, allow_redirects=False)
        assert resp.status_code == 302
        page = self.web.get(f"{base}/users").text
        self.csrf = re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Bearer {api_token}"

    def post(self, path: str, data: dict):
        resp = self.web.post(self.base + path, data=data, headers={"X-CSRFToken": self.csrf, "HX-Request": "true"})
        assert resp.status_code == 200, resp.text[:500]
        return resp

    def api_call(self, method: str, path: str, **kw) -> dict:
        resp = self.api.request(method, f"{self.base}/api/v1{path}", **kw)
        assert resp.status_code in (200, 201), resp.text[:500]
        return resp.json()

    def linphone_profile(self, registrar: sip.Kamailio, *, algorithm="MD5", credential="ha1") -> int:
        return self.api_call("POST", "/profiles", json={
            "name": f"Linphone {algorithm} {credential}", "client": "linphone", "sip_account": "pbx",
            "sip_domain": DOMAIN, "sip_realm": DOMAIN, "sip_algorithm": algorithm, "sip_credential": credential,
            "pbx_sip_host": "127.0.0.1", "pbx_sip_port": registrar.port, "pbx_sip_transport": "UDP"})["id"]

    def add_user(self, profile_id: int, password: str = PASSWORD, sip_user: str = SIP_USER) -> int:
        return self.api_call("POST", "/users", json={
            "login_id": f"ann.{sip_user}", "first_name": "Ann", "last_name": "Lee", "email": "ann@example.com",
            "pbx_sip_username": sip_user, "profile_id": profile_id,
            "secrets": {"pbx_sip_password": password}})["id"]

    def users_tab_row(self, user_id: int) -> str:
        page = self.web.get(f"{self.base}/users", params={"search": "Lee"}).text
        row = re.search(rf'<tr data-href="[^"]*/{user_id}">(.*?)</tr>', page, re.S)
        assert row, "the user is not on the Users tab"
        return row.group(1)

    def downloaded_cell(self, user_id: int) -> str:
        cells = re.findall(r'<td class="time">(.*?)</td>', self.users_tab_row(user_id), re.S)
        return cells[1].strip()  # Deployed, Downloaded

    def user(self, user_id: int) -> dict:
        return self.api_call("GET", f"/users/{user_id}")


def deploy_and_scan(console: Console, smtp_server: MailSink, user_id: int, expected: int = 1) -> str:
    """Press Deploy on the Users tab; the URL the e-mail's QR code holds."""
    console.post("/users/actions/deploy", {"ids": str(user_id)})
    smtp_server.wait_for(expected)
    mail = parts(smtp_server.messages[expected - 1][1])
    [png] = mail["images"].values()
    url = decode_qr(png)
    assert url in mail["text"] and "Linphone" in mail["subject"]
    return url


def test_linphone_provisioned_from_the_qr_code_registers(cds, smtp_server, tmp_path):
    registrar = sip.Kamailio(tmp_path / "kamailio", {(SIP_USER, DOMAIN): PASSWORD}).start()
    phone = sip.Linphonec(tmp_path / "phone")
    try:
        console = Console(cds.url, cds.api_token)
        uid = console.add_user(console.linphone_profile(registrar))
        url = deploy_and_scan(console, smtp_server, uid)
        assert url.startswith(f"{cds.url}/provisioning/linphone/")
        assert console.downloaded_cell(uid) == ""

        # A mail scanner or the user's browser opens the link first: the landing page, nothing used up.
        landing = requests.get(url, headers=BROWSER)
        assert landing.status_code == 200 and "Open in Linphone" in landing.text
        assert "Ann" not in landing.text and "1001" not in landing.text
        assert console.downloaded_cell(uid) == ""

        phone.provision(url)
        phone.start()
        assert registrar.wait_for_contact(SIP_USER, DOMAIN), \
            f"no registration; linphonec log: {phone.log.read_text(errors='replace')[-3000:]}"
        assert "<time" in console.downloaded_cell(uid)
        # The link was used up; the app now holds its own device URL.
        assert as_linphone(url).status_code == 410
        device_url = _wait_for(lambda: phone.config_uri() if "/device/" in (phone.config_uri() or "") else None)
        assert device_url and device_url.startswith(f"{cds.url}/provisioning/linphone/device/")

        # Every start re-fetches from the device URL, and registers again.
        phone.stop()
        registrar.clear(SIP_USER, DOMAIN)
        assert registrar.contacts(SIP_USER, DOMAIN) == []
        before = _fetches(cds)
        phone.start()
        assert registrar.wait_for_contact(SIP_USER, DOMAIN)
        assert _fetches(cds) > before

        # A new password, in CDS and on the registrar; Set Force Config; the next start uses it.
        phone.stop()
        registrar.stop()
        console.api_call("PATCH", f"/users/{uid}", json={"secrets": {"pbx_sip_password": "New-Secret-2"}})
        registrar = sip.Kamailio(tmp_path / "kamailio2", {(SIP_USER, DOMAIN): "New-Secret-2"}).start()
        _move_registrar(console, uid, registrar)
        console.post("/users/actions/force_config", {"ids": str(uid)})
        assert console.user(uid)["force_config"] is True
        phone.start()
        assert registrar.wait_for_contact(SIP_USER, DOMAIN), \
            f"no registration with the new password; log: {phone.log.read_text(errors='replace')[-3000:]}"
        assert registrar.wrong_password_refusals() == 0
        assert _wait_for(lambda: console.user(uid)["force_config"] is False or None)

        # Revoke the device on the user page: its URL answers 410 from then on.
        phone.stop()
        page = console.web.get(f"{cds.url}/users/{uid}").text
        revoke = re.search(r'hx-post="(/users/\d+/devices/\d+/revoke)"', page).group(1)
        resp = console.post(revoke, {})
        assert "cached" in resp.text  # the console says the app keeps its cached account
        assert as_linphone(device_url).status_code == 410
    finally:
        phone.stop()
        registrar.stop()


def _move_registrar(console: Console, user_id: int, registrar: sip.Kamailio) -> None:
    """The new Kamailio listens on another port: the profile says so (a changed profile
    reaches the client at its next start too)."""
    profile_id = console.user(user_id)["profile_id"]
    console.api_call("PATCH", f"/profiles/{profile_id}", json={"pbx_sip_port": registrar.port})


@pytest.mark.parametrize("algorithm,credential", [("SHA-256", "ha1"), ("MD5", "password")])
def test_ha1_sha256_and_password_register(cds, smtp_server, tmp_path, algorithm, credential):
    registrar = sip.Kamailio(tmp_path / "kamailio", {(SIP_USER, DOMAIN): PASSWORD}, algorithm=algorithm).start()
    phone = sip.Linphonec(tmp_path / "phone")
    try:
        console = Console(cds.url, cds.api_token)
        uid = console.add_user(console.linphone_profile(registrar, algorithm=algorithm, credential=credential))
        phone.provision(deploy_and_scan(console, smtp_server, uid))
        phone.start()
        assert registrar.wait_for_contact(SIP_USER, DOMAIN), phone.log.read_text(errors="replace")[-3000:]
        applied = phone.applied("auth_info_0", "passwd" if credential == "password" else "ha1")
        assert applied and applied[0]
        # And again at the next start, from the device URL (liblinphone dropped passwd by now).
        phone.stop()
        registrar.clear(SIP_USER, DOMAIN)
        phone.start()
        assert registrar.wait_for_contact(SIP_USER, DOMAIN)
    finally:
        phone.stop()
        registrar.stop()


def test_wrong_stored_password_is_refused(cds, smtp_server, tmp_path):
    """The negative control: CDS holds a password the registrar does not accept."""
    registrar = sip.Kamailio(tmp_path / "kamailio", {(SIP_USER, DOMAIN): PASSWORD}).start()
    phone = sip.Linphonec(tmp_path / "phone")
    try:
        console = Console(cds.url, cds.api_token)
        uid = console.add_user(console.linphone_profile(registrar), password="Not-The-Password")
        phone.provision(deploy_and_scan(console, smtp_server, uid))
        phone.start()
        assert _wait_for(registrar.wrong_password_refusals, timeout=30), "the registrar was never asked"
        assert registrar.wait_for_contact(SIP_USER, DOMAIN, timeout=REFUSAL_WAIT) == []
        # The client did fetch its configuration: it is the password that is wrong.
        assert "<time" in console.downloaded_cell(uid)
    finally:
        phone.stop()
        registrar.stop()


def as_linphone(url: str):
    """A GET as liblinphone sends it: a User-Agent, no Accept header."""
    return requests.get(url, headers={"User-Agent": "Linphonec/5.1.65", "Accept": None})


def _fetches(server) -> int:
    from sqlalchemy import func, select

    from cds.extensions import db
    from cds.models import AuditEvent
    with server.app.app_context():
        return db.session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "client.config_download"))


def _wait_for(probe, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    return None
