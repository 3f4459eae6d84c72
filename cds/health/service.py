"""The state /healthz reports. Nothing about users, and nothing secret."""
from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import text

from cds import __version__
from cds.extensions import db
from cds.scheduler import scheduler_state

log = logging.getLogger("cds.health")


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


def mail_transport(database_ok: bool) -> str:
    """ "smtp" when an SMTP server is set (console setting over config), else "outbox"."""
    server = current_app.config.get("MAIL_SERVER")
    if database_ok:
        from cds.settings.service import get_settings
        try:
            server = get_settings("MAIL_SERVER")["MAIL_SERVER"]
        except Exception:
            db.session.rollback()
    return "smtp" if server else "outbox"


def health() -> tuple[dict, bool]:
    """The report and whether this process can serve (the database answers)."""
    database = database_state()
    report = {
        "status": "ok" if database["ok"] else "unavailable",
        "version": __version__,
        "database": database,
        "scheduler": scheduler_state(current_app),
        "mail": {"transport": mail_transport(database["ok"])},
    }
    return report, database["ok"]
