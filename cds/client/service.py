"""Client protocol v1 (PRODUCT.md §5, docs/client-protocol.md).

The configuration document built here is the only place the four user secrets
ever leave the CDS decrypted. Activation consumes a token with one conditional
UPDATE, so of two concurrent activations exactly one wins.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update

from cds.audit.service import record_event
from cds.extensions import db
from cds.models import ClientDevice, Deployment, User, utcnow
from cds.security import SecretUnreadable, new_token, token_hash

log = logging.getLogger("cds.client")

SCHEMA = "cds-client-config/1"
# A device's last-seen time is written at most this often (status is polled).
SEEN_RESOLUTION = timedelta(minutes=1)


class ClientError(Exception):
    """A protocol error: HTTP status, machine-readable code, message for the app's user."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


GONE_MESSAGES = {
    "used": ("link_used", "This link has already been used. Ask your administrator for a new e-mail."),
    "expired": ("link_expired", "This link has expired. Ask your administrator for a new e-mail."),
    "superseded": ("link_superseded", "This link was replaced by a newer e-mail. Use the newest one, "
                                      "or ask your administrator for a new e-mail."),
    "revoked": ("link_revoked", "This link was withdrawn. Ask your administrator for a new e-mail."),
}
UNKNOWN_LINK = ClientError(404, "unknown_token", "This link is not valid. Ask your administrator for "
                                                 "a new e-mail.")
REDEPLOY = ClientError(401, "redeploy_required", "This app's access has ended. Reset the app and "
                                                 "ask your administrator for a new deployment e-mail.")


def _clean_device(device) -> dict:
    if device is None:
        device = {}
    if not isinstance(device, dict):
        raise ClientError(400, "bad_request", '"device" must be an object.')
    out = {}
    for key, limit in (("id", 128), ("platform", 32), ("app_version", 32)):
        value = device.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ClientError(400, "bad_request", f'"device.{key}" must be a string.')
        out[key] = value.strip()[:limit]
    return out


def activate(token, device, ip: str | None) -> tuple[dict, str]:
    """Consume a deployment token: returns (configuration document, client_key)."""
    if not isinstance(token, str) or not token or len(token) > 128:
        raise ClientError(400, "bad_request", '"token" (the deployment token) is required.')
    dev = _clean_device(device)
    now = utcnow()
    row = db.session.execute(select(Deployment.id, Deployment.user_id, Deployment.used_at,
                                    Deployment.revoked_at, Deployment.superseded_at,
                                    Deployment.expires_at)
                             .where(Deployment.token_hash == token_hash(token))).first()
    if row is None:
        raise UNKNOWN_LINK
    state = _state(row, now)
    if state == "valid":
        # Single use: only the request whose UPDATE changes the row wins.
        won = db.session.execute(
            update(Deployment).where(Deployment.id == row.id, Deployment.used_at.is_(None),
                                     Deployment.revoked_at.is_(None), Deployment.superseded_at.is_(None),
                                     Deployment.expires_at > now)
            .values(used_at=now, used_device_id=dev["id"] or None, used_ip=ip)
            .execution_options(synchronize_session=False)).rowcount
        if won != 1:
            db.session.rollback()
            state = "used"
    if state != "valid":
        raise ClientError(410, *GONE_MESSAGES[state])
    user = db.session.get(User, row.user_id)
    client_key = new_token()
    device_row = ClientDevice(user_id=user.id, deployment_id=row.id, key_hash=token_hash(client_key),
                              device_id=dev["id"], platform=dev["platform"], app_version=dev["app_version"],
                              activated_at=now, last_seen_at=now, last_ip=ip)
    db.session.add(device_row)
    document = config_document(user, now)
    user.downloaded_at = now
    user.force_config = False
    user.redeploy_required = False
    record_event("client.activate", actor=f"client:{user.login_id}"[:64], actor_type="client", user=user,
                 detail={"deployment": row.id, "platform": dev["platform"], "app_version": dev["app_version"],
                         "device": dev["id"]}, commit=False)
    db.session.commit()
    log.info("user %s activated a %s client (deployment %s)", user.id, dev["platform"] or "?", row.id)
    return document, client_key


def _state(row, now: datetime) -> str:
    if row.used_at:
        return "used"
    if row.revoked_at:
        return "revoked"
    if row.superseded_at:
        return "superseded"
    if row.expires_at <= now:
        return "expired"
    return "valid"


def authenticate(client_key: str | None, ip: str | None) -> tuple[ClientDevice, User]:
    """The device behind a client key; 401 redeploy_required if it no longer works."""
    if not client_key or len(client_key) > 128:
        raise ClientError(401, "unauthorized", "Send the client key as: Authorization: Bearer <client_key>.")
    device = db.session.scalar(select(ClientDevice).where(ClientDevice.key_hash == token_hash(client_key)))
    # Unknown (the user was deleted), revoked (ID change, lost phone): the app must be redeployed.
    if device is None or device.revoked_at is not None:
        raise REDEPLOY
    user = db.session.get(User, device.user_id)
    if user is None or user.redeploy_required:
        raise REDEPLOY
    now = utcnow()
    if device.last_seen_at is None or now - device.last_seen_at >= SEEN_RESOLUTION or device.last_ip != ip:
        device.last_seen_at, device.last_ip = now, ip
    return device, user


def status(client_key: str | None, ip: str | None) -> dict:
    device, user = authenticate(client_key, ip)
    result = {"force_config": bool(user.force_config), "config_version": user.config_version}
    db.session.commit()
    return result


def download_config(client_key: str | None, ip: str | None) -> dict:
    """The configuration document; clears force-config and updates Downloaded."""
    device, user = authenticate(client_key, ip)
    now = utcnow()
    document = config_document(user, now)
    user.force_config = False
    user.downloaded_at = now
    record_event("client.config_download", actor=f"client:{user.login_id}"[:64], actor_type="client",
                 user=user, detail={"device": device.device_id, "config_version": user.config_version},
                 commit=False)
    db.session.commit()
    return document


def config_document(user: User, now: datetime) -> dict:
    """`cds-client-config/1`: everything the client needs, secrets decrypted."""
    p = user.profile
    try:
        secrets = {name: user.get_secret(name) or "" for name in
                   ("mcs_password", "pbx_sip_password", "teleworker_sip_password", "voicemail_pin")}
    except SecretUnreadable:
        raise ClientError(503, "config_unavailable", "The configuration cannot be read right now; "
                                                     "try again later or contact your administrator.") from None
    return {
        "schema": SCHEMA,
        "config_version": user.config_version,
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "user": {
            "login_id": user.login_id,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "number": user.number,
            "email": user.email,
        },
        "pbx_sip": {
            "username": user.pbx_sip_username,
            "password": secrets["pbx_sip_password"],
            "pbx_number": user.pbx_number,
            "host": p.pbx_sip_host,
            "port": p.pbx_sip_port,
            "transport": p.pbx_sip_transport,
        },
        "mbg_sip": {
            "username": user.mbg_sip_username,
            "password": secrets["teleworker_sip_password"],
            "host": p.mbg_sip_host,
            "port": p.mbg_sip_port,
            "transport": p.mbg_sip_transport,
        },
        "micollab_client_service": {
            "host": p.mcs_host,
            "port": p.mcs_port,
            "account": user.mcs_account,
            "password": secrets["mcs_password"],
        },
        "voicemail": {
            "number": p.voicemail_number,
            "pin": secrets["voicemail_pin"],
        },
        "profile": {
            "name": p.name,
            "client_types": p.client_type_list(),
        },
    }
