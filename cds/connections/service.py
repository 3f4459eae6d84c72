"""Connections to the sources of users, the records they report, and Sync data.

A connection is authorized once by the primary administrator (web services hand
out a token that expires; LDAP checks the bind). ``refresh_source_records``
reads every user the source holds into SourceRecord — the Import Users view —
and refuses a source that fails or suddenly reports nobody, changing nothing.
The "sync" job compares imported users with those records; like every bulk
action it is started through ``cds.jobs.actions.start_action`` (the Users tab's
Sync data button directly; Sync now, the scheduler, the CLI and the API through
``start_sync``).
"""
from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import bindparam, delete, func, insert, or_, select, update

from cds import errors
from cds.audit.service import record_event
from cds.extensions import db
from cds.jobs.actions import start_action
from cds.jobs.service import Outcome, action
from cds.models import (CONNECTION_KINDS, SOURCE_CONNECTION, SOURCE_CSV, SOURCE_MANUAL, Connection, Job,
                        SourceRecord, User, login_key, utcnow)
from cds.scheduler import tick_task
from cds.security import encrypt
from cds.sources import (FIELD_SIZES, HTTP_KINDS, LDAP_KIND, LIMIT_DEFAULTS, SourceAuthError, SourceError,
                         SourceUnreachable, limit_problems)
from cds.sources.kinds import authorize, fetch_records, provided_fields
from cds.users.changes import BY_SOURCE, plan_change
from cds.users.fields import FIELD_LABELS
from cds.users.login_ids import login_id_owner
from cds.users.service import apply_change

log = logging.getLogger("cds.connections")

RECORD_FIELDS = tuple(FIELD_SIZES)
DEFAULT_INTERVAL = 60
MIN_INTERVAL, MAX_INTERVAL = 5, 7 * 24 * 60


class ConnectionProblem(errors.Invalid):
    """A connection cannot be saved or changed as asked. ``errors`` maps form fields to messages."""


class ConnectionNotFound(errors.NotFound, ConnectionProblem):
    pass


# --- reading and validating settings --------------------------------------------------

@dataclass
class ConnectionSettings:
    """What the create/edit forms and the API hand to this service."""
    name: str
    kind: str
    url: str
    username: str = ""
    sync_interval_minutes: int = DEFAULT_INTERVAL
    enabled: bool = True
    options: dict | None = None


def list_connections() -> list[Connection]:
    return list(db.session.scalars(select(Connection).order_by(Connection.name)))


def get_connection(connection_id: int) -> Connection:
    conn = db.session.get(Connection, connection_id)
    if conn is None:
        raise ConnectionNotFound(f"Connection {connection_id} does not exist (it may have been deleted).")
    return conn


def find_connection(name: str) -> Connection | None:
    # In Python, as find_profile_by_name: SQLite's lower() folds ASCII only.
    wanted = name.strip().casefold()
    return next((c for c in db.session.scalars(select(Connection))
                 if c.name.strip().casefold() == wanted), None)


def host_of(conn: Connection) -> str:
    return urlsplit(conn.url).netloc or conn.url


def imported_counts() -> dict[int, int]:
    rows = db.session.execute(select(User.connection_id, func.count()).where(
        User.connection_id.is_not(None)).group_by(User.connection_id))
    return {cid: n for cid, n in rows}


def record_counts() -> dict[int, int]:
    rows = db.session.execute(select(SourceRecord.connection_id, func.count())
                              .group_by(SourceRecord.connection_id))
    return {cid: n for cid, n in rows}


def _validate(settings: ConnectionSettings, existing: Connection | None) -> dict[str, str]:
    errors = {}
    name = settings.name.strip()
    if not name:
        errors["name"] = "A name is required."
    elif len(name) > 80:
        errors["name"] = "The name is longer than 80 characters."
    else:
        other = find_connection(name)
        if other is not None and (existing is None or other.id != existing.id):
            errors["name"] = f"A connection named {other.name!r} already exists."
    if settings.kind not in CONNECTION_KINDS:
        errors["kind"] = "Choose the kind of source."
    url = settings.url.strip()
    parts = urlsplit(url)
    if settings.kind == LDAP_KIND:
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            errors["url"] = "Enter ldaps://host[:port] or ldap://host[:port] (ldap:// uses StartTLS)."
    elif settings.kind in HTTP_KINDS:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            errors["url"] = "Enter the web service address, e.g. https://mbg.example.com:4443."
    if len(url) > 512:
        errors["url"] = "The URL is longer than 512 characters."
    try:
        _ = parts.port  # urlsplit checks the port only when it is read
    except ValueError:
        errors["url"] = "The port in the URL is not a number."
    if not MIN_INTERVAL <= settings.sync_interval_minutes <= MAX_INTERVAL:
        errors["sync_interval_minutes"] = (f"The sync interval must be {MIN_INTERVAL} to "
                                           f"{MAX_INTERVAL} minutes.")
    options = settings.options or {}
    if settings.kind == LDAP_KIND and not (options.get("base_dn") or "").strip():
        errors["base_dn"] = "The base DN is required (e.g. ou=people,dc=example,dc=com)."
    limits = limit_problems(options)
    for name, problem in limits.items():
        errors[name] = f"{name}: {problem}."
    if not limits:
        # Stored as whole numbers; an empty one means the default.
        for name in LIMIT_DEFAULTS:
            if options.get(name) in (None, ""):
                options.pop(name, None)
            else:
                options[name] = int(options[name])
    pem = (options.get("ca_cert_pem") or "").strip()
    if pem:
        try:
            ssl.create_default_context(cadata=pem)
        except (ssl.SSLError, ValueError):
            errors["ca_cert_pem"] = "This is not a PEM certificate (-----BEGIN CERTIFICATE-----…)."
    return errors


def _audit(action_name: str, conn: Connection, actor: str | None, **detail) -> None:
    record_event(action_name, actor=actor, commit=False,
                 detail={"connection": conn.name, "kind": conn.kind, **detail})


# --- create, edit, authorize, delete ------------------------------------------------

def create_connection(settings: ConnectionSettings, password: str, *, actor: str | None = None
                      ) -> Connection:
    """Check the settings, authorize against the source, then save. Nothing is saved
    when the source refuses: the administrator fixes the form and tries again."""
    errors = _validate(settings, None)
    if not password:
        errors["password"] = "The password is required."
    if settings.kind in HTTP_KINDS and not settings.username.strip():
        errors["username"] = "The user name is required."
    if errors:
        raise ConnectionProblem("Check the highlighted fields.", errors)
    url = settings.url.strip().rstrip("/")
    options = settings.options or {}
    grant, unverified = None, None
    try:
        grant = authorize(settings.kind, url, settings.username.strip(), password, options)
    except SourceAuthError as exc:
        raise ConnectionProblem(f"The source did not accept the connection: {exc}",
                                {"password": str(exc)}) from None
    except SourceUnreachable as exc:
        # Down or not answering now: saved anyway, marked not verified; Test authorizes it
        # once the source answers. A source that answers and refuses (a wrong certificate,
        # base DN or URL) is a setting to correct, and refused as such.
        unverified = str(exc)
    except SourceError as exc:
        raise ConnectionProblem(f"The source did not accept the connection: {exc}",
                                {"url": str(exc)}) from None
    now = utcnow()
    conn = Connection(name=settings.name.strip(), kind=settings.kind, url=url,
                      username=settings.username.strip(), options=options,
                      sync_interval_minutes=settings.sync_interval_minutes,
                      enabled=settings.enabled, verified=grant is not None,
                      verified_at=now if grant else None,
                      token_enc=encrypt(grant.token) if grant else None,
                      token_expires_at=grant.expires_at if grant else None,
                      last_sync_ok=False if unverified else None,
                      last_sync_message=f"Not verified: {unverified}"[:2000] if unverified else None,
                      next_sync_at=now + timedelta(minutes=settings.sync_interval_minutes))
    conn.set_password(password)
    db.session.add(conn)
    db.session.flush()
    _audit("connection.create", conn, actor, host=host_of(conn), verified=grant is not None)
    db.session.commit()
    return conn


def update_connection(conn: Connection, settings: ConnectionSettings, *,
                      actor: str | None = None) -> Connection:
    """Name, interval, enabled and the kind's options. The URL and credentials change
    only through ``reauthorize`` (primary administrator)."""
    settings.kind = conn.kind
    settings.url = conn.url
    errors = _validate(settings, conn)
    if errors:
        raise ConnectionProblem("Check the highlighted fields.", errors)
    conn.name = settings.name.strip()
    if conn.sync_interval_minutes != settings.sync_interval_minutes or \
            (settings.enabled and not conn.enabled):
        conn.next_sync_at = utcnow() + timedelta(minutes=settings.sync_interval_minutes)
    conn.sync_interval_minutes = settings.sync_interval_minutes
    conn.enabled = settings.enabled
    conn.options = dict(settings.options or {})
    _audit("connection.update", conn, actor)
    db.session.commit()
    return conn


def reauthorize(conn: Connection, url: str, username: str, password: str | None, *,
                actor: str | None = None) -> Connection:
    """Authorize again (new token, or new URL / credentials). An empty password reuses the
    stored one. The connection is changed only if the source accepts."""
    settings = ConnectionSettings(name=conn.name, kind=conn.kind, url=url, username=username,
                                  sync_interval_minutes=conn.sync_interval_minutes,
                                  options=conn.options)
    errors = _validate(settings, conn)
    password = password or conn.get_password() or ""
    if not password:
        errors["password"] = "The password is required."
    if errors:
        raise ConnectionProblem("Check the highlighted fields.", errors)
    url = url.strip().rstrip("/")
    try:
        grant = authorize(conn.kind, url, username.strip(), password, conn.options or {})
    except SourceError as exc:
        raise ConnectionProblem(f"The source did not accept the authorization: {exc}",
                                {"password" if isinstance(exc, SourceAuthError) else "url": str(exc)}
                                ) from None
    conn.url = url
    conn.username = username.strip()
    conn.set_password(password)
    conn.token_enc = encrypt(grant.token)
    conn.token_expires_at = grant.expires_at
    conn.verified, conn.verified_at = True, utcnow()
    _audit("connection.authorize", conn, actor, host=host_of(conn))
    db.session.commit()
    return conn


def delete_connection(conn: Connection, *, actor: str | None = None) -> int:
    """Delete the connection and its records. Users imported from it stay, as manual
    users (their fields become editable). Returns how many users that concerns."""
    released = db.session.execute(
        update(User).where(User.connection_id == conn.id)
        .values(source=SOURCE_MANUAL, connection_id=None, source_key=None, not_in_source=False)
    ).rowcount
    db.session.execute(delete(SourceRecord).where(SourceRecord.connection_id == conn.id))
    _audit("connection.delete", conn, actor, users_released=released)
    db.session.delete(conn)
    db.session.commit()
    return released


# --- reading the source into SourceRecord ---------------------------------------------

@dataclass
class RefreshResult:
    total: int
    added: int
    changed: int
    removed: int

    def describe(self) -> str:
        return (f"Read {self.total:,} users ({self.added:,} new, {self.changed:,} changed, "
                f"{self.removed:,} gone).")


def _record_failure(conn_id: int, message: str) -> None:
    db.session.rollback()
    db.session.execute(update(Connection).where(Connection.id == conn_id).values(
        last_sync_at=utcnow(), last_sync_ok=False, last_sync_message=message[:2000]))
    db.session.commit()


def refresh_source_records(conn: Connection) -> RefreshResult:
    """Read the source once and make SourceRecord match it, in one transaction.

    A source that errors, times out, returns garbage, or returns nobody although
    it reported users before changes nothing: the error is recorded on the
    connection and raised as SourceError."""
    conn_id, name = conn.id, conn.name
    try:
        records = fetch_records(conn)
    except SourceError as exc:
        log.warning("connection %s: reading the source failed: %s", name, exc)
        _record_failure(conn_id, str(exc))
        raise
    existing = {key: (rid, tuple(rest)) for rid, key, *rest in db.session.execute(
        select(SourceRecord.id, SourceRecord.source_key,
               *(getattr(SourceRecord, f) for f in RECORD_FIELDS))
        .where(SourceRecord.connection_id == conn_id))}
    if not records:
        had = max(len(existing), db.session.scalar(
            select(func.count(User.id)).where(User.connection_id == conn_id)) or 0)
        if had:
            message = (f"The source returned no users although it had {had:,}; nothing was "
                       f"changed. If the source really is empty now, delete the connection.")
            log.warning("connection %s: %s", name, message)
            _record_failure(conn_id, message)
            raise SourceError(message)
    now = utcnow()
    inserts, updates = [], []
    seen = set()
    for rec in records:
        key = rec["source_key"]
        seen.add(key)
        values = tuple(rec.get(f, "") for f in RECORD_FIELDS)
        old = existing.get(key)
        if old is None:
            inserts.append({"connection_id": conn_id, "source_key": key, "fetched_at": now,
                            **dict(zip(RECORD_FIELDS, values))})
        elif old[1] != values:
            updates.append({"rid": old[0], "fetched_at": now, **dict(zip(RECORD_FIELDS, values))})
    gone = [rid for key, (rid, _) in existing.items() if key not in seen]
    table = SourceRecord.__table__
    for start in range(0, len(inserts), 5000):
        db.session.execute(insert(table), inserts[start:start + 5000])
    if updates:
        stmt = update(table).where(table.c.id == bindparam("rid")).values(
            fetched_at=bindparam("fetched_at"), **{f: bindparam(f) for f in RECORD_FIELDS})
        db.session.execute(stmt, updates)
    for start in range(0, len(gone), 5000):
        db.session.execute(delete(table).where(table.c.id.in_(gone[start:start + 5000])))
    result = RefreshResult(len(records), len(inserts), len(updates), len(gone))
    db.session.execute(update(Connection).where(Connection.id == conn_id).values(
        last_sync_at=now, last_sync_ok=True, last_sync_message=result.describe(),
        verified=True, verified_at=now))
    db.session.commit()
    log.info("connection %s: %s", name, result.describe())
    return result


def verify_connection(conn: Connection) -> RefreshResult:
    """The Test button: read the source now (which also refreshes the Import Users view).
    A connection saved while its source was unreachable is authorized first, with the
    credentials it was saved with."""
    if not conn.verified and conn.token_enc is None:
        try:
            grant = authorize(conn.kind, conn.url, conn.username, conn.get_password() or "",
                              conn.options or {})
        except SourceError as exc:
            _record_failure(conn.id, f"Not verified: {exc}")
            raise
        conn.token_enc = encrypt(grant.token)
        conn.token_expires_at = grant.expires_at
        db.session.commit()
    return refresh_source_records(conn)


# --- Sync data ---------------------------------------------------------------------

def sync_selection(selection: dict, *, actor: str | None = None, wait: bool = False) -> Job:
    """Sync the selected users (ids or "all matching")."""
    return start_action("sync", selection, actor=actor or "system", inline=wait)


def start_sync(conn: Connection, *, actor: str | None = None, wait: bool = False
               ) -> tuple[Job | None, RefreshResult | None]:
    """Sync now / the periodic sync of one connection. With users imported from it, a
    sync job (which reads the source once); otherwise only the records are refreshed."""
    has_users = db.session.scalar(select(User.id).where(User.connection_id == conn.id).limit(1))
    if has_users:
        # wait: the CLI runs it here, whatever JOB_EXECUTION says.
        job = start_action("sync", {"filter": {"source": f"c{conn.id}"}}, actor=actor or "system",
                           inline=wait)
        return job, None
    return None, refresh_source_records(conn)


# Per running sync job: connection id -> None (records fresh) or the error message.
# Each connection is read once per job, at the first batch that needs it.
_job_sources: dict[int, dict[int, str | None]] = {}
_job_sources_lock = threading.Lock()

SUMMARY_KEYS = ("updated", "unchanged", "not_in_source", "failed", "nothing_to_sync")


def _source_state(job: Job, conn: Connection) -> str | None:
    with _job_sources_lock:
        states = _job_sources.setdefault(job.id, {})
        if conn.id in states:
            return states[conn.id]
    # "Enabled" governs the periodic sync only: an explicit Sync data still reads the source.
    try:
        refresh_source_records(conn)
        state = None
    except SourceError as exc:
        state = f"{conn.name}: {exc}"
    with _job_sources_lock:
        _job_sources.setdefault(job.id, {})[conn.id] = state
    return state


def _finish_sync(job: Job) -> None:
    with _job_sources_lock:
        states = _job_sources.pop(job.id, {})
    summary = {k: int((job.summary or {}).get(k, 0)) for k in SUMMARY_KEYS}
    parts = [f"{summary['updated']} updated", f"{summary['unchanged']} unchanged",
             f"{summary['not_in_source']} not in source", f"{summary['failed']} failed"]
    if summary["nothing_to_sync"]:
        parts.append(f"{summary['nothing_to_sync']} manual or CSV users with nothing to sync")
    message = "Sync: " + ", ".join(parts) + "."
    errors = [s for s in states.values() if s]
    if errors:
        message += " Sources not read (nothing changed for their users): " + " ".join(errors)
    job.message = message[:4000]
    job.summary = {**summary, "source_errors": errors}


@action("sync", "Sync data", finish=_finish_sync, batch_size=3000)
def sync_users(job: Job, users: list[User]) -> list[Outcome]:
    counts = dict.fromkeys(SUMMARY_KEYS, 0)
    conns = {c.id: c for c in db.session.scalars(select(Connection).where(Connection.id.in_(
        {u.connection_id for u in users if u.source == SOURCE_CONNECTION and u.connection_id})))}
    fields_of = {cid: provided_fields(conn) for cid, conn in conns.items()}
    names = {cid: conn.name for cid, conn in conns.items()}
    fresh = any(cid not in _job_sources.get(job.id, {}) for cid in conns)
    ids = [u.id for u in users]
    states = {cid: _source_state(job, conn) for cid, conn in conns.items()}
    if fresh:
        # Reading a source commits, which expires the batch: reload it in one query.
        users = list(db.session.scalars(select(User).where(User.id.in_(ids)).order_by(User.id)
                                        .execution_options(populate_existing=True)))
    # Each user's record: one query per connection and batch.
    keys_by_conn: dict[int, dict[str, int]] = {}
    for u in users:
        if u.connection_id in conns and states[u.connection_id] is None and u.source_key is not None:
            keys_by_conn.setdefault(u.connection_id, {})[u.source_key] = u.id
    records: dict[int, dict] = {}
    for cid, keys in keys_by_conn.items():
        # By the record's unique (connection, key) index: a few thousand probes, never a scan.
        query = select(SourceRecord.source_key, *(getattr(SourceRecord, f) for f in RECORD_FIELDS)).where(
            SourceRecord.connection_id == cid, SourceRecord.source_key.in_(list(keys)))
        for row in db.session.execute(query):
            records[keys[row[0]]] = dict(zip(RECORD_FIELDS, row[1:]))
    # Login ids that change in this batch, to refuse two users landing on the same id.
    claimed: set[str] = set()
    outcomes = []
    for user in users:
        if user.source != SOURCE_CONNECTION:
            counts["nothing_to_sync"] += 1
            what = {SOURCE_MANUAL: "manual user", SOURCE_CSV: "imported from a CSV file"}.get(
                user.source, user.source)
            outcomes.append(Outcome(user, "skipped", f"Nothing to sync ({what})."))
            continue
        conn_id = user.connection_id if user.connection_id in conns else None
        if conn_id is None:
            counts["nothing_to_sync"] += 1
            outcomes.append(Outcome(user, "skipped", "Nothing to sync (its connection was deleted)."))
            continue
        if states[conn_id]:
            counts["failed"] += 1
            outcomes.append(Outcome(user, "failed", states[conn_id]))
            continue
        rec = records.get(user.id)
        if rec is None:
            counts["not_in_source"] += 1
            if not user.not_in_source:
                user.not_in_source = True
            outcomes.append(Outcome(user, "skipped",
                                    f"Not in source: {names[conn_id]} no longer has this user "
                                    f"(flagged, not deleted)."))
            continue
        result, outcome = _apply_record(user, rec, fields_of[conn_id], claimed)
        counts[result] += 1
        outcomes.append(outcome)
    summary = dict(job.summary or {})
    for k, v in counts.items():
        summary[k] = int(summary.get(k, 0)) + v
    job.summary = summary
    return outcomes


def _apply_record(user: User, rec: dict, fields: tuple[str, ...], claimed: set[str]
                  ) -> tuple[str, Outcome]:
    """Bring one imported user in line with its source record: (summary key, outcome)."""
    change = plan_change(user, {f: rec[f] for f in fields}, by=BY_SOURCE)
    if change.is_empty and not user.not_in_source:
        return "unchanged", Outcome(user, "ok", "Unchanged.")
    if change.errors:
        return "failed", Outcome(user, "failed", "The source's data is not valid, nothing "
                                                 "changed: " + " ".join(change.errors.values()))
    new_login = change.fields.get("login_id") if change.login_id_changed else None
    if new_login is not None:
        owner = login_id_owner(new_login, user.id)
        if owner is not None or login_key(new_login) in claimed:
            who = f"{owner.display_name} ({owner.login_id})" if owner else "another user of this sync"
            return "failed", Outcome(user, "failed", f"The source changed the login id to "
                                                     f"{new_login!r}, which {who} already has (login "
                                                     f"ids are the same ignoring upper/lower case); "
                                                     f"nothing changed.")
    notes = []
    if user.not_in_source:
        user.not_in_source = False
        notes.append("back in the source")
    changed = [FIELD_LABELS[f] for f in change.fields if f != "login_id"]
    if changed:
        notes.append("changed " + ", ".join(changed))
    apply_change(user, change)
    if new_login is not None:
        claimed.add(login_key(new_login))
        notes.append(f"login id changed from {change.old_login_id!r} to {new_login!r}: devices revoked, "
                     f"redeploy required (factory reset the app and send a new deployment e-mail)")
    return "updated", Outcome(user, "ok", "Updated: " + "; ".join(notes) + ".")


# --- the periodic sync ----------------------------------------------------------------

@tick_task("connections.periodic_sync", every_ticks=6)
def periodic_sync(app) -> None:
    """Start the sync of every enabled connection whose interval has passed."""
    now = utcnow()
    due = db.session.execute(select(Connection.id, Connection.next_sync_at, Connection.sync_interval_minutes)
                             .where(Connection.enabled.is_(True),
                                    or_(Connection.next_sync_at.is_(None),
                                        Connection.next_sync_at <= now))).all()
    for conn_id, next_at, interval in due:
        # Claim this run first, so a slow or failing source is not retried every tick.
        cond = Connection.next_sync_at.is_(None) if next_at is None else Connection.next_sync_at == next_at
        claimed = db.session.execute(update(Connection).where(Connection.id == conn_id, cond).values(
            next_sync_at=now + timedelta(minutes=interval or DEFAULT_INTERVAL))).rowcount
        db.session.commit()
        if not claimed:
            continue
        conn = db.session.get(Connection, conn_id)
        try:
            start_sync(conn, actor="scheduler")
        except SourceError:
            pass  # already recorded on the connection
        except Exception:
            log.exception("periodic sync of connection %s failed", conn.name)
            db.session.rollback()
