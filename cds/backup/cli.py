"""`flask --app app cds backup FILE` and `cds restore FILE`."""
from __future__ import annotations

import sys

import click

from cds.backup.archive import inspect_backup
from cds.backup.create import create_backup
from cds.backup.format import PassphraseRequired
from cds.backup.restore import instance_has_data, restore_backup
from cds.cli import fail


def _read_passphrase(from_stdin: bool, *, confirm: bool) -> str | None:
    if not from_stdin:
        return None
    if sys.stdin.isatty():
        return click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
    return sys.stdin.readline().rstrip("\r\n")


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--passphrase-stdin", is_flag=True,
              help="Protect the archive with a passphrase read from standard input "
                   "(prompted for on a terminal).")
def backup_command(file, passphrase_stdin):
    """Write a backup archive of this instance (database, keys, settings) to FILE."""
    passphrase = _read_passphrase(passphrase_stdin, confirm=True)
    if passphrase_stdin and not passphrase:
        fail("no passphrase was given on standard input")
    result = create_backup(file, passphrase, actor="cli")  # BackupError: fail
    click.echo(f"backup written to {result.path} ({result.size:,} bytes, "
               f"{result.counts.get('user', 0):,} users, schema {', '.join(result.revisions)})")
    if not result.encrypted:
        click.echo("warning: the archive is not protected by a passphrase and holds the key to "
                   "every stored secret; keep it as safe as the instance folder", err=True)


@click.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--passphrase-stdin", is_flag=True,
              help="Read the archive's passphrase from standard input (prompted for on a terminal).")
@click.option("--yes", is_flag=True, help="Replace existing data without asking.")
def restore_command(file, passphrase_stdin, yes):
    """Replace this instance's database, keys and settings with those in the backup FILE.

    Stop every CDS process using this instance or database first. The archive is
    checked completely before anything changes; a failed restore changes nothing.
    """
    passphrase = _read_passphrase(passphrase_stdin, confirm=False)
    try:
        manifest = inspect_backup(file, passphrase)
    except PassphraseRequired:
        if not sys.stdin.isatty():
            fail("this backup is protected by a passphrase; give it with --passphrase-stdin")
        passphrase = click.prompt("Passphrase", hide_input=True)
        manifest = inspect_backup(file, passphrase)  # BackupError: fail
    users = manifest["tables"].get("user", {}).get("rows", 0)
    click.echo(f"backup of {manifest['created_at']} (CDS {manifest.get('cds_version', '?')}, "
               f"schema {', '.join(manifest['schema_revisions'])}): {users:,} users")
    if instance_has_data() and not yes:
        if passphrase_stdin or not sys.stdin.isatty():
            fail("this instance already has data; add --yes to replace it with the backup")
        click.confirm("This replaces every user, profile, administrator and setting of this "
                      "instance with the backup's. Continue?", abort=True)
    result = restore_backup(file, passphrase)  # BackupError: fail
    click.echo(f"restored {result.counts.get('user', 0):,} users; schema "
               f"{', '.join(result.from_revisions)} -> {', '.join(result.to_revisions)}")
    for note in result.notes:
        click.echo(f"note: {note}")


commands = [backup_command, restore_command]
