"""`flask --app app cds profiles list|show|add|edit|delete|set-default`."""
import json

import click

from cds.api.schema import profile_json
from cds.cli import fail
from cds.clients import kind_of, profile_problems
from cds.profiles import service as profiles

INT_FIELDS = {"mbg_sip_port", "pbx_sip_port", "mcs_port", "link_validity_hours"}


def _find(name: str):
    profile = profiles.find_profile_by_name(name)
    if profile is None:
        fail(f"no deployment profile named {name!r}")
    return profile


def _options(fn):
    for field in reversed(profiles.PROFILE_FIELDS):
        if field == "name":
            continue
        flag = "--" + field.replace("_", "-")
        fn = click.option(flag, field, type=int if field in INT_FIELDS else str, default=None)(fn)
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)


def _show(profile, as_json: bool) -> None:
    data = profile_json(profile, profiles.user_counts().get(profile.id, 0))
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            click.echo(f"{key:>20}: {value}")


@click.group("profiles")
def profiles_group():
    """Deployment profiles: list, show, add, edit, delete, set-default."""


@profiles_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_command(as_json):
    counts = profiles.user_counts()
    rows = profiles.all_profiles()
    if as_json:
        click.echo(json.dumps([profile_json(p, counts.get(p.id, 0)) for p in rows], indent=2))
        return
    for p in rows:
        flags = " (default)" if p.is_default else (" (built-in)" if p.is_do_not_deploy else "")
        missing = profile_problems(p)
        client = "" if p.is_do_not_deploy else kind_of(p).label
        click.echo(f"{p.id:>4}  {p.name + flags:<32} {counts.get(p.id, 0):>7} users  {client}"
                   + (f"  INCOMPLETE: {'; '.join(missing)}" if missing else ""))


@profiles_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def show_command(name, as_json):
    _show(_find(name), as_json)


@profiles_group.command("add")
@click.argument("name")
@click.option("--default", "make_default", is_flag=True, help="Make it the default for new users.")
@_options
def add_command(name, make_default, as_json, **fields):
    data = {k: v for k, v in fields.items() if v is not None}
    data["name"] = name
    profile = profiles.save_profile(None, data, actor="cli", make_default=make_default)
    _show(profile, as_json) if as_json else click.echo(f"profile {profile.name} added (id {profile.id})")


@profiles_group.command("edit")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="Rename it.")
@_options
def edit_command(name, new_name, as_json, **fields):
    profile = _find(name)
    data = {k: v for k, v in fields.items() if v is not None}
    if new_name:
        data["name"] = new_name
    profile = profiles.save_profile(profile, data, actor="cli")
    _show(profile, as_json) if as_json else click.echo(f"profile {profile.name} saved")


@profiles_group.command("set-default")
@click.argument("name")
def set_default_command(name):
    profiles.set_default(_find(name), actor="cli")
    click.echo(f"{name} is now the default profile for new users")


@profiles_group.command("delete")
@click.argument("name")
@click.option("--reassign-to", default=None, help="Move the profile's users to this profile first.")
def delete_command(name, reassign_to):
    profile = _find(name)
    target = _find(reassign_to) if reassign_to else None
    moved = profiles.delete_profile(profile, reassign_to=target, actor="cli")
    click.echo(f"profile {name} deleted" + (f"; {moved} users moved to {target.name}" if moved else ""))


commands = [profiles_group]
