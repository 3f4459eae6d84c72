"""Client protocol v1 (docs/client-protocol.md).

The configuration document built here is the only place the four user secrets
ever leave the CDS decrypted. Activation consumes a token with one conditional
UPDATE, so of two concurrent activations exactly one wins.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import DateTime, String, bindparam, exists, func, insert, literal, null, select, update

from cds import errors
from cds.client.statements import Deferred, DriverStatement, GroupCommit, RefusedAfterWriting, driver_cursor
from cds.extensions import db
from cds.models import AuditEvent, ClientDevice, Deployment, DeploymentProfile, User, link_state, utcnow
from cds.security import SecretUnreadable, decrypt_secrets, new_token, token_hash
from cds.users.fields import FIELDS

log = logging.getLogger("cds.client")

SCHEMA = "cds-client-config/1"
# A device's last-seen time is written at most this often (status is polled).
SEEN_RESOLUTION = timedelta(minutes=1)


class ClientError(errors.CdsError):
    """A protocol error: HTTP status, machine-readable code (``error``), message for the
    app's user. The client blueprints render it in their own formats (JSON, plain text)."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.code = status, error

    @property
    def error(self) -> str:
        return self.code


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


batches = GroupCommit(refusals=(ClientError,))


# The user's fields the document carries, each at the place the field table gives it:
# (section, key, field).
_CONFIG_PLACES = tuple((*f.config.split("."), f.name) for f in FIELDS if f.config)

# The hot path: Core statements run on the driver's cursor (cds.client.statements).
_USER_COLUMNS = (
    User.id.label("user_id"), *(getattr(User, name) for _, _, name in _CONFIG_PLACES),
    User.secrets_enc,
    User.config_version, User.force_config, User.redeploy_required,
    DeploymentProfile.name.label("profile_name"), DeploymentProfile.client_types,
    DeploymentProfile.pbx_sip_host, DeploymentProfile.pbx_sip_port, DeploymentProfile.pbx_sip_transport,
    DeploymentProfile.mbg_sip_host, DeploymentProfile.mbg_sip_port, DeploymentProfile.mbg_sip_transport,
    DeploymentProfile.mcs_host, DeploymentProfile.mcs_port, DeploymentProfile.voicemail_number,
)
_BY_KEY = DriverStatement(
    select(ClientDevice.id.label("device_pk"), ClientDevice.device_id,
           ClientDevice.revoked_at.label("device_revoked_at"), ClientDevice.last_seen_at, ClientDevice.last_ip,
           *_USER_COLUMNS)
    .join_from(ClientDevice, User, ClientDevice.user_id == User.id)
    .join(DeploymentProfile, DeploymentProfile.id == User.profile_id)
    .where(ClientDevice.key_hash == bindparam("h")))
# A link is usable while none of these is set and it has not expired (models.link_state).
_UNUSED = (Deployment.used_at.is_(None), Deployment.revoked_at.is_(None), Deployment.superseded_at.is_(None),
           Deployment.expires_at > bindparam("now"))
CONSUME_LINK = DriverStatement(
    update(Deployment).where(Deployment.id == bindparam("d_id"), *_UNUSED)
    .values(used_at=bindparam("now"), used_device_id=bindparam("dev"), used_ip=bindparam("ip")))
NEW_DEVICE = DriverStatement(insert(ClientDevice).values(
    {c: bindparam(c) for c in ("user_id", "deployment_id", "key_hash", "device_id", "platform", "app_version",
                               "activated_at", "last_seen_at", "last_ip")}))
USER_DOWNLOADED = DriverStatement(
    update(User).where(User.id == bindparam("u_id")).values(downloaded_at=bindparam("now"), force_config=False,
                                                             updated_at=bindparam("now")))
USER_ACTIVATED = DriverStatement(
    update(User).where(User.id == bindparam("u_id"))
    .values(downloaded_at=bindparam("now"), force_config=False, redeploy_required=False,
            updated_at=bindparam("now")))
_DEVICE_SEEN = DriverStatement(
    update(ClientDevice).where(ClientDevice.id == bindparam("d_pk"))
    .values(last_seen_at=bindparam("now"), last_ip=bindparam("ip")))
_AUDIT = DriverStatement(insert(AuditEvent).values(
    {c: bindparam(c) for c in ("at", "actor", "actor_type", "action", "user_id", "login_id", "count", "detail",
                               "ip")}))


def audit_client_event(cur, action: str, r, now: datetime, ip: str | None, detail: dict) -> None:
    """The same audit row as ``record_event`` writes, inside the request's transaction
    (shared by every client kind's endpoints)."""
    _AUDIT.write(cur, {"at": now, "actor": f"client:{r.login_id}"[:64], "actor_type": "client",
                         "action": action, "user_id": r.user_id, "login_id": r.login_id, "count": None,
                         "detail": detail, "ip": ip})


def _usable(r, now: datetime):
    """The link's row, or 404 unknown / 410 used, expired, superseded or revoked. Unknown
    and unusable links cost the same: one indexed lookup."""
    if r is None:
        raise UNKNOWN_LINK
    state = link_state(r, now)
    if state != "valid":
        raise ClientError(410, *GONE_MESSAGES[state])
    return r


def _first_use_statement(lookup, require):
    """PostgreSQL: ``lookup`` (the link's row by token hash) and every write of the link's
    first use in one statement (data-modifying CTEs): consume the link if it is still
    usable (and ``require`` holds), then, only if it was consumed, add the device, set the
    user's Downloaded and clear Force Config, and write the audit row. It answers the
    looked-up row and whether this statement consumed the link.

    Of two simultaneous uses, the UPDATE of the one that comes second waits for the
    first's row lock and then finds the link used (PostgreSQL re-checks its conditions on
    the committed row), so it consumes nothing and writes nothing: exactly one wins, as
    with the separate statements below."""
    link = lookup.cte("link")
    now = bindparam("now", type_=DateTime)
    used = (update(Deployment)
            .where(Deployment.id == link.c.deployment_id, *_UNUSED, *(() if require is None else (require(link),)))
            .values(used_at=now, used_device_id=bindparam("dev"), used_ip=bindparam("ip"))
            .returning(Deployment.id, Deployment.user_id).cte("used"))

    def text(name):
        return bindparam(name, type_=String)
    device = insert(ClientDevice).from_select(
        ["user_id", "deployment_id", "key_hash", "device_id", "platform", "app_version", "activated_at",
         "last_seen_at", "last_ip"],
        select(used.c.user_id, used.c.id, text("key_hash"), text("device_id"), text("platform"),
               text("app_version"), now, now, text("ip"))).cte("device")
    activated = (update(User).where(User.id == used.c.user_id)
                 .values(downloaded_at=now, force_config=False, redeploy_required=False, updated_at=now)
                 .cte("activated"))
    # The same row as audit_client_event writes (and record_event everywhere else).
    audited = insert(AuditEvent).from_select(
        ["at", "actor", "actor_type", "action", "user_id", "login_id", "count", "detail", "ip"],
        select(now, func.substr(literal("client:", String) + link.c.login_id, 1, 64), literal("client", String),
               literal("client.activate", String), link.c.user_id, link.c.login_id, null(),
               func.json_build_object("deployment", used.c.id, "platform", text("platform"),
                                      "app_version", text("app_version"), "device", text("device_id")),
               text("ip"))
        .select_from(used.join(link, link.c.deployment_id == used.c.id))).cte("audited")
    return select(*link.c, exists(select(used.c.id)).label("consumed")).add_cte(device, activated, audited)


def download_statement(lookup, usable, seen: dict, seen_when, detail):
    """PostgreSQL: a device's download of its configuration in one statement (as
    ``_first_use_statement``): ``lookup`` (the device's row by client-key hash, with
    ``device_pk``, ``user_id``, ``login_id``), and, if ``usable(row)`` holds, the user's
    Downloaded set and Force Config cleared, the device's row updated with ``seen``
    (where ``seen_when(row)`` holds, if given) and the download audited with
    ``detail(row)`` (a JSON object). It answers the looked-up row."""
    found = lookup.cte("found")
    ok = select(*found.c).where(usable(found)).cte("ok")
    now = bindparam("now", type_=DateTime)
    downloaded = (update(User).where(User.id == ok.c.user_id)
                  .values(downloaded_at=now, force_config=False, updated_at=now).cte("downloaded"))
    contact = (update(ClientDevice)
               .where(ClientDevice.id == ok.c.device_pk, *(() if seen_when is None else (seen_when(ok),)))
               .values(**seen).cte("contact"))
    audited = insert(AuditEvent).from_select(
        ["at", "actor", "actor_type", "action", "user_id", "login_id", "count", "detail", "ip"],
        select(now, func.substr(literal("client:", String) + ok.c.login_id, 1, 64), literal("client", String),
               literal("client.config_download", String), ok.c.user_id, ok.c.login_id, null(), detail(ok),
               bindparam("ip", type_=String))).cte("audited")
    return select(*found.c).add_cte(downloaded, contact, audited)


def after_writing(build, *args):
    """``build(*args)`` in a unit whose statement has already written: a refusal it
    raises (an unreadable secret) rolls the writes back (RefusedAfterWriting)."""
    try:
        return build(*args)
    except ClientError as exc:
        raise RefusedAfterWriting(exc) from None


class LinkUse:
    """How a client kind looks up a deployment link by its token hash (``lookup``: a
    SELECT of the link's columns that ``link_state`` reads, ``deployment_id``,
    ``user_id``, ``login_id`` and whatever its document needs), with ``require``, a
    condition on that row without which the link is not consumed (checked again in
    Python by the ``check`` given to ``use_link``)."""

    def __init__(self, lookup, require=None):
        self.lookup = DriverStatement(lookup)
        self.first_use = DriverStatement(_first_use_statement(lookup, require))


def use_link(cur, use: LinkUse, token: str, now: datetime, ip: str | None, device: dict, key: str, check, build):
    """A group-commit unit that uses a deployment link once: 404 unknown, 410 used (also
    for the loser of two simultaneous uses), expired, superseded or revoked; otherwise the
    link is consumed, the device (``device``: id, platform, app_version; its client key
    ``key``) added, the user's Downloaded set and Force Config cleared, and the use
    audited. ``check(r)`` raises for a row this client kind refuses, ``build(r)`` makes
    the document (and may raise, e.g. an unreadable secret): nothing is written then.
    Returns (row, document), or on PostgreSQL a ``Deferred`` of it."""
    values = {"h": token_hash(token), "now": now, "ip": ip, "dev": device["id"] or None,
              "key_hash": token_hash(key), "device_id": device["id"], "platform": device["platform"],
              "app_version": device["app_version"]}
    if cur.dialect.name == "postgresql":
        # One statement: the batch sends every unit's before it waits for any answer.
        answer = use.first_use.send(cur, values)

        def finish():
            r = _usable(answer(), now)
            check(r)
            if not r.consumed:
                raise ClientError(410, *GONE_MESSAGES["used"])
            return r, after_writing(build, r)
        return Deferred(finish)
    # SQLite has no data-modifying CTEs; its one writer at a time makes the read, the
    # check and the conditional UPDATE one step.
    r = _usable(use.lookup.first(cur, values), now)
    check(r)
    document = build(r)  # before anything is written
    # Single use: only the request whose UPDATE changes the row goes on.
    if CONSUME_LINK.execute(cur, {"d_id": r.deployment_id, "now": now, "dev": values["dev"], "ip": ip}) != 1:
        raise ClientError(410, *GONE_MESSAGES["used"])
    NEW_DEVICE.write(cur, {
        "user_id": r.user_id, "deployment_id": r.deployment_id, "key_hash": values["key_hash"],
        "device_id": device["id"], "platform": device["platform"], "app_version": device["app_version"],
        "activated_at": now, "last_seen_at": now, "last_ip": ip})
    USER_ACTIVATED.write(cur, {"u_id": r.user_id, "now": now})
    audit_client_event(cur, "client.activate", r, now, ip, {
        "deployment": r.deployment_id, "platform": device["platform"], "app_version": device["app_version"],
        "device": device["id"]})
    return r, document


_FIRST_USE = LinkUse(
    select(Deployment.id.label("deployment_id"), Deployment.used_at, Deployment.revoked_at,
           Deployment.superseded_at, Deployment.expires_at, *_USER_COLUMNS)
    .join_from(Deployment, User, Deployment.user_id == User.id)
    .join(DeploymentProfile, DeploymentProfile.id == User.profile_id)
    .where(Deployment.token_hash == bindparam("h")))


def activate(token, device, ip: str | None) -> tuple[dict, str]:
    """Consume a deployment token: returns (configuration document, client_key)."""
    if not isinstance(token, str) or not token or len(token) > 128:
        raise ClientError(400, "bad_request", '"token" (the deployment token) is required.')
    dev = _clean_device(device)
    now = utcnow()
    client_key = new_token()

    def consume(cur):
        return use_link(cur, _FIRST_USE, token, now, ip, dev, client_key, check=lambda r: None,
                        build=lambda r: _document(r, now))

    r, document = batches.run(consume)
    log.info("user %s activated a %s client (deployment %s)", r.user_id, dev["platform"] or "?", r.deployment_id)
    return document, client_key


def _check_key(client_key: str | None) -> None:
    if not client_key or len(client_key) > 128:
        raise ClientError(401, "unauthorized", "Send the client key as: Authorization: Bearer <client_key>.")


def _working(r):
    """The device's row; 401 redeploy_required if its key no longer works."""
    # Unknown (the user was deleted), revoked (ID change, lost phone): the app must be redeployed.
    if r is None or r.device_revoked_at is not None or r.redeploy_required:
        raise REDEPLOY
    return r


def _authenticate(cur, client_key: str | None):
    """The device and user behind a client key; 401 redeploy_required if it no longer works."""
    _check_key(client_key)
    return _working(_BY_KEY.first(cur, {"h": token_hash(client_key)}))


def _seen(cur, r, ip: str | None, now: datetime) -> None:
    """Record the device's last contact, at most once a minute (status is polled)."""
    if r.last_seen_at is None or now - r.last_seen_at >= SEEN_RESOLUTION or r.last_ip != ip:
        _DEVICE_SEEN.write(cur, {"d_pk": r.device_pk, "now": now, "ip": ip})


def status(client_key: str | None, ip: str | None) -> dict:
    _check_key(client_key)
    now = utcnow()

    def check(cur):
        # Sent without waiting where the driver allows it: a batch of status checks
        # waits for the server once (see Deferred).
        answer = _BY_KEY.send(cur, {"h": token_hash(client_key)})

        def finish():
            r = _working(answer())
            _seen(cur, r, ip, now)
            return {"force_config": bool(r.force_config), "config_version": r.config_version}
        return finish() if cur.pipeline is None else Deferred(finish)

    try:
        return batches.run(check)
    except ClientError:
        raise
    except Exception as exc:
        if not _is_storage_error(exc):
            raise
    # The last-contact bookkeeping could not be written (full disk, read-only database):
    # the status check is a read, and is answered from a read alone.
    log.warning("client status: last contact not recorded (the database cannot be written)")
    with driver_cursor() as (cur, connection):
        r = _authenticate(cur, client_key)
        connection.rollback()
    return {"force_config": bool(r.force_config), "config_version": r.config_version}


def _is_storage_error(exc: BaseException) -> bool:
    dbapi = db.engine.dialect.dbapi
    return isinstance(exc, (dbapi.OperationalError, dbapi.InterfaceError))


_DOWNLOAD = DriverStatement(download_statement(
    _BY_KEY.stmt, usable=lambda d: d.c.device_revoked_at.is_(None) & d.c.redeploy_required.is_(False),
    seen={"last_seen_at": bindparam("now", type_=DateTime), "last_ip": bindparam("ip", type_=String)},
    # The last contact, at most once a minute (as _seen).
    seen_when=lambda d: d.c.last_seen_at.is_(None) | (d.c.last_seen_at <= bindparam("seen_before", type_=DateTime))
    | d.c.last_ip.is_distinct_from(bindparam("ip", type_=String)),
    detail=lambda d: func.json_build_object("device", d.c.device_id, "config_version", d.c.config_version)))


def download_config(client_key: str | None, ip: str | None) -> dict:
    """The configuration document; clears force-config and updates Downloaded."""
    _check_key(client_key)
    now = utcnow()

    def download(cur):
        if cur.dialect.name == "postgresql":
            # One statement: the batch sends every unit's before it waits for any answer.
            answer = _DOWNLOAD.send(cur, {"h": token_hash(client_key), "now": now, "ip": ip,
                                          "seen_before": now - SEEN_RESOLUTION})
            return Deferred(lambda: after_writing(_document, _working(answer()), now))
        r = _authenticate(cur, client_key)
        document = _document(r, now)
        USER_DOWNLOADED.write(cur, {"u_id": r.user_id, "now": now})
        _seen(cur, r, ip, now)
        audit_client_event(cur, "client.config_download", r, now, ip,
               {"device": r.device_id, "config_version": r.config_version})
        return document

    return batches.run(download)


def _document(r, now: datetime) -> dict:
    """`cds-client-config/1`: everything the client needs, secrets decrypted. The only
    place the four secrets ever leave the CDS."""
    try:
        secrets = decrypt_secrets(r.secrets_enc)
    except SecretUnreadable:
        raise ClientError(503, "config_unavailable", "The configuration cannot be read right now; "
                                                     "try again later or contact your administrator.") from None
    doc = {
        "schema": SCHEMA,
        "config_version": r.config_version,
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "user": {},
        "pbx_sip": {
            "password": secrets.get("pbx_sip_password", ""),
            "host": r.pbx_sip_host,
            "port": r.pbx_sip_port,
            "transport": r.pbx_sip_transport,
        },
        "mbg_sip": {
            "password": secrets.get("teleworker_sip_password", ""),
            "host": r.mbg_sip_host,
            "port": r.mbg_sip_port,
            "transport": r.mbg_sip_transport,
        },
        "micollab_client_service": {
            "host": r.mcs_host,
            "port": r.mcs_port,
            "password": secrets.get("mcs_password", ""),
        },
        "voicemail": {
            "number": r.voicemail_number,
            "pin": secrets.get("voicemail_pin", ""),
        },
        "profile": {
            "name": r.profile_name,
            "client_types": [c for c in (r.client_types or "").split(",") if c],
        },
    }
    # The user's fields, from the field table: a field added there reaches the client.
    for section, key, name in _CONFIG_PLACES:
        doc[section][key] = getattr(r, name)
    return doc
