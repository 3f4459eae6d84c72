"""Deploy end to end: the app served by waitress, spoken to only over HTTP and SMTP
(aiosmtpd on loopback); and the Deploy button in a real browser on 300 users."""
from __future__ import annotations

import re
import time

import requests

from cds.extensions import db
from tests.conftest import TEST_PASSWORD, make_admin
from tests.mailsink import decode_qr, link_in, parts


class Console:
    """An administrator's browser session, as plain HTTP."""

    def __init__(self, base: str):
        self.base = base
        self.http = requests.Session()
        self.token = None

    def get(self, path, **kw):
        resp = self.http.get(self.base + path, **kw)
        found = re.search(r'"X-CSRFToken": "([^"]+)"', resp.text)
        if found:
            self.token = found.group(1)
        return resp

    def post(self, path, data=None, **kw):
        headers = {"X-CSRFToken": self.token, **kw.pop("headers", {})}
        return self.http.post(self.base + path, data=data, headers=headers, **kw)

    def sign_in(self, name="alice"):
        page = self.http.get(self.base + "/login").text
        csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        resp = self.http.post(self.base + "/login", data={"username": name, "password": TEST_PASSWORD,
                                                          "csrf_token": csrf})
        assert resp.ok
        self.get("/users")

    def run_action(self, kind, user_id) -> str:
        frag = self.post(f"/users/actions/{kind}", data={"ids": str(user_id)}, headers={"HX-Request": "true"})
        assert frag.status_code == 200, frag.text
        job_id = re.search(r'id="job-(\d+)"', frag.text).group(1)
        deadline = time.monotonic() + 30
        while 'data-state="done"' not in frag.text:
            assert time.monotonic() < deadline, frag.text
            assert 'data-state="failed"' not in frag.text, frag.text
            time.sleep(0.1)
            frag = self.get(f"/jobs/{job_id}/progress")
        return frag.text


def test_deploy_activate_force_config_and_id_change_over_http(live_server, smtp_server):
    base = live_server.url
    make_admin(live_server.app, "alice", "primary")
    admin = Console(base)
    admin.sign_in()
    resp = admin.post("/settings/mail", data={"server": "127.0.0.1", "port": str(smtp_server.port), "security": "none",
                                              "sender": "IT <it@example.com>", "rate_limit": "0"})
    assert resp.ok
    resp = admin.post("/profiles/new", data={
        "name": "Berlin", "client_types": ["mobile", "desktop"], "mbg_sip_host": "mbg.example.com",
        "mbg_sip_port": "5061", "mbg_sip_transport": "TLS", "pbx_sip_host": "pbx.example.com",
        "pbx_sip_port": "5060", "pbx_sip_transport": "UDP", "mcs_host": "mcs.example.com", "mcs_port": "443",
        "voicemail_number": "8000", "link_validity_hours": "48"})
    assert resp.ok, resp.text
    new_form = admin.get("/users/new").text
    profile_id = re.search(r'<option value="(\d+)"[^>]*>Berlin</option>', new_form).group(1)
    resp = admin.post("/users/new", data={
        "login_id": "jdoe", "profile_id": profile_id, "first_name": "Jane", "last_name": "Doe",
        "number": "4711", "pbx_number": "4711", "pbx_sip_username": "sip4711", "mbg_sip_username": "mbg4711",
        "mcs_account": "jane.doe", "email": "jane@example.com", "mcs_password": "Mcs-Pass-1",
        "pbx_sip_password": "Pbx-Pass-2", "teleworker_sip_password": "Tw-Pass-3", "voicemail_pin": "2468"})
    assert resp.ok, resp.text
    table = admin.get("/users", params={"search": "jdoe"}).text
    user_id = re.search(r'class="row-check"[^>]*value="(\d+)"', table).group(1)

    summary = admin.run_action("deploy", user_id)
    assert "1 succeeded" in summary
    smtp_server.wait_for(1)
    rcpts, raw = smtp_server.messages[0]
    assert rcpts == ["jane@example.com"]
    mail = parts(raw)
    link = link_in(mail["text"])
    assert decode_qr(mail["images"]["qr-code@cds"]) == link
    for secret in ("Mcs-Pass-1", "Pbx-Pass-2", "Tw-Pass-3", "2468"):
        assert secret not in mail["text"] and secret not in mail["html"]

    phone = requests.Session()
    hop = phone.get(link, allow_redirects=False)
    assert hop.status_code == 302
    token = link.rsplit("/", 1)[1]
    assert hop.headers["Location"] == f"{base}/deploy/{token}"
    landing = phone.get(hop.headers["Location"])
    assert landing.status_code == 200 and "Jane" not in landing.text
    assert decode_qr(phone.get(f"{base}/deploy/{token}/qr.png").content) == link

    device = {"id": "phone-1", "platform": "ios", "app_version": "9.9"}
    resp = phone.post(f"{base}/client/v1/activate", json={"token": token, "device": device})
    assert resp.status_code == 200
    doc = resp.json()
    key = doc["client_key"]
    assert doc["micollab_client_service"] == {"host": "mcs.example.com", "port": 443, "account": "jane.doe",
                                              "password": "Mcs-Pass-1"}
    assert doc["pbx_sip"]["password"] == "Pbx-Pass-2" and doc["mbg_sip"]["password"] == "Tw-Pass-3"
    assert doc["voicemail"] == {"number": "8000", "pin": "2468"}

    row = re.search(r'<tr[^>]*>(?:(?!</tr>).)*value="%s"(?:(?!</tr>).)*</tr>' % user_id,
                    admin.get("/users", params={"search": "jdoe"}).text, re.S).group(0)
    assert row.count('<time class="local"') == 2  # Deployed and Downloaded

    again = phone.post(f"{base}/client/v1/activate", json={"token": token, "device": device})
    assert again.status_code == 410

    auth = {"Authorization": f"Bearer {key}"}
    assert phone.get(f"{base}/client/v1/status", headers=auth).json()["force_config"] is False
    assert "1 succeeded" in admin.run_action("force_config", user_id)
    assert phone.get(f"{base}/client/v1/status", headers=auth).json()["force_config"] is True
    assert phone.get(f"{base}/client/v1/config", headers=auth).json()["user"]["login_id"] == "jdoe"
    assert phone.get(f"{base}/client/v1/status", headers=auth).json()["force_config"] is False

    detail = admin.get(f"/users/{user_id}").text
    form = dict(re.findall(r'<input[^>]*name="([a-z_]+)"[^>]*value="([^"]*)"', detail))
    form.update({"login_id": "jdoe2", "profile_id": profile_id})
    form = {k: v for k, v in form.items() if not k.endswith("password") and k not in ("voicemail_pin", "csrf_token")}
    resp = admin.post(f"/users/{user_id}", data=form)  # asked first: nothing changes yet
    assert resp.ok and 'id="id-change-confirm"' in resp.text
    assert phone.get(f"{base}/client/v1/status", headers=auth).status_code == 200
    resp = admin.post(f"/users/{user_id}", data={**form, "confirm_id_change": "jdoe2"})
    assert resp.ok, resp.text
    resp = phone.get(f"{base}/client/v1/status", headers=auth)
    assert resp.status_code == 401 and resp.json()["error"] == "redeploy_required"


def test_deploy_button_on_300_users(signed_in_page, live_server, smtp_server):
    app = live_server.app
    from cds.models import User
    from cds.profiles.service import default_profile
    from cds.settings.service import save_settings
    with app.app_context():
        save_settings({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp_server.port})
        profile = default_profile()
        db.session.add_all(User(login_id=f"b{i:03d}", profile_id=profile.id, first_name="Bulk",
                                last_name=f"User {i:03d}", email=f"b{i:03d}@example.com") for i in range(300))
        db.session.commit()
    page = signed_in_page
    page.on("dialog", lambda d: d.accept())
    page.goto(live_server.url + "/users?per_page=500")
    page.check("#check-page")
    assert page.inner_text("#selection-count").startswith("300 users selected")
    page.click("[data-bulk=deploy]")
    progress = page.locator(".job-progress progress")
    progress.wait_for()
    seen = set()
    deadline = time.monotonic() + 90
    while page.locator('.job-progress[data-state="done"]').count() == 0:
        assert time.monotonic() < deadline
        try:
            seen.add(int(progress.get_attribute("value", timeout=2000)))
        except Exception:
            pass
        time.sleep(0.1)
    text = page.inner_text(".job-progress")
    assert "300 of 300 done" in text and "300 succeeded" in text and "0 failed" in text
    page.screenshot(path="/tmp/deploy-300.png", full_page=False)
    assert len(set(smtp_server.handler.recipients())) == 300 == len(smtp_server.messages)
    assert not page.js_errors
