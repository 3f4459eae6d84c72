"""`flask --app app cds …`: the commands an administrator runs from the shell."""
from __future__ import annotations

import os
import signal
import sys

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo, with_appcontext
from sqlalchemy import text

from cds.auth.service import ensure_first_admin
from cds.errors import CdsError
from cds.extensions import db, migrations
from cds.jobs.service import stop_runners
from cds.profiles.service import ensure_builtin_profiles
from cds.serving import create_server


class CdsGroup(AppGroup):
    """`flask cds …`: a service's refusal (``cds.errors.CdsError``) ends any command the
    same way — its message on stderr, exit code 1, nothing changed."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CdsError as exc:
            # The command's app context has ended by now, and its session with it (rolled back).
            fail(exc.message)


@click.group("cds", cls=CdsGroup)
@click.pass_context
def cds_cli(ctx):
    """Client Deployment Service administration."""
    # serve migrates by itself (then leaves Alembic behind, see serve_command).
    if ctx.invoked_subcommand not in (None, "upgrade", "serve") and "--help" not in sys.argv:
        app = ctx.ensure_object(ScriptInfo).load_app()
        with app.app_context():
            if pending_migrations():
                click.echo("applying database migrations…", err=True)
                upgrade_database()


def pending_migrations() -> bool:
    # Alembic is loaded only by the commands that migrate: the serving process never holds it.
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    migrate_ext = migrations(current_app)
    script = ScriptDirectory.from_config(migrate_ext.migrate.get_config(migrate_ext.directory))
    with db.engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    return current != set(script.get_heads())


class RoleChoice(click.Choice):
    """primary, admin or read-only: the one spelling every command prints. The older
    `readonly` is still accepted. Converts to the stored role name."""

    def __init__(self, roles=("primary", "admin", "read-only")):
        super().__init__(list(roles))

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == "readonly":
            value = "read-only"
        return super().convert(value, param, ctx)


def role_text(role: str) -> str:
    return "read-only" if role == "readonly" else role


def stored_role(role: str) -> str:
    return "readonly" if role == "read-only" else role


def fail(message: str, code: int = 1):
    """One line on stderr and a non-zero exit: what scripts and people both read."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def upgrade_database() -> None:
    """Apply every pending migration, then make sure the built-in rows exist."""
    from flask_migrate import upgrade  # lazy: it loads Alembic (see pending_migrations)

    if db.engine.dialect.name != "postgresql":
        upgrade(directory=migrations(current_app).directory, revision="heads")
        ensure_builtin_profiles()
        return
    # Several nodes starting at once on one database: one migrates, the others wait for it.
    with db.engine.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        lock.commit()
        try:
            upgrade(directory=migrations(current_app).directory, revision="heads")
            ensure_builtin_profiles()
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            lock.commit()


MIGRATION_LOCK_KEY = 0x0CD5_0001


@cds_cli.command("upgrade")
def upgrade_command():
    """Apply pending database migrations (safe to run any time)."""
    upgrade_database()
    click.echo("database is up to date")


@cds_cli.command("serve")
@click.option("--host", default=None, help="Address to listen on (default: CDS_HOST).")
@click.option("--port", default=None, type=int, help="Port (default: CDS_PORT).")
def serve_command(host, port):
    """Migrate, create the first administrator if needed, and serve with waitress."""
    app = current_app._get_current_object()
    if os.environ.get(_MIGRATED) != "1":
        upgrade_database()
        password = ensure_first_admin()
        if password:
            click.echo("=" * 64)
            click.echo("First start: created the primary administrator.")
            click.echo("  user name: admin")
            click.echo(f"  password:  {password}")
            click.echo("This password is shown once. CDS asks you to choose your own when you sign in.")
            click.echo("=" * 64)
        # Serve from a fresh interpreter (same process id): Alembic, loaded to migrate,
        # would otherwise stay in the console's memory for good.
        sys.stdout.flush()
        sys.stderr.flush()
        os.environ[_MIGRATED] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "flask", *sys.argv[1:]])
    if app.config["SCHEDULER_ENABLED"] is not False:
        app.extensions["cds_scheduler"].start()
    host = host or app.config["HOST"]
    port = port or app.config["PORT"]
    click.echo(f"CDS is serving on http://{host}:{port}/  (Ctrl+C to stop)")
    sys.stdout.flush()
    # SIGTERM (systemd, docker stop) stops like Ctrl+C: jobs stop before their next
    # message and are resumed by the next start.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        # Forwarded headers reach the app only when CDS_PROXY_FIX says proxies add them.
        create_server(app, host=host, port=port, threads=app.config["THREADS"], ident="CDS",
                      clear_untrusted_proxy_headers=not app.config["PROXY_FIX"]).run()
    except KeyboardInterrupt:
        pass
    finally:
        _stop_serving(app)


def _stop_on_signal(signum, frame):
    raise KeyboardInterrupt


def _stop_serving(app) -> None:
    click.echo("CDS is stopping", err=True)
    app.extensions["cds_scheduler"].stop()
    # A message being handed over is finished (at most the SMTP timeout), then runners stop.
    if not stop_runners(timeout=float(app.config["MAIL_TIMEOUT"]) + 5):
        click.echo("a job is still running; it is resumed at the next start", err=True)


def _with_app_context(command: click.Command) -> None:
    """Area commands are plain click commands; run them (and subcommands) inside the app."""
    if command.callback is not None and not getattr(command.callback, "_cds_ctx", False):
        command.callback = with_appcontext(command.callback)
        command.callback._cds_ctx = True
    for sub in getattr(command, "commands", {}).values():
        _with_app_context(sub)


_MIGRATED = "CDS_SERVE_MIGRATED"


def register_cli(app, commands) -> None:
    """`flask cds` with the areas' ``commands`` (create_app gathers them from each area's cli.py)."""
    for command in commands:
        if command.name not in cds_cli.commands:
            _with_app_context(command)
            cds_cli.add_command(command)
    app.cli.add_command(cds_cli)
    # `flask db …` (Flask-Migrate, for writing migrations) is set up only when asked for:
    # the serving process never loads Alembic.
    if "db" in sys.argv[1:]:
        migrations(app)
