"""GET /users/export.csv: the Users tab's Export (CSV) button, streamed."""
from flask import Blueprint, Response, abort, request, stream_with_context

from cds.export.service import export_filename, start_export
from cds.models import utcnow
from cds.users.service import InvalidQuery, parse_selection

bp = Blueprint("export", __name__)


@bp.route("/users/export.csv")
def users_csv():
    """The selection (ids=… repeated) or all matching (all_matching=1 + the Users filter)."""
    try:
        selection = parse_selection(request.args)
    except InvalidQuery as exc:
        abort(400, str(exc))
    _, chunks = start_export(selection)
    response = Response(stream_with_context(chunks), mimetype="text/csv")
    response.headers["Content-Type"] = "text/csv; charset=utf-8"
    response.headers["Content-Disposition"] = f'attachment; filename="{export_filename(utcnow())}"'
    return response
