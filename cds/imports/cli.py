"""`flask --app app cds import-csv …`."""
from __future__ import annotations

from pathlib import Path

import click

from cds.cli import fail
from cds.imports.csv_import import MAX_LISTED_ERRORS, CsvOptions, CsvProblem, CsvRejected, commit_import, plan_import
from cds.profiles.service import find_profile_by_name


@click.command("import-csv")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--partial", is_flag=True, help="Skip rows with errors (default: all or nothing).")
@click.option("--overwrite", is_flag=True, help="Rows with an ID update that existing user.")
@click.option("--profile", "profile_name", default=None,
              help="Give every row this profile (default: the Profile column).")
@click.option("--empty-cells", type=click.Choice(["keep", "clear"]), default="keep",
              show_default=True, help="What an empty cell does to a user being updated.")
@click.option("--dry-run", is_flag=True, help="Only show the preview; write nothing.")
def import_csv_command(file: Path, partial, overwrite, profile_name, empty_cells, dry_run):
    """Import users from a CSV file (the format of the template in Import Users)."""
    profile_id = None
    if profile_name:
        profile = find_profile_by_name(profile_name)
        if profile is None:
            fail(f"no deployment profile is named {profile_name!r}")
        profile_id = profile.id
    options = CsvOptions(partial=partial, overwrite=overwrite, profile_id=profile_id,
                         empty_cells=empty_cells)
    data = file.read_bytes()
    try:
        plan = plan_import(data, options)
    except CsvProblem as exc:
        fail(f"{file.name}: {exc}")
    click.echo(f"{file.name}: {len(plan.rows)} rows — {plan.count('create')} new, "
               f"{plan.count('update')} updates, {plan.count('unchanged')} unchanged, "
               f"{plan.error_count} with errors")
    for text in ([f"unknown columns (not imported): {', '.join(plan.unknown_columns)}"]
                 if plan.unknown_columns else []) + \
            ([f"missing columns: {', '.join(plan.missing_columns)}"] if plan.missing_columns else []) \
            + plan.notes:
        click.echo(f"  note: {text}")
    for row in plan.error_rows[:MAX_LISTED_ERRORS]:
        click.echo(f"  line {row.line}{' (' + row.login_id + ')' if row.login_id else ''}: "
                   f"{' '.join(row.errors)}", err=True)
    if plan.error_count > MAX_LISTED_ERRORS:
        click.echo(f"  … and {plan.error_count - MAX_LISTED_ERRORS} more rows with errors", err=True)
    if dry_run:
        click.echo("dry run: nothing written")
        return
    try:
        result = commit_import(data, options, actor="cli", file_name=file.name)
    except CsvRejected as exc:
        fail(f"{exc} Fix the rows above, or use --partial to skip them.")
    except CsvProblem as exc:
        fail(f"{file.name}: {exc}")
    click.echo(result.describe())


commands = [import_csv_command]
