"""Linphone remote provisioning: the first fetch (consumes the deployment token) and
the per-device fetch at every start of the app (docs/linphone.md).

The same single-use rule, group commit and driver-level statements as client
protocol v1 (cds/client/service.py), so a burst of phones costs the same here.
"""
from __future__ import annotations

import logging

from sqlalchemy import bindparam, select, update

from cds.client.service import (CONSUME_LINK, GONE_MESSAGES, NEW_DEVICE, UNKNOWN_LINK, USER_ACTIVATED,
                                USER_DOWNLOADED, ClientError, audit_client_event, batches, usable_link)
from cds.client.statements import DriverStatement
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
_BY_TOKEN = DriverStatement(
    select(Deployment.id.label("deployment_id"), Deployment.used_at, Deployment.revoked_at,
           Deployment.superseded_at, Deployment.expires_at, *_COLUMNS)
    .join_from(Deployment, User, Deployment.user_id == User.id)
    .join(DeploymentProfile, DeploymentProfile.id == User.profile_id)
    .where(Deployment.token_hash == bindparam("h"))
    # PostgreSQL: the link's row stays locked until the batch commits (as in protocol v1).
    .with_for_update(of=Deployment))
_BY_KEY = DriverStatement(
    select(ClientDevice.id.label("device_pk"), ClientDevice.device_id, ClientDevice.platform,
           ClientDevice.revoked_at.label("device_revoked_at"), *_COLUMNS)
    .join_from(ClientDevice, User, ClientDevice.user_id == User.id)
    .join(DeploymentProfile, DeploymentProfile.id == User.profile_id)
    .where(ClientDevice.key_hash == bindparam("h")))
_DEVICE_SEEN = DriverStatement(
    update(ClientDevice).where(ClientDevice.id == bindparam("d_pk"))
    .values(last_seen_at=bindparam("now"), last_ip=bindparam("ip"), app_version=bindparam("ver"),
            device_id=bindparam("hint")))
# The public URL as Settings hold it (cds.settings.service.public_url), read in the same
# transaction: a separate ORM query would cost as much as the whole fetch.
_PUBLIC_URL = DriverStatement(select(Setting.value).where(Setting.key == "PUBLIC_URL"))


def _secrets(r) -> dict:
    try:
        return decrypt_secrets(r.secrets_enc)
    except SecretUnreadable:
        raise ClientError(503, "config_unavailable", "The configuration cannot be read right now; "
                                                     "try again later.") from None


def device_url(cur, configured_url: str, key: str) -> str:
    """The per-device URL on the public URL (Settings over the configuration file)."""
    row = _PUBLIC_URL.first(cur, {})
    base = (row.value if row is not None and row.value else configured_url).rstrip("/")
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

    def consume(cur):
        r = usable_link(cur, _BY_TOKEN, token, now)
        if r.client != "linphone":
            raise OTHER_CLIENT
        document = render(r, _secrets(r), device_url(cur, configured_url, key))  # before any write
        # Single use: only the request whose UPDATE changes the row goes on. In a
        # PostgreSQL pipeline the row is locked since the read (FOR UPDATE), so the
        # UPDATE changes it and its count need not be waited for.
        used = {"d_id": r.deployment_id, "now": now, "dev": hint or None, "ip": ip}
        if cur.pipeline is not None:
            CONSUME_LINK.write(cur, used)
        elif CONSUME_LINK.execute(cur, used) != 1:
            raise ClientError(410, *GONE_MESSAGES["used"])
        NEW_DEVICE.write(cur, {
            "user_id": r.user_id, "deployment_id": r.deployment_id, "key_hash": token_hash(key),
            "device_id": hint, "platform": PLATFORM, "app_version": version,
            "activated_at": now, "last_seen_at": now, "last_ip": ip})
        USER_ACTIVATED.write(cur, {"u_id": r.user_id, "now": now})
        audit_client_event(cur, "client.activate", r, now, ip, {
            "deployment": r.deployment_id, "platform": PLATFORM, "app_version": version, "device": hint})
        return r, document

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

    def download(cur):
        r = _BY_KEY.first(cur, {"h": token_hash(key)})
        # A deleted user's device rows are gone: the same 410 as a revoked one.
        if r is None or r.device_revoked_at is not None or r.redeploy_required or r.platform != PLATFORM:
            raise DEVICE_GONE
        if r.client != "linphone":
            raise OTHER_CLIENT
        document = render(r, _secrets(r), device_url(cur, configured_url, key))
        USER_DOWNLOADED.write(cur, {"u_id": r.user_id, "now": now})
        # The app sends its account (From) once it has one: a better name for the device.
        _DEVICE_SEEN.write(cur, {"d_pk": r.device_pk, "now": now, "ip": ip, "ver": version,
                                   "hint": hint or r.device_id})
        audit_client_event(cur, "client.config_download", r, now, ip, {"device": r.device_id, "platform": PLATFORM})
        return document

    return batches.run(download)
