"""Linphone remote provisioning: the first fetch (consumes the deployment token) and
the per-device fetch at every start of the app (docs/linphone.md).

The same single-use rule, group commit and driver-level statements as client
protocol v1 (cds/client/service.py), so a burst of phones costs the same here.
"""
from __future__ import annotations

import logging

from sqlalchemy import DateTime, String, bindparam, func, literal, select, update

from cds.client.service import (UNKNOWN_LINK, USER_DOWNLOADED, ClientError, LinkUse, after_writing,
                                audit_client_event, batches, download_statement, use_link)
from cds.client.statements import Deferred, DriverStatement
from cds.clients.linphone import DEVICE_PATH
from cds.clients.linphone.document import render
from cds.models import (ClientDevice, Deployment, DeploymentProfile, Setting, User, utcnow)
from cds.security import SecretUnreadable, decrypt_secrets, new_token, token_hash

log = logging.getLogger("cds.linphone")

PLATFORM = "linphone"
MAX_KEY_LENGTH = 128
# The device URL of a revoked, re-identified or deleted user's app (or one never issued).
DEVICE_GONE = ClientError(410, "device_revoked", "This app's access has ended. Ask your administrator "
                                                 "for a new deployment e-mail.")
OTHER_CLIENT = ClientError(410, "other_client", "This link is not for Linphone any more. Ask your "
                                                "administrator for a new deployment e-mail.")

_COLUMNS = (
    User.id.label("user_id"), User.login_id, User.first_name, User.last_name, User.pbx_sip_username,
    User.mbg_sip_username, User.secrets_enc, User.redeploy_required,
    DeploymentProfile.client, DeploymentProfile.sip_account, DeploymentProfile.sip_domain,
    DeploymentProfile.sip_realm, DeploymentProfile.sip_algorithm, DeploymentProfile.sip_credential,
    DeploymentProfile.pbx_sip_host, DeploymentProfile.pbx_sip_port, DeploymentProfile.pbx_sip_transport,
    DeploymentProfile.mbg_sip_host, DeploymentProfile.mbg_sip_port, DeploymentProfile.mbg_sip_transport,
    DeploymentProfile.voicemail_number,
)
# The public URL as Settings hold it (cds.settings.service.public_url), read with the
# fetch's own row: a separate ORM query would cost as much as the whole fetch.
_PUBLIC_URL = select(Setting.value).where(Setting.key == "PUBLIC_URL").scalar_subquery().label("public_url")
_FIRST_USE = LinkUse(
    select(Deployment.id.label("deployment_id"), Deployment.used_at, Deployment.revoked_at,
           Deployment.superseded_at, Deployment.expires_at, *_COLUMNS, _PUBLIC_URL)
    .join_from(Deployment, User, Deployment.user_id == User.id)
    .join(DeploymentProfile, DeploymentProfile.id == User.profile_id)
    .where(Deployment.token_hash == bindparam("h")),
    # A link of a profile that moved to another client kind is not used up here.
    require=lambda link: link.c.client == "linphone")
_BY_KEY = DriverStatement(
    select(ClientDevice.id.label("device_pk"), ClientDevice.device_id, ClientDevice.platform,
           ClientDevice.revoked_at.label("device_revoked_at"), *_COLUMNS, _PUBLIC_URL)
    .join_from(ClientDevice, User, ClientDevice.user_id == User.id)
    .join(DeploymentProfile, DeploymentProfile.id == User.profile_id)
    .where(ClientDevice.key_hash == bindparam("h")))
_DEVICE_SEEN = DriverStatement(
    update(ClientDevice).where(ClientDevice.id == bindparam("d_pk"))
    .values(last_seen_at=bindparam("now"), last_ip=bindparam("ip"), app_version=bindparam("ver"),
            device_id=bindparam("hint")))


# PostgreSQL: the re-fetch's writes in the same statement as its read (as protocol v1's).
_DOWNLOAD = DriverStatement(download_statement(
    _BY_KEY.stmt,
    usable=lambda d: (d.c.device_revoked_at.is_(None) & d.c.redeploy_required.is_(False)
                      & (d.c.platform == PLATFORM) & (d.c.client == "linphone")),
    seen={"last_seen_at": bindparam("now", type_=DateTime), "last_ip": bindparam("ip", type_=String),
          "app_version": bindparam("ver", type_=String),
          # The app sends its account (From) once it has one: a better name for the device.
          "device_id": func.coalesce(func.nullif(bindparam("hint", type_=String), ""), ClientDevice.device_id)},
    seen_when=None,
    detail=lambda d: func.json_build_object("device", d.c.device_id, "platform", literal(PLATFORM, String))))


def _secrets(r) -> dict:
    try:
        return decrypt_secrets(r.secrets_enc)
    except SecretUnreadable:
        raise ClientError(503, "config_unavailable", "The configuration cannot be read right now; "
                                                     "try again later.") from None


def device_url(r, configured_url: str, key: str) -> str:
    """The per-device URL on the public URL (Settings over the configuration file)."""
    base = (r.public_url or configured_url).rstrip("/")
    return f"{base}{DEVICE_PATH}{key}"


def _hints(user_agent: str | None, sip_from: str | None) -> tuple[str, str]:
    """What the request says of the device (unauthenticated: hints only)."""
    return (user_agent or "").strip()[:32], (sip_from or "").strip()[:128]


def first_fetch(token: str, *, configured_url: str, ip: str | None, user_agent: str | None = None,
                sip_from: str | None = None) -> bytes:
    """The client's first GET: consume the token, register the device, return its document."""
    if not token or len(token) > MAX_KEY_LENGTH:
        raise UNKNOWN_LINK
    version, hint = _hints(user_agent, sip_from)
    now = utcnow()
    key = new_token()

    def check(r):
        if r.client != "linphone":
            raise OTHER_CLIENT

    def consume(cur):
        return use_link(cur, _FIRST_USE, token, now, ip, {"id": hint, "platform": PLATFORM, "app_version": version},
                        key, check, build=lambda r: render(r, _secrets(r), device_url(r, configured_url, key)))

    r, document = batches.run(consume)
    log.info("user %s provisioned a Linphone client (deployment %s)", r.user_id, r.deployment_id)
    return document


def device_fetch(key: str, *, configured_url: str, ip: str | None, user_agent: str | None = None,
                 sip_from: str | None = None) -> bytes:
    """A provisioned client's fetch at start: the current document; updates Downloaded,
    clears Force Config. 410 once the device was revoked (revoke, ID change, delete)."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise DEVICE_GONE
    version, hint = _hints(user_agent, sip_from)
    now = utcnow()

    def refused(r):
        # A deleted user's device rows are gone: the same 410 as a revoked one.
        if r is None or r.device_revoked_at is not None or r.redeploy_required or r.platform != PLATFORM:
            raise DEVICE_GONE
        if r.client != "linphone":
            raise OTHER_CLIENT
        return r

    def document(r):
        return render(r, _secrets(r), device_url(r, configured_url, key))

    def download(cur):
        if cur.dialect.name == "postgresql":
            # One statement: the batch sends every unit's before it waits for any answer.
            answer = _DOWNLOAD.send(cur, {"h": token_hash(key), "now": now, "ip": ip, "ver": version,
                                          "hint": hint})
            return Deferred(lambda: after_writing(document, refused(answer())))
        r = refused(_BY_KEY.first(cur, {"h": token_hash(key)}))
        doc = document(r)
        USER_DOWNLOADED.write(cur, {"u_id": r.user_id, "now": now})
        # The app sends its account (From) once it has one: a better name for the device.
        _DEVICE_SEEN.write(cur, {"d_pk": r.device_pk, "now": now, "ip": ip, "ver": version,
                                 "hint": hint or r.device_id})
        audit_client_event(cur, "client.config_download", r, now, ip, {"device": r.device_id, "platform": PLATFORM})
        return doc

    return batches.run(download)
