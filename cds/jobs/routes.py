"""The Jobs tab: running jobs with live progress, scheduled ones (cancellable),
finished ones with their per-user report, and the periodic sync schedules."""
from flask import Blueprint, g, redirect, render_template, request, url_for

from cds.fragments import page_or_fragment, wants_fragment
from cds.jobs.service import (ITEM_OUTCOMES, active_jobs, cancel_job, get_job,
                              finished_jobs, item_page, reason_counts, scheduled_jobs,
                              sync_schedules)
from cds.models import Job
from cds.http import page_number
from cds.settings.service import get_setting
from cds.web import toast, write_required

bp = Blueprint("jobs", __name__, url_prefix="/jobs")

FINISHED_PER_PAGE = 25
ITEMS_PER_PAGE = 100


def _page_arg() -> int:
    return page_number(request.args.get("page"))


def _lists_context(page: int) -> dict:
    finished, finished_total = finished_jobs(page, FINISHED_PER_PAGE)
    return dict(active=active_jobs(), scheduled=scheduled_jobs(), finished=finished,
                finished_total=finished_total, page=page,
                pages=max(1, -(-finished_total // FINISHED_PER_PAGE)),
                syncs=sync_schedules(), retention_days=get_setting("JOB_RETENTION_DAYS"))


@bp.route("")
def index():
    return page_or_fragment("jobs/page.html", "jobs/_lists.html", "job-lists", active_tab="jobs",
                            **_lists_context(_page_arg()))


def _get_job(job_id: int) -> Job:
    return get_job(job_id)  # JobNotFound: 404


@bp.route("/<int:job_id>")
def detail(job_id: int):
    job = _get_job(job_id)
    outcome = request.args.get("outcome") or None
    if outcome not in (None, *ITEM_OUTCOMES):
        outcome = None
    page = _page_arg()
    items, total = item_page(job, outcome, page, ITEMS_PER_PAGE)
    context = dict(job=job, items=items, items_total=total, outcome=outcome, page=page,
                   pages=max(1, -(-total // ITEMS_PER_PAGE)),
                   reasons=reason_counts(job) if job.finished else [])
    return page_or_fragment("jobs/detail.html", "jobs/_items.html", "job-items", active_tab="jobs",
                            **context)


@bp.route("/<int:job_id>/progress")
def progress(job_id: int):
    job = _get_job(job_id)
    return render_template("jobs/_progress.html", job=job,
                           reasons=reason_counts(job) if job.finished else [])


@bp.route("/<int:job_id>/cancel", methods=["POST"])
@write_required
def cancel(job_id: int):
    job = cancel_job(job_id, actor=g.actor)  # JobNotFound: 404, JobFinished: 409
    toast(f"Cancelled: {job.description}. {job.message}", "success")
    if wants_fragment("job-lists"):
        return render_template("jobs/_lists.html", **_lists_context(_page_arg()))
    if request.form.get("next") == "detail":
        return redirect(url_for("jobs.detail", job_id=job_id))
    return redirect(url_for("jobs.index"))


@bp.app_template_filter("minutes")
def minutes_text(value: int | None) -> str:
    """60 -> "1 h", 90 -> "1 h 30 min", 15 -> "15 min", 1440 -> "1 day"."""
    if not value:
        return "–"
    days, rest = divmod(int(value), 1440)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} day{'s' if days != 1 else ''}"] if days else []
    parts += [f"{hours} h"] if hours else []
    parts += [f"{mins} min"] if mins else []
    return " ".join(parts)
