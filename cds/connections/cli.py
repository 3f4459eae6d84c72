"""`flask --app app cds connections list|show|add|limits|authorize|test|delete` and `cds sync`."""
import json
import sys

import click
from sqlalchemy import select

from cds.api.schema import connection_json
from cds.cli import fail
from cds.connections import service as connections
from cds.extensions import db
from cds.models import CONNECTION_KINDS, Connection, Job
from cds.sources import LIMIT_DEFAULTS, LIMIT_LABELS, SourceError, limits_of


def _find(name: str):
    conn = connections.find_connection(name)
    if conn is None:
        fail(f"no connection named {name!r}")
    return conn


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True)


def _limit_options(fn):
    for name in reversed(list(LIMIT_DEFAULTS)):
        fn = click.option(f"--{name.replace('_', '-')}", name, type=int, default=None,
                          help=f"Limit of one read (default {LIMIT_DEFAULTS[name]:,} "
                               f"{LIMIT_LABELS[name]}).")(fn)
    return fn


@click.group("connections")
def connections_group():
    """Sources of users: list, show, add, limits, authorize, test, delete."""


@connections_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_command(as_json):
    rows = connections.list_connections()
    if as_json:
        click.echo(json.dumps([connection_json(c) for c in rows], indent=2))
        return
    for c in rows:
        last = "never" if c.last_sync_at is None else \
            f"{c.last_sync_at:%Y-%m-%d %H:%M} {'ok' if c.last_sync_ok else 'FAILED'}"
        expires = f"{c.token_expires_at:%Y-%m-%d}" if c.token_expires_at else "-"
        click.echo(f"{c.id:>4}  {c.name:<24} {CONNECTION_KINDS.get(c.kind, c.kind):<26} "
                   f"{'enabled' if c.enabled else 'disabled':<9} token until {expires}  last sync {last}")


@connections_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def show_command(name, as_json):
    data = connection_json(_find(name))
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            click.echo(f"{key:>20}: {value}")


@connections_group.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(list(CONNECTION_KINDS)), required=True)
@click.option("--url", required=True)
@click.option("--username", default="")
@click.option("--interval", "interval", type=int, default=60, show_default=True, help="Minutes between syncs.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Kind-specific setting, e.g. base_dn=ou=people,dc=example,dc=org (LDAP).")
@_limit_options
def add_command(name, kind, url, username, interval, options, **limits):
    """Create a connection; CDS authorizes with the source first. Password from a prompt or stdin."""
    opts = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--option takes KEY=VALUE (got {item!r})")
        opts[key.strip()] = value
    opts.update({k: v for k, v in limits.items() if v is not None})
    settings = connections.ConnectionSettings(name=name, kind=kind, url=url, username=username,
                                              sync_interval_minutes=interval, options=opts)
    try:
        conn = connections.create_connection(settings, _password(), actor="cli")
    except connections.ConnectionProblem as exc:
        fail(str(exc) + "".join(f" {k}: {v}" for k, v in exc.errors.items()))
    click.echo(f"connection {conn.name} created and verified (id {conn.id})")


@connections_group.command("limits")
@click.argument("name")
@_limit_options
@click.option("--default", "reset", is_flag=True, help="Back to the default limits.")
def limits_command(name, reset, **limits):
    """Show or change the limits of one read of the source (records, pages, MB, minutes)."""
    conn = _find(name)
    options = dict(conn.options or {})
    given = {k: v for k, v in limits.items() if v is not None}
    if reset:
        for key in LIMIT_DEFAULTS:
            options.pop(key, None)
    options.update(given)
    if given or reset:
        settings = connections.ConnectionSettings(
            name=conn.name, kind=conn.kind, url=conn.url, username=conn.username,
            sync_interval_minutes=conn.sync_interval_minutes, enabled=conn.enabled, options=options)
        try:
            conn = connections.update_connection(conn, settings, actor="cli")
        except connections.ConnectionProblem as exc:
            fail(str(exc) + "".join(f" {v}" for v in exc.errors.values()))
    for key, value in limits_of(conn.options or {}).items():
        own = "" if key in (conn.options or {}) else "  (default)"
        click.echo(f"{key:>14}: {value:,} {LIMIT_LABELS[key]}{own}")


@connections_group.command("authorize")
@click.argument("name")
@click.option("--url", default=None)
@click.option("--username", default=None)
def authorize_command(name, url, username):
    """Authorize again (new token, URL or credentials). Password from a prompt or stdin."""
    conn = _find(name)
    try:
        conn = connections.reauthorize(conn, url or conn.url, username if username is not None else conn.username,
                                       _password() or None, actor="cli")
    except connections.ConnectionProblem as exc:
        fail(str(exc))
    expires = f"{conn.token_expires_at:%Y-%m-%d %H:%M} UTC" if conn.token_expires_at else "no expiry"
    click.echo(f"connection {conn.name} authorized (token valid until {expires})")


@connections_group.command("test")
@click.argument("name")
def test_command(name):
    """Read the source now (refreshes the Import Users view)."""
    result = connections.verify_connection(_find(name))  # SourceError, ConnectionProblem: fail
    click.echo(result.describe())


@connections_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True)
def delete_command(name, yes):
    """Delete a connection; its imported users stay, as manual users."""
    conn = _find(name)
    if not yes and not click.confirm(f"Delete connection {conn.name}?"):
        fail("nothing deleted")
    released = connections.delete_connection(conn, actor="cli")
    click.echo(f"connection {name} deleted; {released} users kept as manual users")


# --- Sync data -------------------------------------------------------------------------

@click.command("sync")
@click.option("--connection", "connection_name", default=None,
              help="Sync only the users of this connection (default: every enabled connection).")
def sync_command(connection_name):
    """Sync imported users with their sources now (the Sync data action)."""
    if connection_name:
        conn = connections.find_connection(connection_name)
        if conn is None:
            fail(f"no connection is named {connection_name!r}")
        conns = [conn]
    else:
        conns = list(db.session.scalars(select(Connection).where(Connection.enabled.is_(True))
                                        .order_by(Connection.name)))
        if not conns:
            fail("there are no enabled connections")
    failed = False
    for conn in conns:
        name = conn.name
        try:
            job, refreshed = connections.start_sync(conn, actor="cli", wait=True)
        except SourceError as exc:
            click.echo(f"{name}: reading the source failed, nothing changed: {exc}", err=True)
            failed = True
            continue
        if job is None:
            click.echo(f"{name}: {refreshed.describe()} No users are imported from it yet.")
            continue
        job = db.session.get(Job, job.id)
        db.session.refresh(job)
        click.echo(f"{name}: {job.message or job.state}")
        if (job.summary or {}).get("source_errors"):
            failed = True
    if failed:
        raise SystemExit(1)


commands = [connections_group, sync_command]
