"""Export (CSV): the one place that turns users into rows of the CSV format
(docs/sources.md, CSV files), which the CSV import reads back.

The page, the JSON API and the CLI all stream ``export_csv``: a generator that
reads the selection in id-ordered batches (keyset, not OFFSET) and yields the
CSV text one batch at a time, so memory stays flat whatever the number of users.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterator

from sqlalchemy import select

from cds.audit.service import record_event
from cds.csvfile import csv_chunks
from cds.extensions import db
from cds.models import SOURCE_LABELS, Connection, DeploymentProfile, User
from cds.users.fields import CSV_COLUMNS
from cds.users.selection import count_selection, describe_selection, selection_query

BATCH_SIZE = 2000

# Header -> the User column it comes from: the CSV format of the field table, which
# the import reads back (ID, Login ID, Profile, the fields, Source, Deployed, Downloaded).
_COLUMN_OF = {"id": User.id, "profile": User.profile_id, "source": User.source,
              "deployed": User.deployed_at, "downloaded": User.downloaded_at}
EXPORT_COLUMNS = tuple((label, _COLUMN_OF.get(key) or getattr(User, key)) for label, key in CSV_COLUMNS)
HEADER = [name for name, _ in EXPORT_COLUMNS]

# An export never carries the MiCollab Client password, PBX SIP password,
# Teleworker SIP password or Voicemail PIN. Rows are built only from the columns
# above (the encrypted secrets are never even read), and this check keeps
# anyone from adding one of them to the list.
_SECRET_COLUMNS = {"secrets_enc"}
assert not _SECRET_COLUMNS & {col.key for _, col in EXPORT_COLUMNS}, "export must not carry secrets"

def iso_utc(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") + "Z" if value else ""


def _source_labels() -> dict:
    labels = {(code, None): label for code, label in SOURCE_LABELS.items()}
    for cid, name in db.session.execute(select(Connection.id, Connection.name)):
        labels[("connection", cid)] = name
    return labels


def export_rows(selection: dict, batch_size: int | None = None) -> Iterator[list[str]]:
    """Yield one list of cells per selected user, in id order, a batch of rows at a time."""
    batch_size = batch_size or BATCH_SIZE
    profiles = dict(db.session.execute(select(DeploymentProfile.id, DeploymentProfile.name)).all())
    sources = _source_labels()
    columns = [col for _, col in EXPORT_COLUMNS] + [User.connection_id]
    base = selection_query(selection).with_only_columns(*columns)
    last_id = 0
    # Plain Core rows (no ORM objects): nothing accumulates in the session.
    connection = db.session.connection()
    while True:
        batch = connection.execute(
            base.where(User.id > last_id).order_by(User.id).limit(batch_size)).all()
        if not batch:
            return
        for uid, login_id, profile_id, *fields, source, deployed, downloaded, connection_id in batch:
            if source == "connection":
                source_label = sources.get((source, connection_id), "Connection (deleted)")
            else:
                source_label = sources.get((source, None), source)
            yield [str(uid), login_id, profiles.get(profile_id, ""), *fields, source_label,
                   iso_utc(deployed), iso_utc(downloaded)]
        last_id = batch[-1][0]
        if len(batch) < batch_size:
            return


def export_csv(selection: dict, batch_size: int | None = None) -> Iterator[str]:
    """The export file as a stream of text chunks."""
    batch_size = batch_size or BATCH_SIZE
    return csv_chunks(HEADER, export_rows(selection, batch_size), rows_per_chunk=batch_size)


def start_export(selection: dict, *, actor: str | None = None, via: str = "console"
                 ) -> tuple[int, Iterator[str]]:
    """Record the export in the audit log, then hand back (count, the CSV stream)."""
    total = count_selection(selection)
    record_event("users.export", actor=actor, count=total,
                 detail={"selection": _describe_for_audit(selection),
                         "summary": describe_selection(selection, total), "via": via})
    return total, export_csv(selection)


def _describe_for_audit(selection: dict) -> dict:
    if "ids" in selection:
        ids = selection["ids"]
        return {"ids": ids[:50], "ids_total": len(ids)} if len(ids) > 50 else {"ids": ids}
    return {"filter": selection.get("filter", {})}


def export_filename(now: datetime) -> str:
    return f"cds-users-{now.strftime('%Y%m%d-%H%M%S')}.csv"
