"""`flask --app app cds deploy …`, `… auto-deploy …`, `… force-config …` and
`… assign-profile …`: the same bulk actions as the Users tab, started the same way
(``start_action``), run here to their end unless scheduled."""
from __future__ import annotations

import click
from sqlalchemy import select

from cds.cli import fail
from cds.deploy.service import plan_deploy
from cds.extensions import db
from cds.jobs.actions import RUN_AT_HELP, start_action
from cds.jobs.service import reason_counts
from cds.models import User, login_key
from cds.profiles.service import find_profile_by_name
from cds.users.selection import parse_selection

AT_HELP = f"Schedule for later: {RUN_AT_HELP}."


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
    return parse_selection({"ids": sorted(rows.values())})


def _run(kind: str, all_users: bool, login_ids: tuple[str, ...], at: str | None,
         params: dict | None = None) -> None:
    job = start_action(kind, _selection(all_users, login_ids), params=params, run_at=at,
                       actor="cli", inline=True)
    if job.run_at is not None:
        click.echo(f"job {job.id} scheduled for {job.run_at:%Y-%m-%d %H:%M} UTC: {job.description}")
        click.echo("It runs when the CDS server is running at that time; cancel it in the Jobs tab.")
        return
    click.echo(f"job {job.id}: {job.description}")
    click.echo(f"{job.succeeded} succeeded, {job.skipped} skipped, {job.failed} failed "
               f"(of {job.total})")
    for outcome, message, count in reason_counts(job):
        click.echo(f"  {outcome}: {count} × {message}")


def _who(all_help: str = "Every user."):
    """--all or --user LOGIN_ID…: the shell's way to say which users."""
    def options(fn):
        fn = click.option("--user", "login_ids", multiple=True, metavar="LOGIN_ID",
                          help="A user's login id (repeatable).")(fn)
        return click.option("--all", "all_users", is_flag=True, help=all_help)(fn)
    return options


def _when(fn):
    return click.option("--at", default=None, metavar="ISO_TIME", help=AT_HELP)(fn)


@click.command("deploy")
@_who("Every user (Do Not Deploy users are skipped).")
@_when
@click.option("--dry-run", is_flag=True, help="Only say how many users would be sent an e-mail, and "
                                              "how many not and why; send nothing.")
def deploy_command(all_users, login_ids, at, dry_run):
    """Send deployment e-mails (new links) to users, now or at a set time."""
    if dry_run:
        plan = plan_deploy(_selection(all_users, login_ids))
        click.echo(f"{plan.to_send} of {plan.total} users would be sent an e-mail")
        for reason, count in plan.not_sent.items():
            click.echo(f"  not sent: {count} × {reason}")
        return
    _run("deploy", all_users, login_ids, at)


@click.command("auto-deploy")
@_who()
@_when
def auto_deploy_command(all_users, login_ids, at):
    """Set Force Config for users whose client has downloaded, Deploy for the others."""
    _run("auto_deploy", all_users, login_ids, at)


@click.command("force-config")
@_who()
@_when
def force_config_command(all_users, login_ids, at):
    """Make clients download their configuration again at their next status check."""
    _run("force_config", all_users, login_ids, at)


@click.command("assign-profile")
@click.argument("profile_name")
@_who()
def assign_profile_command(profile_name, all_users, login_ids):
    """Put users on the deployment profile PROFILE_NAME (their clients download again)."""
    profile = find_profile_by_name(profile_name)
    _run("assign_profile", all_users, login_ids, None,
         {"profile_id": profile.id if profile is not None else None})


commands = [deploy_command, auto_deploy_command, force_config_command, assign_profile_command]
