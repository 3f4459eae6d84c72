"""Restoring an archive, all or nothing: the new database is built aside at the
archive's schema revision, the rows loaded, this code's migrations run, and only then
is it swapped in — a new SQLite file put in place with os.replace, or, on PostgreSQL,
one transaction that drops and rebuilds every table (PostgreSQL DDL is transactional,
so a failure leaves the previous database untouched). The keys are installed with it
and put back if the swap fails."""
from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from flask import current_app
from sqlalchemy import MetaData, create_engine, func, select, text
from sqlalchemy.engine import Connection

from cds.audit.service import record_event
from cds.backup.archive import check_revisions, extract, open_archive, script_directory
from cds.backup.format import ArchiveInvalid, RestoreRefused, private_tempdir, sqlite_path, write_private
from cds.backup.tables import load_rows, reset_sequences
from cds.extensions import db
from cds.models import AdminAccount, User
from cds.scheduler import ADVISORY_LOCK_KEY
from cds.security import make_cipher

log = logging.getLogger("cds.backup")


@dataclass
class RestoreResult:
    created_at: str
    cds_version: str
    from_revisions: list[str]
    to_revisions: list[str]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


def _migrate(conn: Connection, destination: str, cipher=None) -> None:
    """Run this code's migrations on ``conn`` up to ``destination`` (a revision or "heads").
    ``cipher``: the archive's key, for migrations that re-encrypt secrets."""
    # lazy: Alembic stays out of the serving process (see archive.script_directory)
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext


    script = script_directory()
    config = Config()
    config.set_main_option("script_location", script.dir)
    config.attributes["cds_cipher"] = cipher

    def upgrade(rev, context):
        return script._upgrade_revs(destination, rev)

    with EnvironmentContext(config, script, fn=upgrade, destination_rev=destination) as env:
        env.configure(connection=conn, target_metadata=db.metadata)
        with env.begin_transaction():
            env.run_migrations()


def _build(conn: Connection, manifest: dict, data_dir: Path, key_files: _KeyFiles) -> tuple[dict, list[str]]:
    for revision in manifest["schema_revisions"]:
        _migrate(conn, revision)
    counts = load_rows(conn, manifest, data_dir)
    _migrate(conn, "heads", make_cipher(key_files.keys["encryption.key"]))
    revisions = sorted(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    return counts, revisions


def _server_running() -> bool:
    """True when a serving CDS process holds the scheduler lock of this instance/database."""
    leader = current_app.extensions.get("cds_scheduler")
    if leader is not None and leader.running:
        return False  # this very process (restore from inside a running app)
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}).scalar()
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
            conn.commit()
        return not got
    lock = Path(current_app.instance_path) / "scheduler.lock"
    if not lock.exists():
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


class _KeyFiles:
    """Installs the archive's keys into instance/, each atomically, and can put the old ones back."""

    def __init__(self, instance: Path, keys: dict[str, str]):
        self.instance = instance
        self.keys = keys  # file name -> new content
        self.previous: dict[str, bytes | None] = {}

    def install(self) -> None:
        for name, content in self.keys.items():
            path = self.instance / name
            self.previous[name] = path.read_bytes() if path.exists() else None
            staged = self.instance / f".{name}.restore"
            write_private(staged, (content + "\n").encode())
            os.replace(staged, path)

    def revert(self) -> None:
        for name, old in self.previous.items():
            path = self.instance / name
            if old is None:
                path.unlink(missing_ok=True)
            else:
                staged = self.instance / f".{name}.restore"
                write_private(staged, old)
                os.replace(staged, path)


def _check_key_source(archive_key: str) -> None:
    """An encryption key set outside instance/ would override the restored one: refuse early."""
    app = current_app
    key_file = Path(app.instance_path) / "encryption.key"
    from_file = key_file.exists() and key_file.read_text().strip() == app.config["ENCRYPTION_KEY"]
    if from_file or app.config["ENCRYPTION_KEY"] == archive_key:
        return
    where = "CDS_ENCRYPTION_KEY" if os.environ.get("CDS_ENCRYPTION_KEY") else "instance/config.py"
    raise RestoreRefused(
        f"This instance takes its encryption key from {where}, and it is not the key in the backup, "
        f"so the restored secrets could not be decrypted. Remove ENCRYPTION_KEY from {where} "
        "(the restore installs instance/encryption.key from the backup) or set it to the "
        "backup's key, then restore again. Nothing was changed.")


def instance_has_data() -> bool:
    """Whether a restore would replace users or administrators (the CLI asks first)."""
    try:
        return bool(db.session.scalar(select(func.count()).select_from(User))
                    or db.session.scalar(select(func.count()).select_from(AdminAccount)))
    except Exception:
        db.session.rollback()
        return False
    finally:
        db.session.rollback()


def restore_backup(source: str | os.PathLike, passphrase: str | None = None,
                   actor: str = "cli") -> RestoreResult:
    """Replace this instance's database and keys with the archive's, all or nothing."""
    app = current_app._get_current_object()
    instance = Path(app.instance_path)
    work = private_tempdir(".restore-")
    try:
        tarball, notes = open_archive(Path(source), passphrase, work)
        unpacked = work / "archive"
        manifest = extract(tarball, unpacked)
        check_revisions(manifest["schema_revisions"])
        keys = {"encryption.key": (unpacked / "keys" / "encryption.key").read_text().strip()}
        if (unpacked / "keys" / "secret_key").is_file():
            keys["secret_key"] = (unpacked / "keys" / "secret_key").read_text().strip()
        _check_key_source(keys["encryption.key"])
        if _server_running():
            raise RestoreRefused("A CDS server is running on this instance (it holds the scheduler "
                                 "lock). Stop every CDS process, then restore. Nothing was changed.")
        db.session.remove()
        key_files = _KeyFiles(instance, keys)
        if db.engine.dialect.name == "sqlite":
            counts, revisions = _restore_sqlite(manifest, unpacked / "data", key_files, work)
        else:
            counts, revisions = _restore_postgresql(manifest, unpacked / "data", key_files)
        notes += _install_config(unpacked / "instance" / "config.py", instance)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _use_restored_keys(app, keys)
    result = RestoreResult(manifest["created_at"], manifest.get("cds_version", "?"),
                           manifest["schema_revisions"], revisions, counts, notes)
    record_event("backup.restored", actor=actor, actor_type="system" if actor == "cli" else None,
                 count=counts.get("user", 0),
                 detail={"backup_created_at": result.created_at, "from_revisions": result.from_revisions,
                         "to_revisions": revisions})
    log.info("restore done: backup of %s, %s users, schema %s -> %s", result.created_at,
             counts.get("user", 0), ",".join(result.from_revisions), ",".join(revisions))
    return result


def _restore_sqlite(manifest: dict, data_dir: Path, key_files: _KeyFiles,
                    work: Path) -> tuple[dict, list[str]]:
    target = Path(sqlite_path(db.engine))
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = target.with_name(f".{target.name}.restore-{secrets.token_hex(4)}")
    engine = create_engine(f"sqlite:///{aside}")
    try:
        try:
            with engine.begin() as conn:
                counts, revisions = _build(conn, manifest, data_dir, key_files)
        finally:
            engine.dispose()
        os.chmod(aside, 0o600)
        # Fold the write-ahead log into the file, so the one file is the whole database.
        raw = sqlite3.connect(aside)
        try:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            raw.execute("PRAGMA journal_mode=DELETE")
            if raw.execute("PRAGMA foreign_key_check").fetchone() is not None:
                raise ArchiveInvalid("The backup's rows break a foreign key; nothing was changed.")
        finally:
            raw.close()
        db.engine.dispose()
        if target.exists():
            raw = sqlite3.connect(target, timeout=30)
            try:
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                raw.close()
        key_files.install()
        try:
            os.replace(aside, target)
        except OSError:
            key_files.revert()
            raise
    finally:
        for leftover in (aside, Path(f"{aside}-wal"), Path(f"{aside}-shm"), Path(f"{aside}-journal")):
            leftover.unlink(missing_ok=True)
    return counts, revisions


def _restore_postgresql(manifest: dict, data_dir: Path, key_files: _KeyFiles) -> tuple[dict, list[str]]:
    with db.engine.connect() as conn:
        trans = conn.begin()
        try:
            # Wait at most a little for other sessions' locks rather than hang.
            conn.execute(text("SET LOCAL lock_timeout = '15s'"))
            existing = MetaData()
            existing.reflect(bind=conn)
            doomed = [t for t in existing.sorted_tables if t.name != "apscheduler_jobs"]
            existing.drop_all(bind=conn, tables=doomed)
            counts, revisions = _build(conn, manifest, data_dir, key_files)
            reset_sequences(conn)
            key_files.install()
        except BaseException:
            trans.rollback()
            key_files.revert()
            raise
        try:
            trans.commit()
        except BaseException:
            key_files.revert()
            raise
    db.engine.dispose()
    return counts, revisions


def _install_config(archived: Path, instance: Path) -> list[str]:
    if not archived.is_file():
        return []
    current = instance / "config.py"
    content = archived.read_bytes()
    if not current.exists():
        write_private(current, content)
        return ["Installed instance/config.py from the backup."]
    if current.read_bytes() == content:
        return []
    aside = instance / "config.py.restored"
    write_private(aside, content)
    return ["instance/config.py differs from the backup's; kept the current one and wrote the "
            "backup's as instance/config.py.restored for comparison."]


def _use_restored_keys(app, keys: dict[str, str]) -> None:
    """This process goes on with the restored keys, as a restarted one would."""
    instance = Path(app.instance_path)
    if (instance / "encryption.key").read_text().strip() == keys["encryption.key"] and \
            not os.environ.get("CDS_ENCRYPTION_KEY"):
        app.config["ENCRYPTION_KEY"] = keys["encryption.key"]
        app.extensions["cds_cipher"] = make_cipher(keys["encryption.key"])
    if "secret_key" in keys and not os.environ.get("CDS_SECRET_KEY"):
        app.config["SECRET_KEY"] = keys["secret_key"]
    db.session.remove()
    db.engine.dispose()
