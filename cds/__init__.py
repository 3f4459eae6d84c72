"""CDS — Client Deployment Service. ``create_app`` is the application factory."""
from __future__ import annotations

import os
import sqlite3
from importlib import import_module
from importlib.util import find_spec

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine

from cds.config import ConfigError, load_config  # noqa: F401  (ConfigError: for app.py)
from cds.version import __version__  # noqa: F401  (the package's version, where tools look for it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def create_app(test_config: dict | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(
        __name__,
        instance_relative_config=True,
        instance_path=instance_path or os.environ.get("CDS_INSTANCE_PATH") or os.path.join(ROOT, "instance"),
        template_folder=os.path.join(ROOT, "templates"),
        static_folder=os.path.join(ROOT, "static"),
    )
    # Imported here, not at the top: every `import cds.…` runs this package first, and a
    # module that needs only the models or the config (the standalone redirect server,
    # a bench script) must not load the whole console with it.
    from werkzeug.middleware.proxy_fix import ProxyFix

    from cds import logs, scheduler, web
    from cds.cli import register_cli
    from cds.config import instance_unusable
    from cds.extensions import csrf, db, htmx, limiter, limiter_storage_uri, mail
    from cds.safejson import RequestJSONProvider
    from cds.security import make_cipher

    app.json = RequestJSONProvider(app)
    load_config(app, test_config)
    if app.config["PROXY_FIX"]:
        n = app.config["PROXY_FIX"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)

    try:
        logs.init_app(app)
    except OSError as exc:  # instance/logs/ cannot be written
        raise instance_unusable(app.instance_path, exc) from None

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

    web.init_app(app)

    register_areas(app)

    register_cli(app, [command for module in area_modules("cli") for command in module.commands])
    scheduler.init_app(app)
    return app


# One package per area (README, Architecture). Each may have routes.py (a blueprint named
# ``bp``, or several listed in ``blueprints``), service.py and cli.py (click commands in ``commands``, added to `flask cds`).
# The factory imports them by name: it is the one place that knows every area.
AREAS = ("auth", "users", "profiles", "jobs", "deploy", "landing", "mail", "client", "redirect", "outbox",
         "connections", "sources", "imports", "export", "deletion", "audit", "settings", "api",
         "health", "backup")


def area_modules(part: str):
    """Each area's ``part`` module (routes, service, cli), for the areas that have one."""
    return [import_module(f"cds.{area}.{part}") for area in AREAS if find_spec(f"cds.{area}.{part}")]


def register_areas(app: Flask) -> None:
    from cds import web  # lazy: see create_app
    from cds.clients import KINDS

    for area in AREAS:
        if find_spec(f"cds.{area}.routes") is not None:
            routes = import_module(f"cds.{area}.routes")
            for blueprint in getattr(routes, "blueprints", (routes.bp,)):
                app.register_blueprint(blueprint)
        # Importing service modules registers their job actions and scheduler tasks.
        if find_spec(f"cds.{area}.service") is not None:
            import_module(f"cds.{area}.service")
    # Each client kind may bring its own endpoints for apps (Linphone's provisioning URLs),
    # under /provisioning/<kind>/: public, and without an administrator's session.
    for kind in KINDS.values():
        if kind.routes is not None:
            blueprint = import_module(kind.routes).bp
            app.register_blueprint(blueprint)
            web.PUBLIC_BLUEPRINTS.add(blueprint.name)
            web.SESSIONLESS_BLUEPRINTS.add(blueprint.name)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record):
    """SQLite: write-ahead log (readers never wait on the writer) and foreign keys on."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
