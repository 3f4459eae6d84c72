"""Reading and checking an archive before anything changes: sealed or not, its
members, their checksums against the manifest, and a schema revision this CDS knows."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import zlib
from pathlib import Path

from flask import current_app

from cds.backup.container import decrypt_file
from cds.backup.format import (ALLOWED_MEMBER, CHUNK, ENCRYPTED_MAGIC, FORMAT, GZIP_MAGIC, ArchiveInvalid,
                               BackupError, SchemaTooNew, private_tempdir, sha256)
from cds.extensions import migrations
from cds.version import __version__


def open_archive(path: Path, passphrase: str | None, work: Path) -> tuple[Path, list[str]]:
    """The plain tar.gz of the archive at ``path`` (decrypted into ``work`` if sealed)."""
    notes = []
    if not path.is_file():
        raise BackupError(f"{path} does not exist or is not a file.")
    with open(path, "rb") as fh:
        start = fh.read(len(ENCRYPTED_MAGIC))
    if start.startswith(ENCRYPTED_MAGIC):
        plain = work / "backup.tar.gz"
        decrypt_file(path, plain, passphrase)
        return plain, notes
    if not start.startswith(GZIP_MAGIC):
        raise ArchiveInvalid(f"{path.name} is not a CDS backup archive; nothing was changed.")
    if passphrase:
        notes.append("The archive is not protected by a passphrase; the passphrase was not needed.")
    return path, notes


def extract(tarball: Path, into: Path) -> dict:
    """Unpack the expected members into ``into`` and check them against the manifest."""
    damaged = "The backup archive is damaged or truncated ({}); nothing was changed."
    try:
        # Reading the whole gzip stream checks its CRC and length: corruption or
        # truncation anywhere is found before anything else is looked at.
        with gzip.open(tarball, "rb") as stream:
            while stream.read(CHUNK):
                pass
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not ALLOWED_MEMBER.match(member.name):
                    raise ArchiveInvalid(f"The archive holds an unexpected entry {member.name!r}; "
                                         "it is not a CDS backup. Nothing was changed.")
                target = into / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
    except ArchiveInvalid:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ArchiveInvalid(damaged.format(str(exc) or exc.__class__.__name__)) from None
    try:
        manifest = json.loads((into / "manifest.json").read_text())
    except (OSError, ValueError):
        raise ArchiveInvalid("The archive has no readable manifest; it is not a CDS backup. "
                             "Nothing was changed.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveInvalid(f"Unknown backup format {manifest.get('format') if isinstance(manifest, dict) else None!r} "
                             f"(this CDS reads {FORMAT}); nothing was changed.")
    for key in ("schema_revisions", "tables", "files", "created_at"):
        if key not in manifest:
            raise ArchiveInvalid(f"The manifest lacks {key!r}; nothing was changed.")
    for name, digest in manifest["files"].items():
        member = into / name
        if not ALLOWED_MEMBER.match(name) or not member.is_file():
            raise ArchiveInvalid(damaged.format(f"{name} is missing"))
        if sha256(member) != digest:
            raise ArchiveInvalid(damaged.format(f"checksum of {name} does not match"))
    for table in manifest["tables"]:
        if f"data/{table}.jsonl" not in manifest["files"]:
            raise ArchiveInvalid(damaged.format(f"data of table {table} is missing"))
    if "keys/encryption.key" not in manifest["files"]:
        raise ArchiveInvalid(damaged.format("the encryption key is missing"))
    return manifest


def script_directory():
    # Alembic is imported where it is used: the serving process loads every command
    # module (this one with them) and never needs it.
    from alembic.script import ScriptDirectory

    return ScriptDirectory(migrations(current_app).directory)


def check_revisions(revisions: list[str]) -> None:
    from alembic.util import CommandError  # lazy, as in script_directory

    script = script_directory()
    if not revisions:
        raise ArchiveInvalid("The backup records no schema revision; nothing was changed.")
    for revision in revisions:
        try:
            known = script.get_revision(revision)
        except CommandError:
            known = None
        if known is None:
            raise SchemaTooNew(
                f"The backup comes from a newer CDS (schema revision {revision} is unknown to this "
                f"version, {__version__}). Upgrade CDS first, then restore. Nothing was changed.")


def inspect_backup(source: str | os.PathLike, passphrase: str | None = None) -> dict:
    """Check an archive without restoring it; returns its manifest."""
    work = private_tempdir(".restore-")
    try:
        tarball, _ = open_archive(Path(source), passphrase, work)
        manifest = extract(tarball, work / "archive")
        check_revisions(manifest["schema_revisions"])
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)
