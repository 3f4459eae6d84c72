"""`flask --app app cds users list|show|add|edit|delete`."""
import json
import sys

import click
from sqlalchemy import select

from cds.api.schema import user_json
from cds.cli import fail
from cds.extensions import db
from cds.jobs.actions import start_action
from cds.models import User, login_key
from cds.profiles.service import default_profile, find_profile_by_name
from cds.users import service as users
from cds.users.fields import FIELDS, USER_SECRETS
from cds.users.login_ids import redeploy_after_id_change
from cds.users.query import UserQuery, list_users
from cds.users.selection import parse_selection

# One option per field of the field table; the Login ID is the command's argument.
FIELD_OPTIONS = [(f.cli_flag, f.name, f.label) for f in FIELDS if f.name != "login_id"]


def _user_by_login(login_id: str) -> User:
    user = db.session.scalar(select(User).where(User.login_key == login_key(login_id)))
    if user is None:
        fail(f"no user with Login ID {login_id!r}")
    return user


def _profile_id(name: str | None) -> int | None:
    if name is None:
        return None
    profile = find_profile_by_name(name)
    if profile is None:
        fail(f"no deployment profile named {name!r}")
    return profile.id


def _secrets_from_stdin(names: tuple[str, ...]) -> dict:
    """One line per secret named with --secret, in that order, from standard input."""
    out = {}
    for name in names:
        line = sys.stdin.readline()
        if not line:
            fail(f"expected a line on standard input for {name}")
        out[name] = line.rstrip("\r\n") or None
    return out


def _fields(fn):
    for flag, dest, label in reversed(FIELD_OPTIONS):
        fn = click.option(flag, dest, default=None, help=label + ".")(fn)
    fn = click.option("--profile", "profile_name", default=None, help="Deployment profile name.")(fn)
    fn = click.option("--secret", "secret_names", multiple=True, type=click.Choice(list(USER_SECRETS)),
                      help="Read this secret from standard input (one line each; empty clears).")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)
    return fn


def _print_user(user: User, as_json: bool) -> None:
    data = user_json(user)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key == "secrets":
            value = ", ".join(f"{USER_SECRETS[k]}: {'set' if v else 'not set'}" for k, v in value.items())
        click.echo(f"{key:>18}: {'' if value is None else value}")


@click.group("users")
def users_group():
    """Users: list, show, add, edit, delete."""


@users_group.command("list")
@click.option("--search", default="", help="Words in names, number, e-mail, user names, account, login id.")
@click.option("--profile", "profile_name", default=None, help="Only users on this profile.")
@click.option("--sort", default="last_name", show_default=True)
@click.option("--page", default=1, show_default=True)
@click.option("--per-page", default=100, show_default=True, type=click.Choice(["50", "100", "500"]))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(search, profile_name, sort, page, per_page, as_json):
    """List users (the Users tab's search, sort and pages)."""
    args = {"search": search, "sort": sort, "page": page, "per_page": per_page}
    if profile_name:
        args["profile"] = _profile_id(profile_name)
    result = list_users(UserQuery.from_mapping(args))
    if as_json:
        click.echo(json.dumps({"total": result.total, "page": result.query.page,
                               "items": [user_json(u) for u in result.users]}, indent=2))
        return
    click.echo(f"{result.total} users (page {result.query.page} of {result.pages})")
    for u in result.users:
        deployed = u.deployed_at.strftime("%Y-%m-%d %H:%M") if u.deployed_at else "-"
        downloaded = u.downloaded_at.strftime("%Y-%m-%d %H:%M") if u.downloaded_at else "-"
        click.echo(f"{u.id:>7}  {u.login_id:<24} {u.display_name:<28} {u.email:<32} "
                   f"{u.profile.name:<16} deployed {deployed}  downloaded {downloaded}")


@users_group.command("show")
@click.argument("login_id")
@click.option("--json", "as_json", is_flag=True)
def show_command(login_id, as_json):
    """One user (secrets only as set / not set)."""
    _print_user(_user_by_login(login_id), as_json)


@users_group.command("add")
@click.argument("login_id")
@_fields
def add_command(login_id, profile_name, secret_names, as_json, **fields):
    """Add a manual user. Secrets are read from stdin, never from the command line."""
    values = {k: (v or "") for k, v in fields.items()}
    values["login_id"] = login_id
    values["profile_id"] = _profile_id(profile_name) or default_profile().id
    result = users.save_user(None, values, _secrets_from_stdin(secret_names), actor="cli")
    _print_user(result.user, as_json) if as_json else click.echo(f"user {login_id} added (id {result.user.id})")


@users_group.command("edit")
@click.argument("login_id")
@click.option("--login-id", "new_login_id", default=None, help="Change the ID (the client must be redeployed).")
@_fields
def edit_command(login_id, new_login_id, profile_name, secret_names, as_json, **fields):
    """Change a user: only the options given change."""
    user = _user_by_login(login_id)
    values = {k: v for k, v in fields.items() if v is not None}
    values["login_id"] = new_login_id or user.login_id
    values["profile_id"] = _profile_id(profile_name) or user.profile_id
    result = users.save_user(user, values, _secrets_from_stdin(secret_names), actor="cli")
    if result.id_changed:
        redeploy_after_id_change(result.user, actor="cli")
        click.echo("The ID changed: the client app must be factory reset and a new deployment "
                   f"e-mail sent (flask --app app cds deploy --user {result.user.login_id}).", err=True)
    _print_user(result.user, as_json) if as_json else click.echo(
        f"user {result.user.login_id}: " + (", ".join(result.changed) or "nothing changed"))


@users_group.command("delete")
@click.argument("login_ids", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_command(login_ids, yes):
    """Delete users: their links and device credentials stop working."""
    ids = [_user_by_login(login).id for login in login_ids]
    if not yes and not click.confirm(f"Delete {len(ids)} user(s)?"):
        fail("nothing deleted")
    # Naming each user (or --yes) is the shell's confirmation, however many there are.
    job = start_action("delete", parse_selection({"ids": ids}), params={"confirm": "all"},
                       actor="cli", inline=True)
    click.echo(f"{job.succeeded} deleted, {job.failed} failed")
    if job.failed:
        sys.exit(1)


commands = [users_group]
