"""The redirect server on its own: the same blueprint, its own small database.

    CDS_REDIRECT_API_SECRET=… CDS_REDIRECT_DATABASE_URL=sqlite:////var/lib/cds-redirect/redirect.sqlite3 \\
        .venv/bin/python -m cds.redirect.standalone --host 0.0.0.0 --port 8080

(served as `cds serve` serves, cds/serving.py; ``waitress-serve --call
cds.redirect.standalone:create_redirect_app`` works too, with waitress's own
connections). The CDS then runs
with CDS_REDIRECT_MODE=remote, CDS_REDIRECT_URL=https://<this server> and the same
CDS_REDIRECT_API_SECRET, and registers every new link here (and withdraws revoked ones).
This server stores token hashes, CDS URLs and expiry times: no user data of any kind.
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

from flask import Flask

from cds import ROOT, logs
from cds.config import ConfigError
from cds.extensions import db
from cds.models import RedirectEntry, utcnow
from cds.redirect.routes import bp
from cds.redirect.service import purge_expired
from cds.serving import create_server

SETTINGS = {
    # name: (environment variable, default)
    "REDIRECT_DATABASE_URL": ("CDS_REDIRECT_DATABASE_URL", None),
    "REDIRECT_API_SECRET": ("CDS_REDIRECT_API_SECRET", None),
    "LOG_LEVEL": ("CDS_LOG_LEVEL", "INFO"),
}
PURGE_EVERY_SECONDS = 3600


def create_redirect_app(test_config: dict | None = None, instance_path: str | None = None) -> Flask:
    instance = instance_path or os.environ.get("CDS_REDIRECT_INSTANCE_PATH") or os.path.join(ROOT, "instance-redirect")
    app = Flask("cds.redirect", instance_path=instance, template_folder=os.path.join(ROOT, "templates"),
                static_folder=os.path.join(ROOT, "static"))
    for key, (env, default) in SETTINGS.items():
        app.config[key] = os.environ.get(env, default)
    app.config.update(test_config or {})
    Path(instance).mkdir(parents=True, exist_ok=True)
    if not app.config["REDIRECT_API_SECRET"] or len(app.config["REDIRECT_API_SECRET"]) < 16:
        raise ConfigError("CDS_REDIRECT_API_SECRET must be set (16 characters or more), the same as on the CDS")
    url = app.config["REDIRECT_DATABASE_URL"] or "sqlite:///" + str(Path(instance) / "redirect.sqlite3")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = (
        {"connect_args": {"timeout": 30, "check_same_thread": False}} if url.startswith("sqlite") else
        {"pool_pre_ping": True})


    logs.init_app(app)
    db.init_app(app)
    with app.app_context():
        # Only the redirect table: this database holds nothing else.
        RedirectEntry.__table__.create(db.engine, checkfirst=True)
    app.register_blueprint(bp)

    last_purge = [0.0]
    lock = threading.Lock()

    @app.before_request
    def _purge_now_and_then():
        if time.monotonic() - last_purge[0] > PURGE_EVERY_SECONDS and lock.acquire(blocking=False):
            try:
                last_purge[0] = time.monotonic()
                purge_expired(utcnow())
            finally:
                lock.release()

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Content-Security-Policy", "default-src 'none'; style-src 'self'; "
                                                           "frame-ancestors 'none'")
        return resp

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the CDS redirect server on its own.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    app = create_redirect_app()
    print(f"CDS redirect server on http://{args.host}:{args.port}/", flush=True)
    create_server(app, host=args.host, port=args.port, threads=args.threads, ident="CDS-redirect").run()


if __name__ == "__main__":
    main()
