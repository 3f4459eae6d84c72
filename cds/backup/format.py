"""The backup archive's format: its members and limits, the errors a backup or restore
raises, and the private files its work is done in."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from flask import current_app

from cds import errors

FORMAT = "cds-backup/1"
ENCRYPTED_MAGIC = b"CDS-BACKUP-ENCRYPTED/1\n"
GZIP_MAGIC = b"\x1f\x8b"
# Not data: the migration bookkeeping (recorded in the manifest instead) and
# APScheduler's job store, which the scheduler rebuilds when it starts.
SKIPPED_TABLES = {"alembic_version", "apscheduler_jobs"}
ALLOWED_MEMBER = re.compile(r"^(manifest\.json|data/[A-Za-z0-9_]+\.jsonl|keys/(encryption\.key|secret_key)"
                            r"|instance/config\.py)$")
MIN_PASSPHRASE = 8
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 17, 8, 1
CHUNK = 1024 * 1024
INSERT_BATCH = 2000


class BackupError(errors.Invalid):
    """The backup or restore cannot be done; the message says why in one line."""


class ArchiveInvalid(BackupError):
    """Not a CDS backup, or damaged or truncated."""


class PassphraseRequired(BackupError):
    pass


class WrongPassphrase(BackupError):
    pass


class SchemaTooNew(BackupError):
    """The archive comes from a newer CDS than this one."""


class RestoreRefused(BackupError):
    """The restore would not leave a working instance (a server running, a key conflict)."""


def check_passphrase(passphrase: str | None) -> None:
    if passphrase is not None and passphrase != "" and len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"The passphrase must have at least {MIN_PASSPHRASE} characters.")


def private_tempdir(prefix: str) -> Path:
    # Inside instance/ (mode 0700): the work files hold the keys and every secret.
    return Path(tempfile.mkdtemp(prefix=prefix, dir=current_app.instance_path))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def sqlite_path(engine) -> str:
    path = engine.url.database
    if not path or path == ":memory:":
        raise BackupError("An in-memory SQLite database cannot be backed up.")
    return path
