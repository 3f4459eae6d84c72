"""The Audit log tab: search and filter the trail, page through it, export it as CSV."""
from flask import Blueprint, g, render_template, request

from cds.audit.service import (AuditFilter, InvalidAuditQuery, action_names, actor_names,
                               detail_text, export_audit_csv, list_events)
from cds.fragments import wants_fragment
from cds.models import utcnow
from cds.http import csv_download, page_number

bp = Blueprint("audit", __name__, url_prefix="/audit")

PER_PAGE = 100


def _filter() -> tuple[AuditFilter, str | None]:
    try:
        return AuditFilter.from_mapping(request.args), None
    except InvalidAuditQuery as exc:
        return AuditFilter(), str(exc)


@bp.route("")
def index():
    filt, error = _filter()
    page = page_number(request.args.get("page"))
    events, total, page = list_events(filt, page, PER_PAGE)
    context = dict(filt=filt, args=filt.to_args(), events=events, total=total, page=page,
                   pages=max(1, -(-total // PER_PAGE)), error=error, detail_text=detail_text)
    if wants_fragment("audit-results"):
        return render_template("audit/_results.html", **context), 422 if error else 200
    return render_template("audit/page.html", active_tab="audit", actions=action_names(),
                           actors=actor_names(), **context), 422 if error else 200


@bp.route("/export.csv")
def export_csv():
    filt = AuditFilter.from_mapping(request.args)  # InvalidAuditQuery: 400
    return csv_download(export_audit_csv(filt, actor=g.actor),
                        f'cds-audit-{utcnow().strftime("%Y%m%d-%H%M%S")}.csv')


@bp.app_template_filter("truncate_action")
def action_group(action: str) -> str:
    """"user.delete" -> "user." (the filter value for every user.* action)."""
    return action.split(".", 1)[0] + "." if "." in action else action
