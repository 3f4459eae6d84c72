"""Creating a backup while the console keeps running: on SQLite the tables are read
from a snapshot taken with SQLite's online backup API; on PostgreSQL inside one
REPEATABLE READ, read-only transaction. The archive is written aside and put in
place atomically (mode 0600)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flask import current_app
from sqlalchemy import create_engine, select

from cds.audit.service import record_event
from cds.backup.container import encrypt_file
from cds.backup.format import FORMAT, BackupError, check_passphrase, private_tempdir, sha256, sqlite_path, write_private
from cds.backup.tables import export_tables
from cds.extensions import db
from cds.models import AuditEvent, utcnow
from cds.version import __version__

log = logging.getLogger("cds.backup")


@dataclass
class BackupResult:
    path: Path
    size: int
    encrypted: bool
    revisions: list[str]
    counts: dict[str, int]


def _export_database(data_dir: Path, work: Path) -> tuple[str, list[str], dict]:
    engine = db.engine
    dialect = engine.dialect.name
    if dialect == "sqlite":
        # A page-level copy taken while the console keeps running, then read at leisure.
        snapshot = work / "snapshot.sqlite3"
        source = sqlite3.connect(sqlite_path(engine), timeout=30)
        target = sqlite3.connect(snapshot)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        copy = create_engine(f"sqlite:///{snapshot}")
        try:
            with copy.connect() as conn:
                revisions, tables = export_tables(conn, data_dir)
        finally:
            copy.dispose()
        return dialect, revisions, tables
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            revisions, tables = export_tables(conn, data_dir)
    return dialect, revisions, tables


def create_backup(destination: str | os.PathLike, passphrase: str | None = None, *,
                  actor: str | None = None) -> BackupResult:
    """Write a backup of this instance to ``destination`` (mode 0600, replaced atomically).

    ``actor`` names who asked, for the audit log (default: the signed-in administrator)."""
    check_passphrase(passphrase)
    destination = Path(destination)
    if destination.is_dir():
        raise BackupError(f"{destination} is a folder; give a file name for the backup.")
    if not destination.parent.is_dir():
        raise BackupError(f"The folder {destination.parent} does not exist.")
    app = current_app
    work = private_tempdir(".backup-")
    try:
        stage = work / "archive"
        (stage / "data").mkdir(parents=True)
        (stage / "keys").mkdir()
        dialect, revisions, tables = _export_database(stage / "data", work)
        write_private(stage / "keys" / "encryption.key", (app.config["ENCRYPTION_KEY"] + "\n").encode())
        write_private(stage / "keys" / "secret_key", (app.config["SECRET_KEY"] + "\n").encode())
        config_file = Path(app.instance_path) / "config.py"
        if config_file.is_file():
            (stage / "instance").mkdir()
            shutil.copyfile(config_file, stage / "instance" / "config.py")
        members = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "cds_version": __version__,
            "created_at": utcnow().isoformat() + "Z",
            "dialect": dialect,
            "schema_revisions": revisions,
            "tables": tables,
            "files": {name: sha256(stage / name) for name in members},
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1))
        tarball = work / "backup.tar.gz"
        with tarfile.open(tarball, "w:gz", compresslevel=6) as tar:
            for name in ["manifest.json", *members]:
                tar.add(stage / name, arcname=name, filter=_anonymous)
        partial = destination.with_name(f".{destination.name}.partial")
        try:
            if passphrase:
                encrypt_file(tarball, partial, passphrase)
            else:
                shutil.copyfile(tarball, partial)
                os.chmod(partial, 0o600)
            os.replace(partial, destination)
        finally:
            if partial.exists():
                partial.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counts = {name: t["rows"] for name, t in tables.items()}
    size = destination.stat().st_size
    record_event("backup.created", actor=actor, actor_type="system" if actor == "cli" else None,
                 count=counts.get("user", 0),
                 detail={"encrypted": bool(passphrase), "size": size, "schema_revisions": revisions})
    log.info("backup written: %s tables, %s users, %s bytes, %s", len(tables), counts.get("user", 0),
             size, "encrypted" if passphrase else "not encrypted")
    return BackupResult(destination, size, bool(passphrase), revisions, counts)


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o600
    return info


@contextmanager
def temporary_backup(passphrase: str | None = None):
    """A backup in a private temporary file, removed afterwards (for downloads)."""
    work = private_tempdir(".download-")
    try:
        yield create_backup(work / "backup", passphrase)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def download_name(encrypted: bool) -> str:
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    return f"cds-backup-{stamp}.{'cdsbackup' if encrypted else 'tar.gz'}"


def last_backups(limit: int = 5):
    return list(db.session.scalars(select(AuditEvent).where(
        AuditEvent.action.in_(["backup.created", "backup.restored"]))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)))
