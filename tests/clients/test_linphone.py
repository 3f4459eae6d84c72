"""Linphone remote provisioning, as liblinphone and a browser see it: the document, the
single-use first fetch, the device URL, what a browser or scanner gets, and the
profile settings (form, API, CLI). The real client and registrar: test_linphone_e2e.py."""
from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET

import pytest
from sqlalchemy import func, select

from cds.extensions import db
from cds.models import AuditEvent, ClientDevice, DeploymentProfile, User
from tests.conftest import TEST_SERVERS
from tests.mailsink import decode_qr, parts

NS = "{http://www.linphone.org/xsds/lpconfig.xsd}"
BROWSER = {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15",
           "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
LINPHONE = {"User-Agent": "LinphoneAndroid/5.2.5 (Pixel 7) LinphoneSDK/5.3.14"}
PROFILE = dict(client="linphone", sip_account="pbx", sip_domain="sip.example.com", sip_realm="example.com",
               sip_algorithm="MD5", sip_credential="ha1", pbx_sip_host="pbx.example.com", pbx_sip_port=5080,
               pbx_sip_transport="TCP", voicemail_number="8000")



def make_profile(app, name="Linphone", **fields):
    from cds.profiles.service import save_profile
    with app.app_context():
        return save_profile(None, {"name": name, **PROFILE, **fields}).id


def make_user(app, profile_id, login="ann", password="Pbx-Secret-1", **fields):
    with app.app_context():
        user = User(login_id=login, profile_id=profile_id, first_name="Ann", last_name='O"Neil',
                    email=f"{login}@example.com", pbx_sip_username="1001", mbg_sip_username="tw1001",
                    **fields)
        db.session.add(user)
        db.session.flush()
        user.set_secret("pbx_sip_password", password)
        user.set_secret("teleworker_sip_password", "Tw-Secret-2")
        db.session.commit()
        return user.id


def issue(app, user_id) -> str:
    """A deployment link's token, as Deploy issues it (the e-mail is another test's)."""
    from cds.deploy.service import issue_deployment
    with app.app_context():
        _, token = issue_deployment(db.session.get(User, user_id))
        db.session.commit()
        return token


def entries(xml: bytes) -> dict[tuple[str, str], ET.Element]:
    root = ET.fromstring(xml)
    assert root.tag == f"{NS}config"
    return {(s.get("name"), e.get("name")): e for s in root.findall(f"{NS}section") for e in s.findall(f"{NS}entry")}


def values(xml: bytes) -> dict[tuple[str, str], str]:
    return {k: (e.text or "") for k, e in entries(xml).items()}


def test_first_fetch_gives_the_document_once(app, client):
    uid = make_user(app, make_profile(app))
    token = issue(app, uid)
    resp = client.get(f"/provisioning/linphone/{token}", headers=LINPHONE)
    assert resp.status_code == 200 and resp.mimetype == "application/xml"
    doc = entries(resp.data)
    # Every entry CDS owns is overwritten on an already-provisioned client.
    assert all(e.get("overwrite") == "true" for e in doc.values())
    v = values(resp.data)
    assert v[("proxy_0", "reg_identity")] == '"Ann O\\"Neil" <sip:1001@sip.example.com>'
    assert v[("proxy_0", "reg_proxy")] == "<sip:pbx.example.com:5080;transport=tcp>"
    assert v[("proxy_0", "voicemail_uri")] == "sip:8000@sip.example.com"
    assert v[("auth_info_0", "username")] == "1001"
    assert v[("auth_info_0", "ha1")] == hashlib.md5(b"1001:example.com:Pbx-Secret-1").hexdigest()
    assert v[("auth_info_0", "algorithm")] == "MD5" and v[("auth_info_0", "realm")] == "example.com"
    assert v[("auth_info_0", "domain")] == "sip.example.com"
    assert ("auth_info_0", "passwd") not in v and b"Pbx-Secret-1" not in resp.data
    assert v[("misc", "config-uri")].startswith("http://cds.test/provisioning/linphone/device/")
    assert token not in v[("misc", "config-uri")]

    with app.app_context():
        user = db.session.get(User, uid)
        assert user.downloaded_at is not None
        [device] = db.session.scalars(select(ClientDevice).where(ClientDevice.user_id == uid)).all()
        assert device.platform == "linphone" and device.app_version.startswith("LinphoneAndroid/5.2.5")
        # Only the hash of the device key is stored.
        assert v[("misc", "config-uri")].rsplit("/", 1)[1] not in device.key_hash
        assert db.session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "client.activate", AuditEvent.user_id == uid)) == 1

    again = client.get(f"/provisioning/linphone/{token}", headers=LINPHONE)
    assert again.status_code == 410 and "already been used" in again.get_data(as_text=True)
    assert client.get(f"/provisioning/linphone/{'x' * 43}", headers=LINPHONE).status_code == 404


def test_browser_and_scanner_get_the_landing_page_and_use_nothing(app, client):
    uid = make_user(app, make_profile(app))
    token = issue(app, uid)
    for headers in (BROWSER, {"Accept": "text/html"}, {"User-Agent": "Mozilla/5.0 (compatible; Scanner)"},
                    {"Accept": "*/*", "User-Agent": "curl/8.0"}):
        page = client.get(f"/provisioning/linphone/{token}", headers=headers)
        assert page.status_code == 200 and page.mimetype == "text/html", headers
        html = page.get_data(as_text=True)
        assert "Open in Linphone" in html and f'href="linphone-config:http://cds.test/provisioning/linphone/{token}"' in html
        assert "Ann" not in html and "1001" not in html and "Pbx-Secret" not in html
    with app.app_context():
        assert db.session.get(User, uid).downloaded_at is None
    assert client.head(f"/provisioning/linphone/{token}").status_code == 200  # a link checker's HEAD
    # The QR code on the landing page holds the provisioning URL itself.
    png = client.get(f"/deploy/{token}/qr.png").data
    assert decode_qr(png) == f"http://cds.test/provisioning/linphone/{token}"
    # liblinphone 5.1 (no Accept header, "Unknown" at its first start) still gets it.
    assert client.get(f"/provisioning/linphone/{token}", headers={"User-Agent": "Unknown"}).status_code == 200


def test_tokens_and_device_keys_never_logged(app, client):
    import logging
    from pathlib import Path
    uid = make_user(app, make_profile(app))
    token = issue(app, uid)
    doc = client.get(f"/provisioning/linphone/{token}")
    key = values(doc.data)[("misc", "config-uri")].rsplit("/", 1)[1]
    client.get(f"/provisioning/linphone/device/{key}")
    for handler in logging.getLogger("cds").handlers:
        handler.flush()
    text = (Path(app.instance_path) / "logs" / "cds.log").read_text()
    assert "/provisioning/linphone/tok:" in text and "/provisioning/linphone/device/tok:" in text
    assert token not in text and key not in text and "Pbx-Secret" not in text


def _provision(app, client, login="ann", **profile):
    uid = make_user(app, make_profile(app, **profile), login=login)
    doc = client.get(f"/provisioning/linphone/{issue(app, uid)}", headers={"User-Agent": "Unknown"})
    assert doc.status_code == 200
    device_url = values(doc.data)[("misc", "config-uri")]
    return uid, device_url.replace("http://cds.test", "")


def test_device_url_returns_current_config_and_clears_force_config(app, client):
    uid, device = _provision(app, client)
    from cds.deploy.service import force_config_users
    with app.app_context():
        user = db.session.get(User, uid)
        user.set_secret("pbx_sip_password", "Changed-3")
        force_config_users(None, [user], actor="alice")
        assert db.session.get(User, uid).force_config is True
    resp = client.get(device, headers={"User-Agent": "Linphonec/5.1.65", "From": "sip:1001@sip.example.com"})
    assert resp.status_code == 200
    v = values(resp.data)
    assert v[("auth_info_0", "ha1")] == hashlib.md5(b"1001:example.com:Changed-3").hexdigest()
    assert v[("misc", "config-uri")].endswith(device)
    with app.app_context():
        user = db.session.get(User, uid)
        assert user.force_config is False and user.downloaded_at is not None
        row = db.session.scalar(select(ClientDevice).where(ClientDevice.user_id == uid))
        assert row.device_id == "sip:1001@sip.example.com" and row.app_version == "Linphonec/5.1.65"
    # A browser holding the device URL gets no configuration.
    page = client.get(device, headers=BROWSER)
    assert page.status_code == 200 and b"ha1" not in page.data


@pytest.mark.parametrize("how", ["revoke", "id_change", "delete"])
def test_device_url_answers_410_after_revoke_id_change_or_delete(app, client, how):
    uid, device = _provision(app, client)
    with app.app_context():
        user = db.session.get(User, uid)
        if how == "revoke":
            from cds.users.service import revoke_device
            revoke_device(user, db.session.scalar(select(ClientDevice.id).where(ClientDevice.user_id == uid)))
        elif how == "id_change":
            from cds.users.login_ids import apply_login_id_change
            assert apply_login_id_change(user, "ann.new")
            db.session.commit()
        else:
            from cds.deletion.service import delete_user
            delete_user(user)
            db.session.commit()
    resp = client.get(device, headers={"User-Agent": "Linphonec/5.1.65"})
    assert resp.status_code == 410


def test_password_teleworker_and_sha256_documents(app, client):
    _, device = _provision(app, client, sip_credential="password", sip_realm="")
    v = values(client.get(device).data)
    assert v[("auth_info_0", "passwd")] == "Pbx-Secret-1"
    assert v[("auth_info_0", "ha1")] == ""  # clears the ha1 a provisioned client keeps
    assert v[("auth_info_0", "domain")] == "sip.example.com"

    _, device = _provision(app, client, login="tw", name="TW", sip_account="teleworker", sip_algorithm="SHA-256",
                           mbg_sip_host="mbg.example.com", mbg_sip_port=5061, mbg_sip_transport="TLS")
    v = values(client.get(device).data)
    assert v[("auth_info_0", "username")] == "tw1001"
    assert v[("auth_info_0", "ha1")] == hashlib.sha256(b"tw1001:example.com:Tw-Secret-2").hexdigest()
    assert v[("proxy_0", "reg_proxy")] == "<sip:mbg.example.com:5061;transport=tls>"


def test_linphone_profile_refused_without_what_a_registration_needs(app, admin_client):
    from cds.profiles.service import InvalidProfile, save_profile
    with app.app_context():
        with pytest.raises(InvalidProfile) as exc:
            save_profile(None, {"name": "Bare", "client": "linphone"})
        assert set(exc.value.errors) == {"pbx_sip_host", "sip_domain"}
        assert "SIP domain" in str(exc.value)
        # No realm: the password is sent (an ha1 needs the realm)...
        p = save_profile(None, {"name": "NoRealm", "client": "linphone", "sip_domain": "d.example",
                                "pbx_sip_host": "pbx.example"})
        assert p.sip_credential == "password"
        # ...and asking for an ha1 without one is refused.
        with pytest.raises(InvalidProfile) as exc:
            save_profile(p, {"sip_credential": "ha1"})
        assert set(exc.value.errors) == {"sip_realm"}
        assert db.session.get(DeploymentProfile, p.id).sip_credential == "password"
        with pytest.raises(InvalidProfile) as exc:
            save_profile(None, {"name": "X", "client": "zoiper", "sip_algorithm": "SHA-1"})
        assert {"client", "sip_algorithm"} <= set(exc.value.errors)
    # The form says it beside the field, and saves nothing.
    resp = admin_client.post("/profiles/new", data={
        "name": "Form", "client": "linphone", "sip_account": "pbx", "sip_algorithm": "MD5",
        "sip_credential": "ha1", "sip_domain": "", "client_types": "mobile", "mbg_sip_port": 5061,
        "mbg_sip_transport": "TLS", "pbx_sip_port": 5060, "pbx_sip_transport": "UDP", "mcs_port": 443,
        "link_validity_hours": 96})
    assert resp.status_code == 422
    assert "needs this: no SIP domain" in resp.get_data(as_text=True)
    with app.app_context():
        assert find("Form") is None


def find(name):
    from cds.profiles.service import find_profile_by_name
    return find_profile_by_name(name)


def test_contract_cli_flags_and_api_names(app, runner, client):
    result = runner.invoke(args=["cds", "profiles", "add", "Phones", "--client", "linphone", "--sip-account", "pbx",
                                 "--sip-domain", "sip.example.com", "--sip-realm", "sip.example.com",
                                 "--sip-algorithm", "SHA-256", "--sip-credential", "ha1",
                                 "--pbx-sip-host", "10.0.0.5", "--pbx-sip-port", "5060",
                                 "--pbx-sip-transport", "UDP", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {k: data[k] for k in ("client", "sip_account", "sip_domain", "sip_realm", "sip_algorithm",
                                 "sip_credential", "pbx_sip_host", "pbx_sip_port")} == {
        "client": "linphone", "sip_account": "pbx", "sip_domain": "sip.example.com",
        "sip_realm": "sip.example.com", "sip_algorithm": "SHA-256", "sip_credential": "ha1",
        "pbx_sip_host": "10.0.0.5", "pbx_sip_port": 5060}
    assert data["missing"] == []
    bad = runner.invoke(args=["cds", "profiles", "add", "Bad", "--client", "linphone"])
    assert bad.exit_code != 0 and "SIP domain" in bad.output

    from cds.api.openapi import build_document
    props = build_document()["components"]["schemas"]["ProfileInput"]["properties"]
    assert props["client"]["enum"] == ["cds-v1", "linphone"]
    assert props["sip_algorithm"]["enum"] == ["MD5", "SHA-256"]


def test_deployment_mail_for_a_linphone_user(app, smtp_server):
    from cds.settings.service import save_settings
    from tests.deploy.test_deploy import deploy
    with app.app_context():
        save_settings({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp_server.port, "MAIL_DEFAULT_SENDER": "IT <it@example.com>"})
    uid = make_user(app, make_profile(app))
    deploy(app, {"ids": [uid]})
    mail = parts(smtp_server.messages[0][1])
    [png] = mail["images"].values()
    url = decode_qr(png)
    assert url.startswith("http://cds.test/provisioning/linphone/")
    assert url in mail["text"] and "/r/" not in mail["text"]
    assert "Linphone" in mail["subject"] and "Linphone" in mail["text"] and "MiCollab" not in mail["text"]
    with app.app_context():
        from cds.models import RedirectEntry
        # The link is CDS's own: nothing registered with the redirect server.
        assert db.session.scalar(select(func.count()).select_from(RedirectEntry)) == 0


def test_protocol_v1_unchanged_for_v1_profiles(app, client):
    """A v1 token is not a Linphone link, and v1 links still go through /r/."""
    from cds.profiles.service import default_profile
    with app.app_context():
        pid = default_profile().id
        assert default_profile().client == "cds-v1"
    uid = make_user(app, pid)
    token = issue(app, uid)
    assert client.get(f"/provisioning/linphone/{token}", headers=LINPHONE).status_code == 410
    resp = client.post("/client/v1/activate", json={"token": token, "device": {"id": "d1"}})
    assert resp.status_code == 200 and resp.get_json()["schema"] == "cds-client-config/1"
    from cds.deploy.service import link_for
    with app.app_context():
        assert link_for("T", default_profile()) == "http://cds.test/r/T"
    assert TEST_SERVERS["pbx_sip_host"] == resp.get_json()["pbx_sip"]["host"]


def test_wrong_paths_and_methods_under_provisioning_answer_plainly(client):
    for method, path, status in (("GET", "/provisioning/linphone/a/b/c", 404), ("POST", "/provisioning/linphone/x", 405),
                                 ("GET", "/provisioning/", 404), ("GET", "/provisioning/linphone/device/" + "x" * 200, 410)):
        resp = client.open(path, method=method)
        assert resp.status_code == status and resp.mimetype == "text/plain", (method, path)


def test_concurrent_first_fetches_use_the_link_once(app):
    from concurrent.futures import ThreadPoolExecutor
    uid = make_user(app, make_profile(app))
    token = issue(app, uid)

    def fetch(_):
        return app.test_client().get(f"/provisioning/linphone/{token}", headers=LINPHONE).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(fetch, range(8)))
    assert codes.count(200) == 1 and codes.count(410) == 7
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ClientDevice)) == 1
