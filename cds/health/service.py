"""The state /healthz reports. Nothing about users, and nothing secret.

Besides "can the database be read", it tells whether the database can be
written (a committed one-row write, at most every ``PROBE_EVERY_SECONDS`` while
it works, on every check while it does not) and whether the scheduler this
process leads is alive and ticking.
"""
from __future__ import annotations

import logging
import threading
import time

from flask import current_app
from sqlalchemy import insert, text, update

from cds.settings.service import get_settings
from cds.version import __version__
from cds.extensions import db
from cds.models import Setting, utcnow
from cds.scheduler import scheduler_report

log = logging.getLogger("cds.health")

PROBE_KEY = "_healthz_write_probe"  # a row of its own in the setting table; no setting reads it
PROBE_EVERY_SECONDS = 10.0

_probe_lock = threading.Lock()
_last_probe: dict[str, tuple[float, tuple[bool, str | None]]] = {}  # database URL -> (when, result)


def database_state() -> dict:
    """Whether the database answers a trivial query, and which kind it is."""
    dialect = db.engine.dialect.name
    try:
        db.session.execute(text("SELECT 1")).scalar()
        return {"ok": True, "dialect": dialect}
    except Exception as exc:  # any driver error means: not reachable from here
        db.session.rollback()
        log.warning("health: database unreachable (%s)", exc.__class__.__name__)
        return {"ok": False, "dialect": dialect, "error": exc.__class__.__name__}


def write_probe() -> tuple[bool, str | None]:
    """(writable, why not): commits a one-row write, as every real change must."""
    key = str(db.engine.url)
    with _probe_lock:
        at, result = _last_probe.get(key, (None, (False, None)))
        if at is not None and result[0] and time.monotonic() - at < PROBE_EVERY_SECONDS:
            return result
        now = utcnow()
        try:
            changed = db.session.execute(update(Setting).where(Setting.key == PROBE_KEY).values(
                value=now.isoformat(), updated_at=now, updated_by="healthz")).rowcount
            if not changed:
                db.session.execute(insert(Setting).values(key=PROBE_KEY, value=now.isoformat(), secret=False,
                                                          updated_at=now, updated_by="healthz"))
            db.session.commit()
            result = (True, None)
        except Exception as exc:
            db.session.rollback()
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            result = (False, f"{exc.__class__.__name__}: {detail[0][:200] if detail else ''}".rstrip(": "))
            log.warning("health: the database cannot be written (%s)", result[1])
        _last_probe[key] = (time.monotonic(), result)
        return result


def mail_transport(database_ok: bool) -> str:
    """ "smtp" when an SMTP server is set (console setting over config), else "outbox"."""
    server = current_app.config.get("MAIL_SERVER")
    if database_ok:
        try:
            server = get_settings("MAIL_SERVER")["MAIL_SERVER"]
        except Exception:
            db.session.rollback()
    return "smtp" if server else "outbox"


def health() -> tuple[dict, bool]:
    """The report, and whether this process can do its work: the database answers and
    takes writes, and the scheduler (where this process leads it) is not stalled."""
    database = database_state()
    if database["ok"]:
        database["writable"], why = write_probe()
        if why:
            database["write_error"] = why
    scheduler = scheduler_report(current_app)
    healthy = database["ok"] and database.get("writable", False) and scheduler["state"] != "stalled"
    report = {
        "status": "ok" if healthy else ("unavailable" if not database["ok"] else "degraded"),
        "version": __version__,
        "database": database,
        "scheduler": scheduler["state"],
        "scheduler_last_tick_at": scheduler["last_tick_at"],
        "mail": {"transport": mail_transport(database["ok"])},
    }
    if scheduler["problem"]:
        report["scheduler_problem"] = scheduler["problem"]
    return report, healthy
