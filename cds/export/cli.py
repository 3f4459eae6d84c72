"""`flask --app app cds export-csv`: the Users export from the shell."""
from __future__ import annotations

import os
import sys
import tempfile

import click
from flask.cli import with_appcontext

from cds.cli import fail
from cds.export.service import start_export
from cds.profiles.service import find_profile_by_name
from cds.users.query import UserFilter


@click.command("export-csv")
@click.option("--search", default="", help="Only users matching this text (as the Users tab search).")
@click.option("--profile", "profile_name", default=None, help="Only users of this deployment profile.")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Write to this file (default: standard output).")
@with_appcontext
def export_csv_command(search, profile_name, output):
    """Export users as CSV (UTF-8 with BOM); never contains the users' secrets."""
    filt = UserFilter(search=search.strip())
    if profile_name is not None:
        profile = find_profile_by_name(profile_name)
        if profile is None:
            fail(f"no deployment profile is named {profile_name!r}")
        filt.profile = profile.id
    selection = {"filter": filt.to_dict()}
    if output is None:
        total, chunks = start_export(selection, actor="cli", via="cli")
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk.encode("utf-8"))
        out.flush()
        return
    # Written beside the target and renamed at the end: never a half-written file.
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        fail(f"directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".csv", dir=directory)
    try:
        total, chunks = start_export(selection, actor="cli", via="cli")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            for chunk in chunks:
                fh.write(chunk)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    click.echo(f"exported {total} users to {output}", err=True)


commands = [export_csv_command]
