"""Job progress (polled by any page that started a job). The Jobs tab builds on this."""
from flask import Blueprint, abort, render_template

from cds.extensions import db
from cds.jobs.service import reason_counts
from cds.models import Job

bp = Blueprint("jobs", __name__, url_prefix="/jobs")


@bp.route("/<int:job_id>/progress")
def progress(job_id: int):
    job = db.session.get(Job, job_id)
    if job is None:
        abort(404, f"Job {job_id} does not exist (finished jobs are pruned after a while).")
    return render_template("jobs/_progress.html", job=job,
                           reasons=reason_counts(job) if job.finished else [])
