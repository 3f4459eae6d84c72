"""`flask --app app cds jobs list|show|cancel`."""
import json

import click
from sqlalchemy import select

from cds.api.schema import job_json
from cds.extensions import db
from cds.jobs import service as jobs
from cds.models import Job


@click.group("jobs")
def jobs_group():
    """Bulk-action jobs: running, scheduled and finished."""


@jobs_group.command("list")
@click.option("--state", type=click.Choice(["scheduled", "queued", "running", "done", "failed", "cancelled"]))
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(state, limit, as_json):
    """List jobs, newest first."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if state:
        query = query.where(Job.state == state)
    rows = list(db.session.scalars(query))
    if as_json:
        click.echo(json.dumps([job_json(j) for j in rows], indent=2))
        return
    for j in rows:
        when = j.run_at or j.created_at
        click.echo(f"{j.id:>6}  {j.state:<9}  {when:%Y-%m-%d %H:%M}  {j.done:>6}/{j.total:<6} "
                   f"ok {j.succeeded} skipped {j.skipped} failed {j.failed}  {j.description}")


@jobs_group.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def show_command(job_id, as_json):
    """A job's progress and the users it skipped or failed."""
    job = jobs.get_job(job_id)
    data = job_json(job, with_items=True)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"job {job.id}: {job.description} — {job.state}, {job.done}/{job.total} done, "
               f"{job.succeeded} ok, {job.skipped} skipped, {job.failed} failed")
    for p in data["problems"]:
        click.echo(f"  {p['outcome']:<8} {p['login_id']}: {p['message']}")


@jobs_group.command("cancel")
@click.argument("job_id", type=int)
def cancel_command(job_id):
    """Cancel a scheduled or queued job (a running one stops after its current batch)."""
    job = jobs.cancel_job(job_id, actor="cli")
    click.echo(f"job {job.id} cancelled")


commands = [jobs_group]
