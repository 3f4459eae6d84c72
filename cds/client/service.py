"""Client protocol v1 (PRODUCT.md §5, docs/client-protocol.md).

The configuration document built here is the only place the four user secrets
ever leave the CDS decrypted. Activation consumes a token with one conditional
UPDATE, so of two concurrent activations exactly one wins.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from types import SimpleNamespace

from sqlalchemy import bindparam, insert, select, update

from cds.extensions import db
from cds.models import AuditEvent, ClientDevice, Deployment, DeploymentProfile, User, link_state, utcnow
from cds.security import SecretUnreadable, decrypt, new_token, token_hash

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


class _SqliteWriteTurn:
    """On SQLite, writers of this process take turns on a lock: a waiting thread is
    woken the moment the previous commit ends, where SQLite's own busy handler would
    sleep for milliseconds. PostgreSQL needs no such thing (row locks)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sqlite: bool | None = None

    def __enter__(self):
        if self._sqlite is None:
            self._sqlite = db.engine.dialect.name == "sqlite"
        if self._sqlite:
            self._lock.acquire()
        return self

    def __exit__(self, *exc):
        if self._sqlite:
            self._lock.release()
        return False


write_turn = _SqliteWriteTurn()


# The hot path uses prepared Core statements: activation and status checks come in
# bursts from thousands of devices, and the ORM's per-object bookkeeping would cost
# several times the work itself.
_USER_COLUMNS = (
    User.id.label("user_id"), User.login_id, User.first_name, User.last_name, User.number, User.email,
    User.pbx_number, User.pbx_sip_username, User.mbg_sip_username, User.mcs_account,
    User.mcs_password_enc, User.pbx_sip_password_enc, User.teleworker_sip_password_enc, User.voicemail_pin_enc,
    User.config_version, User.force_config, User.redeploy_required,
    DeploymentProfile.name.label("profile_name"), DeploymentProfile.client_types,
    DeploymentProfile.pbx_sip_host, DeploymentProfile.pbx_sip_port, DeploymentProfile.pbx_sip_transport,
    DeploymentProfile.mbg_sip_host, DeploymentProfile.mbg_sip_port, DeploymentProfile.mbg_sip_transport,
    DeploymentProfile.mcs_host, DeploymentProfile.mcs_port, DeploymentProfile.voicemail_number,
)
_BY_TOKEN = (select(Deployment.id.label("deployment_id"), Deployment.used_at, Deployment.revoked_at,
                    Deployment.superseded_at, Deployment.expires_at, *_USER_COLUMNS)
             .join_from(Deployment, User, Deployment.user_id == User.id)
             .join(DeploymentProfile, DeploymentProfile.id == User.profile_id)
             .where(Deployment.token_hash == bindparam("h")))
_BY_KEY = (select(ClientDevice.id.label("device_pk"), ClientDevice.device_id, ClientDevice.revoked_at.label(
                  "device_revoked_at"), ClientDevice.last_seen_at, ClientDevice.last_ip, *_USER_COLUMNS)
           .join_from(ClientDevice, User, ClientDevice.user_id == User.id)
           .join(DeploymentProfile, DeploymentProfile.id == User.profile_id)
           .where(ClientDevice.key_hash == bindparam("h")))
_CONSUME = (update(Deployment)
            .where(Deployment.id == bindparam("d_id"), Deployment.used_at.is_(None),
                   Deployment.revoked_at.is_(None), Deployment.superseded_at.is_(None),
                   Deployment.expires_at > bindparam("now"))
            .values(used_at=bindparam("now"), used_device_id=bindparam("dev"), used_ip=bindparam("ip")))
_NEW_DEVICE = insert(ClientDevice)
_USER_DOWNLOADED = (update(User).where(User.id == bindparam("u_id"))
                    .values(downloaded_at=bindparam("now"), force_config=False))
_USER_ACTIVATED = (update(User).where(User.id == bindparam("u_id"))
                   .values(downloaded_at=bindparam("now"), force_config=False, redeploy_required=False))
_DEVICE_SEEN = (update(ClientDevice).where(ClientDevice.id == bindparam("d_pk"))
                .values(last_seen_at=bindparam("now"), last_ip=bindparam("ip")))
_AUDIT = insert(AuditEvent)


def _audit(action: str, r, now: datetime, ip: str | None, detail: dict) -> None:
    """The same audit row as ``record_event`` writes, inside this request's transaction."""
    db.session.connection().execute(_AUDIT, {"at": now, "actor": f"client:{r.login_id}"[:64], "actor_type": "client",
                                "action": action, "user_id": r.user_id, "login_id": r.login_id,
                                "count": None, "detail": detail, "ip": ip})


def activate(token, device, ip: str | None) -> tuple[dict, str]:
    """Consume a deployment token: returns (configuration document, client_key)."""
    if not isinstance(token, str) or not token or len(token) > 128:
        raise ClientError(400, "bad_request", '"token" (the deployment token) is required.')
    dev = _clean_device(device)
    now = utcnow()
    # Unknown and unusable links cost the same: one indexed lookup.
    r = db.session.connection().execute(_BY_TOKEN, {"h": token_hash(token)}).first()
    if r is None:
        raise UNKNOWN_LINK
    state = link_state(r, now)
    if state != "valid":
        raise ClientError(410, *GONE_MESSAGES[state])
    document = _document(r, now)
    client_key = new_token()
    with write_turn:
        # Single use: only the request whose UPDATE changes the row wins.
        conn = db.session.connection()
        won = conn.execute(_CONSUME, {"d_id": r.deployment_id, "now": now, "dev": dev["id"] or None,
                                            "ip": ip}).rowcount
        if won != 1:
            db.session.rollback()
            raise ClientError(410, *GONE_MESSAGES["used"])
        conn.execute(_NEW_DEVICE, {
            "user_id": r.user_id, "deployment_id": r.deployment_id, "key_hash": token_hash(client_key),
            "device_id": dev["id"], "platform": dev["platform"], "app_version": dev["app_version"],
            "activated_at": now, "last_seen_at": now, "last_ip": ip})
        conn.execute(_USER_ACTIVATED, {"u_id": r.user_id, "now": now})
        _audit("client.activate", r, now, ip, {"deployment": r.deployment_id, "platform": dev["platform"],
                                               "app_version": dev["app_version"], "device": dev["id"]})
        db.session.commit()
    log.info("user %s activated a %s client (deployment %s)", r.user_id, dev["platform"] or "?", r.deployment_id)
    return document, client_key


def authenticate(client_key: str | None, ip: str | None, now: datetime):
    """The device and user behind a client key; 401 redeploy_required if it no longer works."""
    if not client_key or len(client_key) > 128:
        raise ClientError(401, "unauthorized", "Send the client key as: Authorization: Bearer <client_key>.")
    r = db.session.connection().execute(_BY_KEY, {"h": token_hash(client_key)}).first()
    # Unknown (the user was deleted), revoked (ID change, lost phone): the app must be redeployed.
    if r is None or r.device_revoked_at is not None or r.redeploy_required:
        raise REDEPLOY
    return r


def _seen(r, ip: str | None, now: datetime) -> bool:
    """Record the device's last contact, at most once a minute (status is polled)."""
    if r.last_seen_at is None or now - r.last_seen_at >= SEEN_RESOLUTION or r.last_ip != ip:
        db.session.connection().execute(_DEVICE_SEEN, {"d_pk": r.device_pk, "now": now, "ip": ip})
        return True
    return False


def status(client_key: str | None, ip: str | None) -> dict:
    now = utcnow()
    r = authenticate(client_key, ip, now)
    result = {"force_config": bool(r.force_config), "config_version": r.config_version}
    if r.last_seen_at is None or now - r.last_seen_at >= SEEN_RESOLUTION or r.last_ip != ip:
        with write_turn:
            _seen(r, ip, now)
            db.session.commit()
    return result


def download_config(client_key: str | None, ip: str | None) -> dict:
    """The configuration document; clears force-config and updates Downloaded."""
    now = utcnow()
    r = authenticate(client_key, ip, now)
    document = _document(r, now)
    with write_turn:
        db.session.connection().execute(_USER_DOWNLOADED, {"u_id": r.user_id, "now": now})
        _seen(r, ip, now)
        _audit("client.config_download", r, now, ip, {"device": r.device_id, "config_version": r.config_version})
        db.session.commit()
    return document


def config_document(user: User, now: datetime) -> dict:
    """`cds-client-config/1` of a user (for callers holding the ORM object)."""
    p = user.profile
    row = SimpleNamespace(
        login_id=user.login_id, first_name=user.first_name, last_name=user.last_name, number=user.number,
        email=user.email, pbx_number=user.pbx_number, pbx_sip_username=user.pbx_sip_username,
        mbg_sip_username=user.mbg_sip_username, mcs_account=user.mcs_account,
        mcs_password_enc=user.mcs_password_enc, pbx_sip_password_enc=user.pbx_sip_password_enc,
        teleworker_sip_password_enc=user.teleworker_sip_password_enc, voicemail_pin_enc=user.voicemail_pin_enc,
        config_version=user.config_version, profile_name=p.name, client_types=p.client_types,
        pbx_sip_host=p.pbx_sip_host, pbx_sip_port=p.pbx_sip_port, pbx_sip_transport=p.pbx_sip_transport,
        mbg_sip_host=p.mbg_sip_host, mbg_sip_port=p.mbg_sip_port, mbg_sip_transport=p.mbg_sip_transport,
        mcs_host=p.mcs_host, mcs_port=p.mcs_port, voicemail_number=p.voicemail_number)
    return _document(row, now)


def _document(r, now: datetime) -> dict:
    """`cds-client-config/1`: everything the client needs, secrets decrypted. The only
    place the four secrets ever leave the CDS."""
    try:
        secrets = {name: decrypt(getattr(r, f"{name}_enc")) or "" for name in
                   ("mcs_password", "pbx_sip_password", "teleworker_sip_password", "voicemail_pin")}
    except SecretUnreadable:
        raise ClientError(503, "config_unavailable", "The configuration cannot be read right now; "
                                                     "try again later or contact your administrator.") from None
    return {
        "schema": SCHEMA,
        "config_version": r.config_version,
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "user": {
            "login_id": r.login_id,
            "first_name": r.first_name,
            "last_name": r.last_name,
            "number": r.number,
            "email": r.email,
        },
        "pbx_sip": {
            "username": r.pbx_sip_username,
            "password": secrets["pbx_sip_password"],
            "pbx_number": r.pbx_number,
            "host": r.pbx_sip_host,
            "port": r.pbx_sip_port,
            "transport": r.pbx_sip_transport,
        },
        "mbg_sip": {
            "username": r.mbg_sip_username,
            "password": secrets["teleworker_sip_password"],
            "host": r.mbg_sip_host,
            "port": r.mbg_sip_port,
            "transport": r.mbg_sip_transport,
        },
        "micollab_client_service": {
            "host": r.mcs_host,
            "port": r.mcs_port,
            "account": r.mcs_account,
            "password": secrets["mcs_password"],
        },
        "voicemail": {
            "number": r.voicemail_number,
            "pin": secrets["voicemail_pin"],
        },
        "profile": {
            "name": r.profile_name,
            "client_types": [c for c in (r.client_types or "").split(",") if c],
        },
    }
