"""API resources. Each endpoint parses JSON, calls the area's service, answers JSON."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import g, request
from sqlalchemy import func, select

from cds.api.routes import ApiError, bp, body_json, iso, paginated
from cds.extensions import db
from cds.jobs import service as jobs
from cds.models import Job, JobItem
from cds.web import MAX_ID, MAX_PAGE

# URL names of the bulk actions -> job kinds.
ACTION_KINDS = {"deploy": "deploy", "auto-deploy": "auto_deploy", "force-config": "force_config",
                "sync": "sync", "delete": "delete", "assign-profile": "assign_profile"}


# Options an action may take besides the selection and the time.
ACTION_OPTIONS = {"profile_id", "confirm"}


def parse_time(value) -> datetime | None:
    """An ISO 8601 time; naive times are taken as UTC. Stored as naive UTC."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid", "\"at\" must be an ISO 8601 date and time.", {"at": "not a string"})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, "invalid", "\"at\" must be an ISO 8601 date and time.",
                       {"at": f"cannot read {value!r}"}) from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed.replace(microsecond=0)


def job_json(job: Job, with_items: bool = False) -> dict:
    out = {
        "id": job.id, "kind": job.kind, "state": job.state, "description": job.description,
        "created_by": job.created_by, "created_at": iso(job.created_at), "run_at": iso(job.run_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "progress": {"total": job.total, "done": job.done, "succeeded": job.succeeded,
                     "skipped": job.skipped, "failed": job.failed, "percent": job.percent},
        "message": job.message,
    }
    if with_items:
        items = db.session.scalars(select(JobItem).where(JobItem.job_id == job.id,
                                                         JobItem.outcome != "ok")
                                   .order_by(JobItem.id).limit(500))
        out["problems"] = [{"user_id": i.user_id, "login_id": i.login_id, "outcome": i.outcome,
                            "message": i.message} for i in items]
    return out


def selection_from(data: dict) -> dict:
    """{"ids": [...]} or {"filter": {...}} — the API form of a Users-tab selection."""
    from cds.users.service import InvalidQuery, UserFilter

    if "ids" in data and "filter" in data:
        raise ApiError(422, "invalid", "Give either \"ids\" or \"filter\", not both.")
    if "ids" in data:
        ids = data["ids"]
        if not isinstance(ids, list) or not ids or not all(
                isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= MAX_ID for i in ids):
            raise ApiError(422, "invalid", "\"ids\" must be a non-empty list of user ids.",
                           {"ids": "expected a non-empty list of integers"})
        return {"ids": sorted(set(ids))}
    if "filter" in data:
        filt = data["filter"]
        if not isinstance(filt, dict):
            raise ApiError(422, "invalid", "\"filter\" must be an object.")
        try:
            return {"filter": UserFilter.from_mapping(filt, other_keys=()).to_dict()}
        except InvalidQuery as exc:
            raise ApiError(422, "invalid", str(exc), {"filter": str(exc)}) from None
    raise ApiError(422, "invalid", "Say which users: \"ids\" or \"filter\" ({} for all users).")


@bp.post("/users/actions/<action>")
def user_action(action: str):
    kind = ACTION_KINDS.get(action)
    if kind is None:
        raise ApiError(404, "not_found", f"Unknown action {action!r}; one of: {', '.join(ACTION_KINDS)}.")
    if kind not in jobs.ACTIONS:
        raise ApiError(404, "not_found", f"The {action} action is not available in this version.")
    data = body_json()
    selection = selection_from(data)
    run_at = parse_time(data.get("at"))
    unknown = sorted(set(data) - {"ids", "filter", "at"} - ACTION_OPTIONS)
    if unknown:
        raise ApiError(422, "invalid", "Unknown fields: " + ", ".join(unknown) + ".",
                       {k: "unknown field" for k in unknown})
    params = {k: v for k, v in data.items() if k in ACTION_OPTIONS}
    if "profile_id" in params and (not isinstance(params["profile_id"], int)
                                   or isinstance(params["profile_id"], bool)
                                   or not 1 <= params["profile_id"] <= MAX_ID):
        raise ApiError(422, "invalid", "profile_id must be a profile id.", {"profile_id": "integer expected"})
    if "confirm" in params and not isinstance(params["confirm"], str):
        raise ApiError(422, "invalid", "confirm must be a string.", {"confirm": "string expected"})
    try:
        job = jobs.create_job(kind, selection, params=params, run_at=run_at, actor=g.actor)
    except jobs.JobError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    from cds.audit.service import record_event
    record_event(f"job.{kind}", count=job.total,
                 detail={"job": job.id, "scheduled_for": iso(job.run_at)})
    jobs.submit(job)
    db.session.refresh(job)
    return job_json(job), 202, {"Location": f"/api/v1/jobs/{job.id}"}


@bp.get("/jobs")
def list_jobs():
    state = request.args.get("state")
    page, per_page = page_args()
    query = select(Job)
    if state:
        query = query.where(Job.state == state)
    total = db.session.scalar(query.with_only_columns(func.count(Job.id)))
    rows = db.session.scalars(query.order_by(Job.id.desc()).offset((page - 1) * per_page).limit(per_page))
    return paginated([job_json(j) for j in rows], total, page, per_page, "api.list_jobs",
                     {"state": state} if state else {})


@bp.get("/jobs/<int:job_id>")
def get_job(job_id: int):
    job = db.session.get(Job, job_id)
    if job is None:
        raise ApiError(404, "not_found", f"Job {job_id} does not exist.")
    return job_json(job, with_items=True)


@bp.delete("/jobs/<int:job_id>")
def cancel_job(job_id: int):
    try:
        job = jobs.cancel_job(job_id)
    except jobs.JobNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except jobs.JobError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    from cds.audit.service import record_event
    record_event("job.cancel", detail={"job": job.id, "kind": job.kind})
    return job_json(job)


def page_args(default_per_page: int = 50, max_per_page: int = 500) -> tuple[int, int]:
    try:
        page = int(request.args.get("page", 1))
        per_page = int(request.args.get("per_page", default_per_page))
    except ValueError:
        raise ApiError(400, "bad_request", "page and per_page must be whole numbers.") from None
    if not 1 <= page <= MAX_PAGE or not 1 <= per_page <= max_per_page:
        raise ApiError(400, "bad_request", f"page 1-{MAX_PAGE} and per_page 1-{max_per_page}.")
    return page, per_page
