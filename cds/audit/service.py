"""The audit trail: who did what, on which users, from where. Never a secret or a token."""
from __future__ import annotations

from flask import g, has_request_context, request

from cds.extensions import db
from cds.models import AuditEvent, User


def record_event(action: str, *, actor: str | None = None, actor_type: str | None = None,
                 user: User | None = None, count: int | None = None,
                 detail: dict | None = None, commit: bool = True) -> AuditEvent:
    """Add one audit event; with ``commit=False`` it joins the caller's transaction."""
    in_request = has_request_context()
    if actor is None:
        actor = (g.get("actor") if in_request else None) or "system"
    if actor_type is None:
        actor_type = (g.get("actor_type") if in_request else None) or \
            ("admin" if in_request and g.get("admin") else "system")
    event = AuditEvent(
        action=action, actor=actor[:64], actor_type=actor_type,
        user_id=user.id if user is not None else None,
        login_id=user.login_id if user is not None else None,
        count=count, detail=detail or {},
        ip=request.remote_addr if in_request else None,
    )
    db.session.add(event)
    if commit:
        db.session.commit()
    return event
