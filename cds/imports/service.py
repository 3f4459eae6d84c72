"""Import Users: the combined view of what every connection reported, and turning
selected records into CDS users (optionally deploying them right away).

CSV import lives in ``cds.imports.csv_import``; both write users in bulk, in one
transaction per import.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import InvalidToken
from flask import current_app
from sqlalchemy import Select, and_, false, func, insert, or_, select, text
from sqlalchemy.orm import aliased

from cds import errors
from cds.audit.service import record_event
from cds.extensions import db
from cds.jobs.actions import start_action
from cds.models import SOURCE_CONNECTION, Connection, DeploymentProfile, SourceRecord, User, login_key, utcnow
from cds.profiles.service import default_profile
from cds.scheduler import tick_task
from cds.security import new_token
from cds.sources import FIELD_SIZES
from cds.users.changes import BY_SOURCE, plan_change
from cds.users.login_ids import login_id_in_use, login_id_owners
from cds.users.selection import parse_ids

log = logging.getLogger("cds.imports")

RECORD_FIELDS = tuple(FIELD_SIZES)
PAGE_SIZES = (50, 100, 500)
RECORD_SEARCH_COLUMNS = tuple(getattr(SourceRecord, name) for name in RECORD_FIELDS)
STATES = ("", "new", "imported")


class ImportProblem(errors.Invalid):
    """An import cannot be carried out as asked; the message says why."""


# --- the combined view --------------------------------------------------------------

@dataclass
class RecordFilter:
    search: str = ""
    connection: int | None = None
    state: str = ""  # "", "new" (not imported yet), "imported"

    @classmethod
    def from_mapping(cls, data) -> "RecordFilter":
        f = cls()
        f.search = str(data.get("search", "") or "").strip()[:200]
        raw = str(data.get("connection", "") or "").strip()
        if raw:
            if not raw.isdigit() or len(raw) > 9:
                raise ImportProblem("connection must be a connection id.")
            f.connection = int(raw)
        state = str(data.get("state", "") or "")
        if state not in STATES:
            raise ImportProblem("state must be new or imported.")
        f.state = state
        return f

    def to_dict(self) -> dict:
        out = {}
        if self.search:
            out["search"] = self.search
        if self.connection is not None:
            out["connection"] = str(self.connection)
        if self.state:
            out["state"] = self.state
        return out

    def apply(self, query: Select) -> Select:
        if self.search:
            for word in self.search.split()[:8]:
                pattern = "%" + word.lower().replace("\\", "\\\\").replace("%", "\\%") \
                    .replace("_", "\\_") + "%"
                query = query.where(or_(*(func.lower(c).like(pattern, escape="\\")
                                          for c in RECORD_SEARCH_COLUMNS)))
        if self.connection is not None:
            query = query.where(SourceRecord.connection_id == self.connection)
        if self.state == "new":
            query = query.where(~_imported_exists())
        elif self.state == "imported":
            query = query.where(_imported_exists())
        return query


def _imported_exists():
    imported = aliased(User)
    return select(imported.id).where(imported.connection_id == SourceRecord.connection_id,
                                     imported.source_key == SourceRecord.source_key).exists()


@dataclass
class RecordRow:
    record: SourceRecord
    connection_name: str
    user_id: int | None  # the CDS user imported from this record, if any


@dataclass
class RecordPage:
    rows: list[RecordRow]
    total: int
    page: int
    per_page: int
    filter: RecordFilter = field(default_factory=RecordFilter)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def args(self, **changes) -> dict:
        args = {**self.filter.to_dict(), "page": self.page, "per_page": self.per_page}
        args.update(changes)
        return {k: v for k, v in args.items() if v not in ("", None)}


def list_records(filt: RecordFilter, page: int = 1, per_page: int = 50) -> RecordPage:
    per_page = per_page if per_page in PAGE_SIZES else PAGE_SIZES[0]
    total = db.session.scalar(filt.apply(select(func.count(SourceRecord.id))))
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    query = filt.apply(
        select(SourceRecord, Connection.name, User.id)
        .join(Connection, Connection.id == SourceRecord.connection_id)
        .outerjoin(User, and_(User.connection_id == SourceRecord.connection_id,
                              User.source_key == SourceRecord.source_key))
    ).order_by(SourceRecord.last_name, SourceRecord.first_name, SourceRecord.id) \
        .offset((page - 1) * per_page).limit(per_page)
    rows = [RecordRow(rec, name, uid) for rec, name, uid in db.session.execute(query)]
    return RecordPage(rows, total, page, per_page, filt)


def connection_choices() -> list[tuple[int, str]]:
    return [(i, n) for i, n in db.session.execute(select(Connection.id, Connection.name)
                                                   .order_by(Connection.name))]


# --- selections of records -------------------------------------------------------------

RECORD_SELECTION_KEYS = {"search", "connection", "state", "csrf_token", "ids", "all_matching",
                         "profile_id", "deploy", "page", "per_page"}


def parse_record_selection(data) -> dict:
    """From the form: {"ids": [...]} or {"filter": {...}} when "all matching" is ticked."""
    if str(data.get("all_matching", "")) in ("1", "true", "on"):
        # A typo in a filter key must not widen "all matching" to every record.
        unknown = sorted(set(data.keys()) - RECORD_SELECTION_KEYS)
        if unknown:
            raise ImportProblem(f"Unknown filter key {', '.join(repr(k) for k in unknown)}; the filter "
                                f"keys are search, connection, state.")
        return {"filter": RecordFilter.from_mapping(data).to_dict()}
    try:
        return {"ids": parse_ids(data, "record")}
    except ValueError as exc:
        raise ImportProblem(str(exc)) from None


def record_selection_query(selection: dict) -> Select:
    query = select(SourceRecord)
    if "ids" in selection:
        return query.where(SourceRecord.id.in_(selection["ids"])) if selection["ids"] \
            else query.where(false())
    return RecordFilter.from_mapping(selection.get("filter") or {}).apply(query)


# --- importing records ------------------------------------------------------------------

@dataclass
class ImportResult:
    created_ids: list[int]
    already: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (who, why)
    job_id: int | None = None
    deploy_message: str = ""

    @property
    def created(self) -> int:
        return len(self.created_ids)

    def describe(self) -> str:
        text = f"Imported {self.created:,} user{'s' if self.created != 1 else ''}."
        if self.already:
            text += f" {self.already:,} already imported."
        if self.skipped:
            text += f" {len(self.skipped):,} skipped."
        return text


def _resolve_profile(profile_id) -> DeploymentProfile:
    if profile_id in (None, "", 0):
        return default_profile()
    try:
        profile = db.session.get(DeploymentProfile, int(profile_id))
    except (TypeError, ValueError):
        profile = None
    if profile is None:
        raise ImportProblem("The chosen deployment profile does not exist.")
    return profile


def import_records(selection: dict, profile_id=None, *, actor: str | None = None) -> ImportResult:
    """Create a CDS user for each selected record not imported yet. Records whose data
    breaks the user rules, or whose login id another user has, are skipped with the reason."""
    profile = _resolve_profile(profile_id)
    records = list(db.session.scalars(record_selection_query(selection)
                                      .order_by(SourceRecord.id)))
    if not records:
        raise ImportProblem("No records are selected.")
    imported = set(db.session.execute(
        select(User.connection_id, User.source_key).where(
            User.connection_id.in_({r.connection_id for r in records}))).all())
    taken = login_id_owners(r.login_id for r in records)
    names = dict(db.session.execute(select(Connection.id, Connection.name)).all())
    result = ImportResult([])
    rows = []
    now = utcnow()
    for rec in records:
        who = f"{rec.login_id or rec.source_key} ({names.get(rec.connection_id, '?')})"
        if (rec.connection_id, rec.source_key) in imported:
            result.already += 1
            continue
        change = plan_change(None, {f: getattr(rec, f) for f in RECORD_FIELDS}, by=BY_SOURCE)
        if change.errors:
            result.skipped.append((who, " ".join(change.errors.values())))
            continue
        owner = taken.get(login_key(rec.login_id))
        if owner is not None:
            result.skipped.append((who, login_id_in_use(rec.login_id, owner[1], owner[2])))
            continue
        taken[login_key(rec.login_id)] = (0, rec.login_id, " ".join(
            p for p in (rec.first_name, rec.last_name) if p) or rec.login_id)
        rows.append({**change.fields, "profile_id": profile.id, "source": SOURCE_CONNECTION,
                     "connection_id": rec.connection_id, "source_key": rec.source_key,
                     "created_at": now, "updated_at": now})
    insert_users(rows)
    if rows:
        result.created_ids = _ids_of([(r["connection_id"], r["source_key"]) for r in rows])
        record_event("users.import", actor=actor, count=len(rows), commit=False,
                     detail={"profile": profile.name,
                             "connections": sorted({names.get(r["connection_id"], "?") for r in rows})})
    db.session.commit()
    return result


# On SQLite a trigger keeps the Users tab's search index (FTS5, migration 0002) in
# step row by row; for a large import it is set aside inside the transaction and
# the index filled in one statement: the same index, about three times faster.
BULK_INDEX_THRESHOLD = 2000
SEARCH_TRIGGER = "user_search_ai"


def insert_users(rows: list[dict]) -> None:
    """Insert users in bulk within the caller's transaction (the caller commits)."""
    if not rows:
        return
    # Bulk inserts bypass the model: the case-folded key is set here (see models.login_key).
    for row in rows:
        row["login_key"] = login_key(row["login_id"])
    table = User.__table__
    trigger_sql = None
    if len(rows) >= BULK_INDEX_THRESHOLD and db.session.get_bind().dialect.name == "sqlite":
        trigger_sql = db.session.scalar(text(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name"),
            {"name": SEARCH_TRIGGER})
    if trigger_sql:
        db.session.execute(text(f"DROP TRIGGER {SEARCH_TRIGGER}"))
        # The DROP took the write lock: no other insert can slip in before the refill.
        before = db.session.scalar(select(func.max(User.id))) or 0
    for start in range(0, len(rows), 2000):
        db.session.execute(insert(table), rows[start:start + 2000])
    if trigger_sql:
        cols = [r[1] for r in db.session.execute(text("PRAGMA table_info(user_search)"))]
        names = ", ".join(f'"{c}"' for c in cols)
        db.session.execute(text(f'INSERT INTO user_search(rowid, {names}) SELECT id, {names} '
                                f'FROM "user" WHERE id > :before'), {"before": before})
        db.session.execute(text(trigger_sql))


def _ids_of(pairs: list[tuple[int, str]]) -> list[int]:
    ids = []
    by_conn: dict[int, list[str]] = {}
    for cid, key in pairs:
        by_conn.setdefault(cid, []).append(key)
    for cid, keys in by_conn.items():
        for start in range(0, len(keys), 900):
            ids.extend(db.session.scalars(select(User.id).where(
                User.connection_id == cid, User.source_key.in_(keys[start:start + 900]))))
    return sorted(ids)


def import_and_deploy(selection: dict, profile_id=None, *, actor: str | None = None) -> ImportResult:
    """Import, then send the new users their deployment (one Deploy job)."""
    result = import_records(selection, profile_id, actor=actor)
    if result.created_ids:
        job = start_action("deploy", {"ids": result.created_ids}, actor=actor or "system")
        result.job_id = job.id
    return result


# --- uploaded files between preview and commit --------------------------------------------
#
# A CSV file may hold the four secrets of every user in it. Between the preview and
# the commit it waits in instance/uploads/ encrypted with the instance key (Fernet,
# as the secrets in the database) and owner-only; commit and cancel delete it, and so
# does expiry: an upload older than UPLOAD_MAX_AGE_SECONDS can no longer be read
# (Fernet's time stamp) and the scheduler deletes it.

UPLOAD_NAME = re.compile(r"[A-Za-z0-9_-]{20,64}")
UPLOAD_MAX_AGE_SECONDS = 3600
UPLOAD_SUFFIX = ".csv.enc"


def uploads_dir() -> Path:
    path = Path(current_app.instance_path) / "uploads"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def store_upload(data: bytes) -> str:
    """Keep an uploaded file, encrypted, until the administrator commits or cancels."""
    name = new_token()
    sealed = current_app.extensions["cds_cipher"].encrypt(data)
    fd = os.open(uploads_dir() / f"{name}{UPLOAD_SUFFIX}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(sealed)
    return name


def read_upload(name: str) -> bytes:
    gone = ImportProblem(f"The uploaded file is no longer available (a preview is kept for "
                         f"{UPLOAD_MAX_AGE_SECONDS // 60} minutes); upload it again.")
    if not name or not UPLOAD_NAME.fullmatch(name):
        raise gone
    try:
        sealed = (uploads_dir() / f"{name}{UPLOAD_SUFFIX}").read_bytes()
        return current_app.extensions["cds_cipher"].decrypt(sealed, ttl=UPLOAD_MAX_AGE_SECONDS)
    except (FileNotFoundError, InvalidToken):
        discard_upload(name)
        raise gone from None


def discard_upload(name: str | None) -> None:
    if name and UPLOAD_NAME.fullmatch(name):
        (uploads_dir() / f"{name}{UPLOAD_SUFFIX}").unlink(missing_ok=True)


@tick_task("imports.prune_uploads", every_ticks=60)
def prune_uploads(app) -> None:
    """Uploads previewed but never committed or cancelled go away once expired (and any
    plaintext upload an older version of CDS left behind, at once)."""
    cutoff = time.time() - UPLOAD_MAX_AGE_SECONDS
    for path in uploads_dir().iterdir():
        try:
            if not path.name.endswith(UPLOAD_SUFFIX) or path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            pass
