"""The audit trail: who did what, on which users, from where. Never a secret or a token."""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterator

from flask import g, has_request_context, request
from sqlalchemy import Select, func, or_, select

from cds import errors
from cds.csvfile import csv_chunks
from cds.extensions import db
from cds.models import AuditEvent, User

# Detail keys that name a secret. Callers never pass one; if one slips in, its
# value is replaced before it is stored (token_ref, a short hash prefix, may stay).
_SECRET_KEY = re.compile(r"(^|_)(password|passwd|secret|pin|token|api_key|private_key|client_key)$",
                         re.I)
REDACTED = "[redacted]"


def scrub(detail):
    """The detail with every secret-named value replaced, at any depth."""
    if isinstance(detail, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "", 0)
                    and not isinstance(v, bool) else scrub(v)) for k, v in detail.items()}
    if isinstance(detail, list):
        return [scrub(v) for v in detail]
    return detail


# Actors that are not a person at the console: the shell, the scheduler, CDS itself.
SYSTEM_ACTORS = ("cli", "scheduler", "system")


def actor_type_of(actor: str | None) -> str:
    """What kind of actor a name is: "api" for an API token (``api:<name>``), "system"
    for the shell, the scheduler and CDS itself, otherwise an administrator."""
    if not actor or actor in SYSTEM_ACTORS:
        return "system"
    return "api" if actor.startswith("api:") else "admin"


# Who a job acts for while it runs outside the request that started it (a background
# thread, the scheduler): its events carry that actor and kind, not "system".
_acting_for: ContextVar[tuple[str, str] | None] = ContextVar("cds_acting_for", default=None)


@contextmanager
def acting_for(actor: str | None, actor_type: str | None):
    kind = actor_type or actor_type_of(actor)
    token = _acting_for.set((actor, kind) if actor else None)
    try:
        yield
    finally:
        _acting_for.reset(token)


def record_event(action: str, *, actor: str | None = None, actor_type: str | None = None,
                 user: User | None = None, count: int | None = None,
                 detail: dict | None = None, commit: bool = True) -> AuditEvent:
    """Add one audit event; with ``commit=False`` it joins the caller's transaction."""
    in_request = has_request_context()
    job = None if in_request else _acting_for.get()
    if actor is None:
        actor = (g.get("actor") if in_request else (job[0] if job else None)) or "system"
    if actor_type is None:
        if in_request:
            actor_type = g.get("actor_type") or ("admin" if g.get("admin") or g.get("actor") else "system")
        elif job is not None and job[0] == actor:
            actor_type = job[1]
        else:
            actor_type = actor_type_of(actor)
    event = AuditEvent(
        action=action, actor=actor[:64], actor_type=actor_type,
        user_id=user.id if user is not None else None,
        login_id=user.login_id if user is not None else None,
        count=count, detail=scrub(detail or {}),
        ip=request.remote_addr if in_request else None,
    )
    db.session.add(event)
    if commit:
        db.session.commit()
    return event


# --- the Audit log tab: searching, filtering, exporting ------------------------

class InvalidAuditQuery(errors.CdsError):
    """A filter value is not understood (400 on the page, its CSV export and the API);
    the message says which and why."""


@dataclass
class AuditFilter:
    """What the Audit log tab (and the API) filter on. Times are naive UTC."""
    q: str = ""
    actor: str = ""
    action: str = ""
    user: str = ""
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def from_mapping(cls, data) -> "AuditFilter":
        f = cls(q=_text(data, "q"), actor=_text(data, "actor"), action=_text(data, "action"),
                user=_text(data, "user"))
        # The browser sends the admin's local time and its offset (minutes, as JS
        # getTimezoneOffset gives it); without one the times are taken as UTC.
        raw_tz = str(data.get("tz", "") or "").strip()
        try:
            offset = int(raw_tz) if raw_tz else 0
        except ValueError:
            raise InvalidAuditQuery("tz must be a number of minutes.") from None
        if not -840 <= offset <= 840:
            raise InvalidAuditQuery("tz must be between -840 and 840 minutes.")
        f.since = _parse_time(data.get("since"), "From", offset, end_of_day=False)
        f.until = _parse_time(data.get("until"), "To", offset, end_of_day=True)
        if f.since and f.until and f.since >= f.until:
            raise InvalidAuditQuery("The time range ends before it starts.")
        return f

    def apply(self, query: Select) -> Select:
        if self.q:
            for word in self.q.split()[:8]:
                pattern = f"%{_escape_like(word.lower())}%"
                query = query.where(or_(*(func.lower(col).like(pattern, escape="\\") for col in
                                          (AuditEvent.actor, AuditEvent.action, AuditEvent.login_id,
                                           AuditEvent.ip))))
        if self.actor:
            query = query.where(func.lower(AuditEvent.actor) == self.actor.lower())
        if self.action:
            # "user.delete" exactly, or "user." for every user.* action.
            if self.action.endswith("."):
                query = query.where(AuditEvent.action.like(_escape_like(self.action) + "%", escape="\\"))
            else:
                query = query.where(AuditEvent.action == self.action)
        if self.user:
            by_login = func.lower(AuditEvent.login_id) == self.user.lower()
            if self.user.isdigit() and len(self.user) <= 9:
                query = query.where(or_(AuditEvent.user_id == int(self.user), by_login))
            else:
                query = query.where(by_login)
        if self.since:
            query = query.where(AuditEvent.at >= self.since)
        if self.until:
            query = query.where(AuditEvent.at < self.until)
        return query

    def to_args(self, tz: int | None = None) -> dict:
        """For links (pages, CSV): times travel as UTC, so no tz offset is needed."""
        args = {k: v for k, v in (("q", self.q), ("actor", self.actor), ("action", self.action),
                                  ("user", self.user)) if v}
        if self.since:
            args["since"] = self.since.strftime("%Y-%m-%dT%H:%M")
        if self.until:
            args["until"] = self.until.strftime("%Y-%m-%dT%H:%M")
        return args

    def to_dict(self) -> dict:
        return self.to_args()


def _text(data, key: str) -> str:
    return str(data.get(key, "") or "").strip()[:200]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _parse_time(raw, label: str, offset: int, end_of_day: bool) -> datetime | None:
    raw = str(raw or "").strip()
    if not raw:
        return None
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            value = datetime.strptime(raw, fmt)
        except ValueError:
            continue
        if fmt == "%Y-%m-%d" and end_of_day:
            value += timedelta(days=1)  # "to 2026-11-24" includes that whole day
        return value + timedelta(minutes=offset)
    raise InvalidAuditQuery(f"{label}: {raw!r} is not a date (YYYY-MM-DD) or a date and time.")


def list_events(filt: AuditFilter, page: int = 1, per_page: int = 100
                ) -> tuple[list[AuditEvent], int, int]:
    """One page of events, newest first: (events, total, the page actually shown)."""
    total = db.session.scalar(filt.apply(select(func.count(AuditEvent.id))))
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    events = db.session.scalars(filt.apply(select(AuditEvent))
                                .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
                                .offset((page - 1) * per_page).limit(per_page))
    return list(events), total, page


def action_names() -> list[str]:
    return list(db.session.scalars(select(AuditEvent.action).distinct().order_by(AuditEvent.action)))


def actor_names() -> list[str]:
    return list(db.session.scalars(select(AuditEvent.actor).where(AuditEvent.actor_type == "admin")
                                   .distinct().order_by(AuditEvent.actor).limit(200)))


AUDIT_CSV_HEADER = ["Time (UTC)", "Actor", "Actor type", "Action", "User ID", "Login ID", "Count",
                    "Address", "Detail"]


def audit_rows(filt: AuditFilter, batch_size: int = 2000) -> Iterator[list[str]]:
    """Every matching event, newest first, read in id batches (keyset) for flat memory."""
    base = filt.apply(select(AuditEvent.id, AuditEvent.at, AuditEvent.actor, AuditEvent.actor_type,
                             AuditEvent.action, AuditEvent.user_id, AuditEvent.login_id,
                             AuditEvent.count, AuditEvent.ip, AuditEvent.detail))
    last_id = None
    while True:
        query = base if last_id is None else base.where(AuditEvent.id < last_id)
        batch = db.session.execute(query.order_by(AuditEvent.id.desc()).limit(batch_size)).all()
        for _id, at, actor, actor_type, action, user_id, login_id, count, ip, detail in batch:
            yield [at.strftime("%Y-%m-%dT%H:%M:%SZ"), actor, actor_type, action,
                   "" if user_id is None else str(user_id), login_id or "",
                   "" if count is None else str(count), ip or "",
                   json.dumps(detail or {}, sort_keys=True, ensure_ascii=False)]
        if len(batch) < batch_size:
            return
        last_id = batch[-1][0]


def audit_csv(filt: AuditFilter) -> Iterator[str]:
    return csv_chunks(AUDIT_CSV_HEADER, audit_rows(filt))


def export_audit_csv(filt: AuditFilter, *, actor: str) -> Iterator[str]:
    """The audit log as CSV; the export itself is audited (``audit.export``) first."""
    record_event("audit.export", actor=actor, detail={"filter": filt.to_dict()})
    return audit_csv(filt)


def detail_text(detail: dict | None) -> str:
    """A compact one-line rendering of an event's detail for the table."""
    parts = []
    for key, value in (detail or {}).items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True, ensure_ascii=False)
        parts.append(f"{key}: {value}")
    return " · ".join(parts)
