"""Export (CSV): the one place that turns users into rows of the CSV format
(docs/sources.md, CSV files), which the CSV import reads back.

The page, the JSON API and the CLI all stream ``export_csv``: a generator that
reads the selection in id-ordered batches (keyset, not OFFSET) and yields the
CSV text one batch at a time, so memory stays flat whatever the number of users.
"""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from itertools import islice
from typing import Iterable, Iterator

from sqlalchemy import select

from cds.audit.service import record_event
from cds.extensions import db
from cds.models import Connection, DeploymentProfile, User
from cds.users.fields import CSV_COLUMNS
from cds.users.selection import count_selection, describe_selection, selection_query

BATCH_SIZE = 2000
BOM = "\ufeff"

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

# A phone number (or any plain number) is safe as it is; other text starting with
# + or - could be read as a formula by a spreadsheet.
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9][0-9 ().-]*")
_FORMULA_START = ("=", "@", "\t", "\r")


def _formula_like(text: str) -> bool:
    if text.startswith(_FORMULA_START):
        return True
    return text[:1] in ("+", "-") and not _PLAIN_NUMBER.fullmatch(text)


# A spreadsheet opened with ";" or tab as the separator splits a cell there (when it is
# not quoted), so what follows one of them starts a cell of its own.
_SPLITS = re.compile(r"[;\t]")


def neutralise(cell: str) -> str:
    """Defuse spreadsheet formulas (CSV injection): prefix a single quote.

    Cells starting with = @ tab or CR always; + or - only when the cell is not a
    plain number, so "+44 20 7946 0000" comes out exactly as stored. The same for
    any part after a ";" or tab ("x;=1+1"); such cells are also always quoted
    (see csv_chunks)."""
    if not cell:
        return cell
    if _formula_like(cell) or (_SPLITS.search(cell) and any(
            _formula_like(part) for part in _SPLITS.split(cell)[1:])):
        return "'" + cell
    return cell


_RISKY_FIRST = frozenset("=@\t\r+-")


def _risky(cell: str) -> bool:
    return bool(cell) and (cell[0] in _RISKY_FIRST or ";" in cell or "\t" in cell)


def neutralise_row(row: list[str]) -> list[str]:
    # Most cells start with a letter or digit and hold no separator: only the others
    # need the full check.
    return [neutralise(c) if _risky(c) else c for c in row]


def iso_utc(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") + "Z" if value else ""


def _source_labels() -> dict:
    from cds.models import SOURCE_LABELS
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


def csv_chunks(header: list[str], rows: Iterable[list[str]], rows_per_chunk: int = BATCH_SIZE
               ) -> Iterator[str]:
    """RFC 4180 text (CRLF line ends, quoting as needed), BOM first, every cell neutralised.

    Yields the header on its own, then a chunk every ``rows_per_chunk`` rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    quote_all = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    yield BOM + buffer.getvalue()
    rows = iter(rows)
    while True:
        batch = list(islice(rows, rows_per_chunk))
        if not batch:
            return
        buffer.seek(0)
        buffer.truncate()
        for row in map(neutralise_row, batch):
            # Quoted whole, a cell with ";" or tab stays one cell for a spreadsheet
            # that splits on those (RFC 4180 allows quoting any field).
            if any(";" in c or "\t" in c for c in row):
                quote_all.writerow(row)
            else:
                writer.writerow(row)
        yield buffer.getvalue()


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
