"""`flask --app app cds deploy …` and `… force-config …`: the same jobs as the Users tab."""
from __future__ import annotations

from datetime import datetime, timezone

import click
from sqlalchemy import select

from cds.cli import fail
from cds.extensions import db
from cds.models import User, login_key, utcnow


def _selection(all_users: bool, login_ids: tuple[str, ...]) -> dict:
    if all_users == bool(login_ids):
        fail("give either --all or one or more --user LOGIN_ID")
    if all_users:
        return {"filter": {}}
    wanted = list(dict.fromkeys(login_ids))
    rows = dict(db.session.execute(select(User.login_key, User.id).where(
        User.login_key.in_([login_key(x) for x in wanted]))).all())
    missing = [x for x in wanted if login_key(x) not in rows]
    if missing:
        fail(f"no user with login id {', '.join(missing)}")
    return {"ids": sorted(rows.values())}


def _parse_at(at: str | None) -> datetime | None:
    """ISO 8601; without an offset the time is this machine's local time. Stored as naive UTC."""
    if not at:
        return None
    try:
        when = datetime.fromisoformat(at.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"--at must be an ISO 8601 time such as 2030-03-01T08:00 or 2030-03-01T08:00+01:00 (got {at!r})")
    if when.tzinfo is None:
        when = when.astimezone()  # local time of this machine
    when = when.astimezone(timezone.utc).replace(tzinfo=None, microsecond=0)
    if when <= utcnow():
        fail(f"--at {at} is in the past")
    return when


def _run(kind: str, all_users: bool, login_ids: tuple[str, ...], at: str | None) -> None:
    from cds.jobs.service import JobError, create_job, reason_counts, run_job

    selection = _selection(all_users, login_ids)
    run_at = _parse_at(at)
    try:
        job = create_job(kind, selection, run_at=run_at, actor="cli")
    except JobError as exc:
        fail(str(exc))
    if run_at is not None:
        click.echo(f"job {job.id} scheduled for {run_at:%Y-%m-%d %H:%M} UTC: {job.description}")
        click.echo("It runs when the CDS server is running at that time; cancel it in the Jobs tab.")
        return
    click.echo(f"job {job.id}: {job.description}")
    job = run_job(job.id) or db.session.get(type(job), job.id)
    click.echo(f"{job.succeeded} succeeded, {job.skipped} skipped, {job.failed} failed "
               f"(of {job.total})")
    for outcome, message, count in reason_counts(job):
        click.echo(f"  {outcome}: {count} × {message}")


@click.command("deploy")
@click.option("--all", "all_users", is_flag=True, help="Every user (Do Not Deploy users are skipped).")
@click.option("--user", "login_ids", multiple=True, metavar="LOGIN_ID", help="A user's login id (repeatable).")
@click.option("--at", default=None, metavar="ISO_TIME",
              help="Schedule for later, e.g. 2030-03-01T08:00 (local time) or with an offset.")
def deploy_command(all_users, login_ids, at):
    """Send deployment e-mails (new links) to users, now or at a set time."""
    _run("deploy", all_users, login_ids, at)


@click.command("auto-deploy")
@click.option("--all", "all_users", is_flag=True, help="Every user.")
@click.option("--user", "login_ids", multiple=True, metavar="LOGIN_ID", help="A user's login id (repeatable).")
@click.option("--at", default=None, metavar="ISO_TIME", help="Schedule for later.")
def auto_deploy_command(all_users, login_ids, at):
    """Set Force Config for users whose client has downloaded, Deploy for the others."""
    _run("auto_deploy", all_users, login_ids, at)


@click.command("force-config")
@click.option("--all", "all_users", is_flag=True, help="Every user.")
@click.option("--user", "login_ids", multiple=True, metavar="LOGIN_ID", help="A user's login id (repeatable).")
@click.option("--at", default=None, metavar="ISO_TIME", help="Schedule for later.")
def force_config_command(all_users, login_ids, at):
    """Make clients download their configuration again at their next status check."""
    _run("force_config", all_users, login_ids, at)


commands = [deploy_command, auto_deploy_command, force_config_command]
