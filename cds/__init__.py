"""CDS — Client Deployment Service. ``create_app`` is the application factory."""
from __future__ import annotations

import os

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine

from cds.config import ConfigError, load_config  # noqa: F401  (re-exported for app.py)

__version__ = "0.1.0"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def create_app(test_config: dict | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(
        __name__,
        instance_relative_config=True,
        instance_path=instance_path or os.environ.get("CDS_INSTANCE_PATH") or os.path.join(ROOT, "instance"),
        template_folder=os.path.join(ROOT, "templates"),
        static_folder=os.path.join(ROOT, "static"),
    )
    from cds.safejson import RequestJSONProvider
    app.json = RequestJSONProvider(app)
    load_config(app, test_config)
    if app.config["PROXY_FIX"]:
        from werkzeug.middleware.proxy_fix import ProxyFix
        n = app.config["PROXY_FIX"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)

    from cds import logs
    try:
        logs.init_app(app)
    except OSError as exc:  # instance/logs/ cannot be written
        from cds.config import instance_unusable
        raise instance_unusable(app.instance_path, exc) from None

    from cds.extensions import csrf, db, htmx, limiter, limiter_storage_uri, mail
    from cds.security import make_cipher

    app.extensions["cds_cipher"] = make_cipher(app.config["ENCRYPTION_KEY"])
    db.init_app(app)
    mail.init_app(app)
    csrf.init_app(app)
    htmx.init_app(app)
    # memory:// is served by CDS's in-process storage (see InProcessLimitStorage); the
    # setting keeps the value the administrator gave.
    storage_uri = app.config["RATELIMIT_STORAGE_URI"]
    app.config["RATELIMIT_STORAGE_URI"] = limiter_storage_uri(storage_uri)
    limiter.init_app(app)
    app.config["RATELIMIT_STORAGE_URI"] = storage_uri

    from cds import web
    web.init_app(app)

    register_areas(app)

    from cds.cli import register_cli
    register_cli(app)

    from cds import scheduler
    scheduler.init_app(app)
    return app


# One package per area (README, Architecture). Each may have routes.py (a blueprint named
# ``bp``) and cli.py (click commands in ``commands``, added to `flask cds`).
AREAS = ("auth", "users", "profiles", "jobs", "deploy", "mail", "client", "redirect", "outbox",
         "connections", "sources", "imports", "export", "deletion", "audit", "settings", "api",
         "apitokens", "health", "backup")


def register_areas(app: Flask) -> None:
    import importlib
    import importlib.util

    for area in AREAS:
        if importlib.util.find_spec(f"cds.{area}") is None:
            continue
        if importlib.util.find_spec(f"cds.{area}.routes") is not None:
            app.register_blueprint(importlib.import_module(f"cds.{area}.routes").bp)
        # Importing service modules registers their job actions and scheduler tasks.
        if importlib.util.find_spec(f"cds.{area}.service") is not None:
            importlib.import_module(f"cds.{area}.service")
    # Each client kind may bring its own endpoints for apps (Linphone's provisioning URLs),
    # under /provisioning/<kind>/: public, and without an administrator's session.
    from cds import web
    from cds.clients import KINDS
    for kind in KINDS.values():
        if kind.blueprint is not None:
            app.register_blueprint(kind.blueprint)
            web.PUBLIC_BLUEPRINTS.add(kind.blueprint.name)
            web.SESSIONLESS_BLUEPRINTS.add(kind.blueprint.name)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record):
    """SQLite: write-ahead log (readers never wait on the writer) and foreign keys on."""
    import sqlite3

    if isinstance(dbapi_connection, sqlite3.Connection):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
