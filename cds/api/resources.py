"""API resources. Each endpoint parses JSON, calls the area's service, answers JSON."""
from __future__ import annotations

from flask import g, request
from sqlalchemy import func, select

from cds.api.routes import ApiError, bp, body_json, iso, paginated
from cds.extensions import db
from cds.jobs import service as jobs
from cds.jobs.actions import start_action
from cds.models import Job, JobItem
from cds.users.selection import parse_selection
from cds.web import MAX_PAGE

# URL names of the bulk actions -> job kinds.
ACTION_KINDS = {"deploy": "deploy", "auto-deploy": "auto_deploy", "force-config": "force_config",
                "sync": "sync", "delete": "delete", "assign-profile": "assign_profile"}


# Options an action may take besides the selection and the time (each action reads its own).
ACTION_OPTIONS = {"profile_id", "confirm"}


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


@bp.post("/users/actions/<action>")
def user_action(action: str):
    """Start a bulk action; ``start_action`` checks it (its refusals answer 404/422)."""
    kind = ACTION_KINDS.get(action)
    if kind is None:
        raise ApiError(404, "not_found", f"Unknown action {action!r}; one of: {', '.join(ACTION_KINDS)}.")
    data = body_json()
    unknown = sorted(set(data) - {"ids", "filter", "at"} - ACTION_OPTIONS)
    if unknown:
        raise ApiError(422, "invalid", "Unknown fields: " + ", ".join(unknown) + ".",
                       {k: "unknown field" for k in unknown})
    job = start_action(kind, parse_selection(data), params=data, run_at=data.get("at"), actor=g.actor)
    return job_json(job), 202, {"Location": f"/api/v1/jobs/{job.id}"}


@bp.post("/users/actions/deploy/plan")
def deploy_plan():
    """What Deploy would do with the selection: who would be sent an e-mail, who not and
    why (an incomplete profile, Do Not Deploy, no address). Nothing is changed."""
    from cds.deploy.service import plan_deploy
    data = body_json()
    unknown = sorted(set(data) - {"ids", "filter", "at"})
    if unknown:
        raise ApiError(422, "invalid", "Unknown fields: " + ", ".join(unknown) + ".",
                       {k: "unknown field" for k in unknown})
    return plan_deploy(parse_selection(data)).as_dict()


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
    return job_json(jobs.get_job(job_id), with_items=True)


@bp.delete("/jobs/<int:job_id>")
def cancel_job(job_id: int):
    return job_json(jobs.cancel_job(job_id, actor=g.actor))


def page_args(default_per_page: int = 50, max_per_page: int = 500) -> tuple[int, int]:
    try:
        page = int(request.args.get("page", 1))
        per_page = int(request.args.get("per_page", default_per_page))
    except ValueError:
        raise ApiError(400, "bad_request", "page and per_page must be whole numbers.") from None
    if not 1 <= page <= MAX_PAGE or not 1 <= per_page <= max_per_page:
        raise ApiError(400, "bad_request", f"page 1-{MAX_PAGE} and per_page 1-{max_per_page}.")
    return page, per_page
