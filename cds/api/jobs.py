"""/api/v1/jobs: bulk actions as jobs — their progress, their problems, cancelling one."""
from __future__ import annotations

from flask import g, request
from sqlalchemy import func, select

from cds.api.blueprint import bp, page_args, paginated
from cds.api.schema import job_json
from cds.extensions import db
from cds.jobs import service as jobs
from cds.models import Job


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
