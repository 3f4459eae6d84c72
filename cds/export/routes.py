"""GET /users/export.csv: the Users tab's Export (CSV) button, streamed."""
from flask import Blueprint, abort, request

from cds.export.service import export_filename, start_export
from cds.models import utcnow
from cds.http import csv_download
from cds.users.errors import InvalidQuery
from cds.users.selection import parse_selection

bp = Blueprint("export", __name__)


@bp.route("/users/export.csv")
def users_csv():
    """The selection (ids=… repeated) or all matching (all_matching=1 + the Users filter)."""
    try:
        selection = parse_selection(request.args)
    except InvalidQuery as exc:
        abort(400, str(exc))
    _, chunks = start_export(selection)
    return csv_download(chunks, export_filename(utcnow()))
