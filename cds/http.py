"""What every HTTP surface (pages and the JSON API) reads and sends the same way:
row ids and page numbers from a request, and CSV downloads."""
from __future__ import annotations

from flask import Response, abort, stream_with_context

MAX_ID = 2**31 - 1
# Far beyond any real list, and small enough that (page - 1) * per_page fits every
# database's OFFSET: a larger page number is refused, not passed on.
MAX_PAGE = 1_000_000


def row_id(raw) -> int | None:
    """A row id from a query string or form (1 to MAX_ID), else None: a 40-digit
    number names no row and must not reach the database (PostgreSQL: out of range)."""
    text = str(raw or "").strip()
    if not text.isdigit() or len(text) > 10 or not 1 <= int(text) <= MAX_ID:
        return None
    return int(text)


def page_number(raw, default: int = 1) -> int:
    """A page number from a query string: not a number or below 1 gives ``default``;
    above MAX_PAGE is a 400 with a clear message."""
    try:
        page = int(str(raw if raw is not None else default).strip())
    except ValueError:
        return default
    if page > MAX_PAGE:
        abort(400, f"Page numbers go from 1 to {MAX_PAGE:,}.")
    return max(1, page)


def csv_download(chunks, filename: str):
    """A CSV file streamed as it is produced (constant memory), offered as a download."""
    response = Response(stream_with_context(chunks), mimetype="text/csv")
    response.headers["Content-Type"] = "text/csv; charset=utf-8"
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
