"""The lpconfig XML document a Linphone client applies (shared/linphone-provisioning.md).

Every entry carries overwrite="true": an entry without it is written only when the
client does not have that key yet, so a changed password or host would never reach
a provisioned client. This module is, with cds/client's JSON document, the only
place a SIP password (or its ha1) leaves the CDS.
"""
from __future__ import annotations

import hashlib
from xml.sax.saxutils import escape

NAMESPACE = "http://www.linphone.org/xsds/lpconfig.xsd"
REG_EXPIRES = 3600
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def ha1(username: str, realm: str, password: str, algorithm: str) -> str:
    """Hex of H(username:realm:password), the digest credential (RFC 7616)."""
    return _HASHES[algorithm](f"{username}:{realm}:{password}".encode()).hexdigest()


def _quoted(display_name: str) -> str:
    """A SIP display name as a quoted string (RFC 3261 §25.1)."""
    return '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sip_account(r, secrets: dict) -> dict:
    """The account the profile names (PBX or Teleworker/MBG): user name, password, registrar."""
    if r.sip_account == "teleworker":
        return {"username": r.mbg_sip_username, "password": secrets.get("teleworker_sip_password", ""),
                "host": r.mbg_sip_host, "port": r.mbg_sip_port, "transport": r.mbg_sip_transport}
    return {"username": r.pbx_sip_username, "password": secrets.get("pbx_sip_password", ""),
            "host": r.pbx_sip_host, "port": r.pbx_sip_port, "transport": r.pbx_sip_transport}


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render(r, secrets: dict, device_url: str) -> bytes:
    """The document for the user and profile columns in ``r`` (a row of the provisioning
    statements): the account, its credential, and the per-device URL to fetch next time."""
    account = sip_account(r, secrets)
    user, domain = account["username"], r.sip_domain
    display = " ".join(p for p in (r.first_name, r.last_name) if p)
    identity = f"sip:{user}@{domain}"
    if display:
        identity = f"{_quoted(display)} <{identity}>"
    proxy = [
        ("reg_identity", identity),
        ("reg_proxy", f"<sip:{host_port(account['host'], account['port'])};"
                      f"transport={account['transport'].lower()}>"),
        ("reg_expires", str(REG_EXPIRES)),
        ("reg_sendregister", "1"),
    ]
    if r.voicemail_number:
        # Read by liblinphone 5.3 and later (the account's voicemail address).
        proxy.append(("voicemail_uri", f"sip:{''.join(r.voicemail_number.split())}@{domain}"))
    auth = [("username", user)]
    if r.sip_credential == "ha1":
        auth += [("ha1", ha1(user, r.sip_realm, account["password"], r.sip_algorithm)),
                 ("algorithm", r.sip_algorithm), ("realm", r.sip_realm)]
    else:
        # A provisioned client keeps the ha1 of its first registration and drops passwd:
        # an empty ha1 makes it use the (new) password.
        auth += [("passwd", account["password"]), ("ha1", "")]
        if r.sip_realm:
            auth += [("realm", r.sip_realm), ("algorithm", r.sip_algorithm)]
    # Without "domain", liblinphone 5.1 adds a second credential at every start.
    auth.append(("domain", domain))
    sections = [
        ("misc", [("config-uri", device_url)]),
        ("sip", [("default_proxy", "0")]),
        ("proxy_0", proxy),
        ("auth_info_0", auth),
    ]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f'<config xmlns="{NAMESPACE}">']
    for name, entries in sections:
        lines.append(f'  <section name="{name}">')
        lines += [f'    <entry name="{key}" overwrite="true">{escape(value)}</entry>' for key, value in entries]
        lines.append("  </section>")
    lines.append("</config>")
    return ("\n".join(lines) + "\n").encode()
