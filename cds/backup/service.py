"""Backup and restore of a whole CDS instance, as one archive.

The archive is a tar.gz holding a manifest, one JSON-lines file per table (a
portable logical export, so an SQLite backup restores onto PostgreSQL and back),
the encryption and session keys, and instance/config.py when there is one.
With a passphrase the tar.gz is sealed in an AES-256-GCM container whose key
is derived from the passphrase with scrypt.

The copy is consistent while the console keeps running: on SQLite it is read
from a snapshot taken with SQLite's online backup API; on PostgreSQL every
table is read inside one REPEATABLE READ, read-only transaction.

A restore checks everything before it changes anything (format, checksums,
schema revision, keys), builds the new database aside at the archive's schema
revision, loads the rows, migrates to this code's revision, and only then
swaps it in: a new SQLite file put in place with os.replace, or, on
PostgreSQL, one transaction that drops and rebuilds every table (PostgreSQL
DDL is transactional, so a failure leaves the previous database untouched).
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import struct
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from flask import current_app
from sqlalchemy import (JSON, Boolean, Date, DateTime, Float, Integer, LargeBinary, MetaData,
                        Numeric, create_engine, func, select, text)
from sqlalchemy.engine import Connection

from cds import errors
from cds.version import __version__
from cds.extensions import db
from cds.models import utcnow

log = logging.getLogger("cds.backup")

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


@dataclass
class BackupResult:
    path: Path
    size: int
    encrypted: bool
    revisions: list[str]
    counts: dict[str, int]


@dataclass
class RestoreResult:
    created_at: str
    cds_version: str
    from_revisions: list[str]
    to_revisions: list[str]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


def check_passphrase(passphrase: str | None) -> None:
    if passphrase is not None and passphrase != "" and len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"The passphrase must have at least {MIN_PASSPHRASE} characters.")


# --- column values <-> JSON --------------------------------------------------

def _column_kind(column) -> str:
    kind = column.type
    if isinstance(kind, DateTime):
        return "datetime"
    if isinstance(kind, Date):
        return "date"
    if isinstance(kind, Boolean):
        return "bool"
    if isinstance(kind, JSON):
        return "json"
    if isinstance(kind, LargeBinary):
        return "bytes"
    if isinstance(kind, Integer):
        return "int"
    if isinstance(kind, (Float, Numeric)):
        return "number"
    return "str"


def _encode(kind: str, value):
    if value is None:
        return None
    if kind in ("datetime", "date"):
        return value.isoformat()
    if kind == "bytes":
        return base64.b64encode(value).decode()
    if kind == "number":
        return float(value)
    return value


def _decode(kind: str, value):
    if value is None:
        return None
    if kind == "datetime":
        return datetime.fromisoformat(value)
    if kind == "date":
        return date.fromisoformat(value)
    if kind == "bytes":
        return base64.b64decode(value)
    if kind == "bool":
        return bool(value)
    return value


# --- creating a backup -------------------------------------------------------

def _private_tempdir(prefix: str) -> Path:
    # Inside instance/ (mode 0700): the work files hold the keys and every secret.
    return Path(tempfile.mkdtemp(prefix=prefix, dir=current_app.instance_path))


def _export_tables(conn: Connection, data_dir: Path) -> tuple[list[str], dict]:
    """Write every table as JSON lines; returns (schema revisions, table manifest)."""
    meta = MetaData()
    meta.reflect(bind=conn, only=_data_tables(conn))
    revisions = []
    if "alembic_version" in meta.tables:
        revisions = sorted(conn.execute(select(meta.tables["alembic_version"].c.version_num)).scalars())
    tables = {}
    for table in meta.sorted_tables:
        if table.name in SKIPPED_TABLES:
            continue
        columns = [(c.name, _column_kind(c)) for c in table.columns]
        order = list(table.primary_key.columns) or list(table.columns)
        path = data_dir / f"{table.name}.jsonl"
        rows = 0
        with open(path, "w", encoding="utf-8") as fh:
            result = conn.execution_options(yield_per=2000).execute(select(table).order_by(*order))
            for row in result:
                fh.write(json.dumps([_encode(kind, value) for (_, kind), value in zip(columns, row)],
                                    ensure_ascii=False, separators=(",", ":")))
                fh.write("\n")
                rows += 1
        tables[table.name] = {"rows": rows, "columns": columns}
    return revisions, tables


def _data_tables(conn: Connection) -> list[str]:
    """Ordinary tables only: on SQLite, full-text indexes (virtual tables and their
    shadow tables) are derived data that the migrations and triggers rebuild."""
    if conn.dialect.name == "sqlite":
        return [name for _, name, kind, *_ in conn.exec_driver_sql("PRAGMA main.table_list")
                if kind == "table" and not name.startswith("sqlite_")]
    from sqlalchemy import inspect
    return inspect(conn).get_table_names()


def _sqlite_path(engine) -> str:
    path = engine.url.database
    if not path or path == ":memory:":
        raise BackupError("An in-memory SQLite database cannot be backed up.")
    return path


def _export_database(data_dir: Path, work: Path) -> tuple[str, list[str], dict]:
    engine = db.engine
    dialect = engine.dialect.name
    if dialect == "sqlite":
        # A page-level copy taken while the console keeps running, then read at leisure.
        snapshot = work / "snapshot.sqlite3"
        source = sqlite3.connect(_sqlite_path(engine), timeout=30)
        target = sqlite3.connect(snapshot)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        copy = create_engine(f"sqlite:///{snapshot}")
        try:
            with copy.connect() as conn:
                revisions, tables = _export_tables(conn, data_dir)
        finally:
            copy.dispose()
        return dialect, revisions, tables
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            revisions, tables = _export_tables(conn, data_dir)
    return dialect, revisions, tables


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


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
    work = _private_tempdir(".backup-")
    try:
        stage = work / "archive"
        (stage / "data").mkdir(parents=True)
        (stage / "keys").mkdir()
        dialect, revisions, tables = _export_database(stage / "data", work)
        _write_private(stage / "keys" / "encryption.key", (app.config["ENCRYPTION_KEY"] + "\n").encode())
        _write_private(stage / "keys" / "secret_key", (app.config["SECRET_KEY"] + "\n").encode())
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
            "files": {name: _sha256(stage / name) for name in members},
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1))
        tarball = work / "backup.tar.gz"
        with tarfile.open(tarball, "w:gz", compresslevel=6) as tar:
            for name in ["manifest.json", *members]:
                tar.add(stage / name, arcname=name, filter=_anonymous)
        partial = destination.with_name(f".{destination.name}.partial")
        try:
            if passphrase:
                _encrypt_file(tarball, partial, passphrase)
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
    from cds.audit.service import record_event
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


# --- the passphrase container ------------------------------------------------
# MAGIC, one JSON header line (scrypt parameters, salt, nonce prefix, a check
# value that tells a wrong passphrase from a damaged file), then chunks of
# AES-256-GCM: 4-byte length + ciphertext. Each chunk's nonce holds its number
# and a last-chunk flag, and the header is authenticated with every chunk, so
# reordering, truncation and tampering are all detected.

def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> tuple[bytes, bytes]:
    out = Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(passphrase.encode())
    return out[:32], out[32:]


def _nonce(prefix: bytes, number: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", number) + (b"\x01" if last else b"\x00")


def _encrypt_file(source: Path, target: Path, passphrase: str) -> None:
    salt, prefix = secrets.token_bytes(16), secrets.token_bytes(7)
    key, check = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    header = ENCRYPTED_MAGIC + json.dumps({
        "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(), "cipher": "AES-256-GCM", "chunk": CHUNK,
        "nonce_prefix": base64.b64encode(prefix).decode(), "check": check.hex(),
    }).encode() + b"\n"
    aead = AESGCM(key)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
        out.write(header)
        number, block = 0, src.read(CHUNK)
        while True:
            following = src.read(CHUNK)
            sealed = aead.encrypt(_nonce(prefix, number, not following), block, header)
            out.write(struct.pack(">I", len(sealed)) + sealed)
            if not following:
                break
            number, block = number + 1, following


def _decrypt_file(source: Path, target: Path, passphrase: str | None) -> None:
    damaged = ArchiveInvalid("The backup archive is damaged or truncated (its encrypted data "
                             "does not verify); nothing was changed.")
    with open(source, "rb") as src:
        src.read(len(ENCRYPTED_MAGIC))
        line = src.readline(4096)
        try:
            params = json.loads(line)
            salt = base64.b64decode(params["salt"])
            prefix = base64.b64decode(params["nonce_prefix"])
            n, r, p, check = int(params["n"]), int(params["r"]), int(params["p"]), params["check"]
        except (ValueError, KeyError, TypeError):
            raise damaged from None
        if not passphrase:
            raise PassphraseRequired("This backup is protected by a passphrase; give it to restore.")
        if n > 2 ** 20 or r > 16 or p > 4:
            raise damaged
        key, expected = _derive(passphrase, salt, n, r, p)
        if not secrets.compare_digest(expected.hex(), check):
            raise WrongPassphrase("The passphrase is wrong for this backup; nothing was changed.")
        header = ENCRYPTED_MAGIC + line
        aead = AESGCM(key)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            number, length = 0, src.read(4)
            if len(length) != 4:
                raise damaged
            while True:
                size = struct.unpack(">I", length)[0]
                if size > CHUNK + 16:
                    raise damaged
                sealed = src.read(size)
                following = src.read(4)
                if len(sealed) != size or len(following) not in (0, 4):
                    raise damaged
                try:
                    out.write(aead.decrypt(_nonce(prefix, number, not following), sealed, header))
                except InvalidTag:
                    raise damaged from None
                if not following:
                    break
                number, length = number + 1, following


# --- reading and checking an archive -------------------------------------------

def _open_archive(path: Path, passphrase: str | None, work: Path) -> tuple[Path, list[str]]:
    """The plain tar.gz of the archive at ``path`` (decrypted into ``work`` if sealed)."""
    notes = []
    if not path.is_file():
        raise BackupError(f"{path} does not exist or is not a file.")
    with open(path, "rb") as fh:
        start = fh.read(len(ENCRYPTED_MAGIC))
    if start.startswith(ENCRYPTED_MAGIC):
        plain = work / "backup.tar.gz"
        _decrypt_file(path, plain, passphrase)
        return plain, notes
    if not start.startswith(GZIP_MAGIC):
        raise ArchiveInvalid(f"{path.name} is not a CDS backup archive; nothing was changed.")
    if passphrase:
        notes.append("The archive is not protected by a passphrase; the passphrase was not needed.")
    return path, notes


def _extract(tarball: Path, into: Path) -> dict:
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
        if _sha256(member) != digest:
            raise ArchiveInvalid(damaged.format(f"checksum of {name} does not match"))
    for table in manifest["tables"]:
        if f"data/{table}.jsonl" not in manifest["files"]:
            raise ArchiveInvalid(damaged.format(f"data of table {table} is missing"))
    if "keys/encryption.key" not in manifest["files"]:
        raise ArchiveInvalid(damaged.format("the encryption key is missing"))
    return manifest


def _script_directory():
    from alembic.script import ScriptDirectory
    from cds.extensions import migrations
    return ScriptDirectory(migrations(current_app).directory)


def _check_revisions(revisions: list[str]) -> None:
    from alembic.util import CommandError
    script = _script_directory()
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


# --- restoring -------------------------------------------------------------------

def _migrate(conn: Connection, destination: str, cipher=None) -> None:
    """Run this code's migrations on ``conn`` up to ``destination`` (a revision or "heads").
    ``cipher``: the archive's key, for migrations that re-encrypt secrets."""
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext

    script = _script_directory()
    config = Config()
    config.set_main_option("script_location", script.dir)
    config.attributes["cds_cipher"] = cipher

    def upgrade(rev, context):
        return script._upgrade_revs(destination, rev)

    with EnvironmentContext(config, script, fn=upgrade, destination_rev=destination) as env:
        env.configure(connection=conn, target_metadata=db.metadata)
        with env.begin_transaction():
            env.run_migrations()


def _load_rows(conn: Connection, manifest: dict, data_dir: Path) -> dict[str, int]:
    """Insert every table's rows into the schema built at the archive's revision."""
    meta = MetaData()
    meta.reflect(bind=conn, only=_data_tables(conn))
    archived = manifest["tables"]
    for name in archived:
        if name not in meta.tables:
            raise ArchiveInvalid(f"The backup has a table {name!r} that schema revision "
                                 f"{', '.join(manifest['schema_revisions'])} does not have; "
                                 "nothing was changed.")
    counts = {}
    for table in meta.sorted_tables:
        if table.name not in archived:
            continue
        columns = archived[table.name]["columns"]
        unknown = [c for c, _ in columns if c not in table.columns]
        if unknown:
            raise ArchiveInvalid(f"The backup's table {table.name} has columns {unknown} this "
                                 "schema revision does not have; nothing was changed.")
        loaded, batch = 0, []
        with open(data_dir / f"{table.name}.jsonl", encoding="utf-8") as fh:
            for line in fh:
                values = json.loads(line)
                batch.append({c: _decode(kind, v) for (c, kind), v in zip(columns, values)})
                if len(batch) >= INSERT_BATCH:
                    conn.execute(table.insert(), batch)
                    loaded, batch = loaded + len(batch), []
        if batch:
            conn.execute(table.insert(), batch)
            loaded += len(batch)
        if loaded != archived[table.name]["rows"]:
            raise ArchiveInvalid(f"Table {table.name} has {loaded} rows in the archive but the "
                                 f"manifest says {archived[table.name]['rows']}; nothing was changed.")
        counts[table.name] = loaded
    return counts


def _build(conn: Connection, manifest: dict, data_dir: Path, key_files: _KeyFiles) -> tuple[dict, list[str]]:
    from cds.security import make_cipher
    for revision in manifest["schema_revisions"]:
        _migrate(conn, revision)
    counts = _load_rows(conn, manifest, data_dir)
    _migrate(conn, "heads", make_cipher(key_files.keys["encryption.key"]))
    revisions = sorted(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    return counts, revisions


def _reset_sequences(conn: Connection) -> None:
    """Rows came with their ids: move each id sequence past the largest one."""
    meta = MetaData()
    meta.reflect(bind=conn)
    for table in meta.sorted_tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, Integer):
            continue
        quoted = conn.dialect.identifier_preparer.quote(table.name)
        sequence = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                {"t": quoted, "c": pk[0].name}).scalar()
        if sequence:
            top = conn.execute(select(func.max(pk[0]))).scalar()
            conn.execute(text("SELECT setval(:s, :v, :called)"),
                         {"s": sequence, "v": top or 1, "called": top is not None})


def _server_running() -> bool:
    """True when a serving CDS process holds the scheduler lock of this instance/database."""
    from cds.scheduler import ADVISORY_LOCK_KEY
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
    import fcntl
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
            _write_private(staged, (content + "\n").encode())
            os.replace(staged, path)

    def revert(self) -> None:
        for name, old in self.previous.items():
            path = self.instance / name
            if old is None:
                path.unlink(missing_ok=True)
            else:
                staged = self.instance / f".{name}.restore"
                _write_private(staged, old)
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
        from cds.models import AdminAccount, User
        return bool(db.session.scalar(select(func.count()).select_from(User))
                    or db.session.scalar(select(func.count()).select_from(AdminAccount)))
    except Exception:
        db.session.rollback()
        return False
    finally:
        db.session.rollback()


def inspect_backup(source: str | os.PathLike, passphrase: str | None = None) -> dict:
    """Check an archive without restoring it; returns its manifest."""
    work = _private_tempdir(".restore-")
    try:
        tarball, _ = _open_archive(Path(source), passphrase, work)
        manifest = _extract(tarball, work / "archive")
        _check_revisions(manifest["schema_revisions"])
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def restore_backup(source: str | os.PathLike, passphrase: str | None = None,
                   actor: str = "cli") -> RestoreResult:
    """Replace this instance's database and keys with the archive's, all or nothing."""
    app = current_app._get_current_object()
    instance = Path(app.instance_path)
    work = _private_tempdir(".restore-")
    try:
        tarball, notes = _open_archive(Path(source), passphrase, work)
        unpacked = work / "archive"
        manifest = _extract(tarball, unpacked)
        _check_revisions(manifest["schema_revisions"])
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
    from cds.audit.service import record_event
    record_event("backup.restored", actor=actor, actor_type="system" if actor == "cli" else None,
                 count=counts.get("user", 0),
                 detail={"backup_created_at": result.created_at, "from_revisions": result.from_revisions,
                         "to_revisions": revisions})
    log.info("restore done: backup of %s, %s users, schema %s -> %s", result.created_at,
             counts.get("user", 0), ",".join(result.from_revisions), ",".join(revisions))
    return result


def _restore_sqlite(manifest: dict, data_dir: Path, key_files: _KeyFiles,
                    work: Path) -> tuple[dict, list[str]]:
    target = Path(_sqlite_path(db.engine))
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
            _reset_sequences(conn)
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
        _write_private(current, content)
        return ["Installed instance/config.py from the backup."]
    if current.read_bytes() == content:
        return []
    aside = instance / "config.py.restored"
    _write_private(aside, content)
    return ["instance/config.py differs from the backup's; kept the current one and wrote the "
            "backup's as instance/config.py.restored for comparison."]


def _use_restored_keys(app, keys: dict[str, str]) -> None:
    """This process goes on with the restored keys, as a restarted one would."""
    from cds.security import make_cipher
    instance = Path(app.instance_path)
    if (instance / "encryption.key").read_text().strip() == keys["encryption.key"] and \
            not os.environ.get("CDS_ENCRYPTION_KEY"):
        app.config["ENCRYPTION_KEY"] = keys["encryption.key"]
        app.extensions["cds_cipher"] = make_cipher(keys["encryption.key"])
    if "secret_key" in keys and not os.environ.get("CDS_SECRET_KEY"):
        app.config["SECRET_KEY"] = keys["secret_key"]
    db.session.remove()
    db.engine.dispose()


@contextmanager
def temporary_backup(passphrase: str | None = None):
    """A backup in a private temporary file, removed afterwards (for downloads)."""
    work = _private_tempdir(".download-")
    try:
        yield create_backup(work / "backup", passphrase)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def download_name(encrypted: bool) -> str:
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    return f"cds-backup-{stamp}.{'cdsbackup' if encrypted else 'tar.gz'}"


def last_backups(limit: int = 5):
    from cds.models import AuditEvent
    return list(db.session.scalars(select(AuditEvent).where(
        AuditEvent.action.in_(["backup.created", "backup.restored"]))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)))


__all__ = ["BackupError", "ArchiveInvalid", "PassphraseRequired", "WrongPassphrase", "SchemaTooNew",
           "RestoreRefused", "create_backup", "restore_backup", "inspect_backup", "temporary_backup",
           "instance_has_data", "download_name", "last_backups", "check_passphrase"]
