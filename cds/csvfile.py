"""Writing CSV for people who open it in a spreadsheet: RFC 4180 text with a BOM, and
every cell defused against formula injection. The users export and the audit log's
CSV are written here; the CSV import reads ``neutralise`` back."""
from __future__ import annotations

import csv
import io
import re
from itertools import islice
from typing import Iterable, Iterator

BOM = "\ufeff"

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


def csv_chunks(header: list[str], rows: Iterable[list[str]], rows_per_chunk: int = 2000
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
