"""/api/v1/audit-events: the audit log, filtered as on its page."""
from __future__ import annotations

from flask import request

from cds.api.blueprint import bp, page_args, paginated
from cds.api.schema import audit_json
from cds.audit.service import AuditFilter, list_events


@bp.get("/audit-events")
def list_audit_events():
    page, per_page = page_args(default_per_page=100)
    filt = AuditFilter.from_mapping(request.args)  # InvalidAuditQuery: 400
    events, total, shown = list_events(filt, page, per_page)
    items = [audit_json(e) for e in events] if shown == page else []
    return paginated(items, total, page, per_page, "api.list_audit_events", filt.to_args())
