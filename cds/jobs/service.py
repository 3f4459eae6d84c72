"""Jobs: every bulk action runs as one, with progress the pages poll.

An action registers a batch function with ``@action``; ``create_job`` records
what to act on (explicit ids or a filter, resolved when the job runs) — every
surface reaches it through ``cds.jobs.actions.start_action`` — and
``run_job`` walks the selected users in id order, a batch at a time, writing one
``JobItem`` per user. A job whose process died is resumed after the last user it
recorded, so no user is acted on twice.
"""
from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from flask import current_app, g, has_request_context
from sqlalchemy import bindparam, case, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from cds import errors
from cds.audit.service import acting_for, record_event
from cds.client.statements import DriverStatement
from cds.extensions import db
from cds.models import (JOB_CANCELLED, JOB_DONE, JOB_FAILED, JOB_QUEUED, JOB_RUNNING, JOB_SCHEDULED,
                        Connection, Job, JobItem, User, utcnow)
from cds.profiles.service import ProfileNotFound, get_profile
from cds.scheduler import tick_task
from cds.settings.service import get_setting
from cds.users.selection import count_selection, describe_selection, next_users

log = logging.getLogger("cds.jobs")

BATCH_SIZE = 100


class JobError(errors.CdsError):
    """A job cannot be created or changed as asked."""


class JobNotFound(errors.NotFound, JobError):
    pass


class InvalidJob(errors.Invalid, JobError):
    """The job was not created: the action, selection or parameters are not acceptable."""


class JobFinished(errors.Conflict, JobError):
    """Only scheduled, queued or running jobs can be cancelled."""


@dataclass
class Outcome:
    user: User
    outcome: str  # ok, skipped, failed
    message: str = ""


@dataclass
class Action:
    kind: str
    label: str
    run_batch: Callable[[Job, list[User]], list[Outcome]]
    # Called once when the job ends (after the last batch), e.g. to close an SMTP connection.
    finish: Callable[[Job], None] | None = None
    # Batch size: actions that talk to slow peers may want smaller batches.
    batch_size: int = BATCH_SIZE
    # Called by create_job with (total, params) before anything is recorded; raises
    # InvalidJob when the request is not acceptable (e.g. a missing confirmation).
    check: Callable[[int, dict], None] | None = None
    # May it run at a set time ("Deploy at…", --at, "at")? Others run at once.
    schedulable: bool = False
    # The parameters it takes besides the selection (other keys given are ignored).
    options: tuple[str, ...] = ()
    # Called with (job, users, reason) when the job ends on an error, for the users it
    # has no outcome for yet: returns their outcomes (e.g. "sent" for a message already
    # handed over, after withdrawing links issued but never handed over).
    settle: Callable[[Job, list[User], str], list[Outcome]] | None = None


ACTIONS: dict[str, Action] = {}


def action(kind: str, label: str, *, finish=None, batch_size: int = BATCH_SIZE, check=None,
           schedulable: bool = False, options: tuple[str, ...] = (), settle=None):
    def register(fn):
        ACTIONS[kind] = Action(kind, label, fn, finish, batch_size, check, schedulable, options, settle)
        return fn
    return register


# --- creating and cancelling ---------------------------------------------------

def _profile_id(value) -> int:
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or not 1 <= number <= 2**31 - 1:
        raise InvalidJob("Choose the profile to assign.", {"profile_id": "a profile id is required"})
    try:
        return get_profile(number).id
    except ProfileNotFound:
        raise InvalidJob(f"Choose the profile to assign: profile {number} does not exist.",
                         {"profile_id": "no such profile"}) from None


def read_params(kind: str, given) -> dict:
    """The parameters ``kind`` takes, read and checked; others given are ignored."""
    params = {}
    for name in ACTIONS[kind].options:
        value = given.get(name) if given is not None else None
        if name == "profile_id":
            params[name] = _profile_id(value)
        elif name == "confirm":
            if value is not None and not isinstance(value, str):
                raise InvalidJob("confirm must be text (the word \"all\").", {"confirm": "string expected"})
            params[name] = value or ""
        else:
            params[name] = value
    return params



def create_job(kind: str, selection: dict, *, params: dict | None = None,
               run_at: datetime | None = None, actor: str | None = None,
               actor_type: str | None = None, commit: bool = True) -> Job:
    """Record a job; it runs now (queued) or at ``run_at`` (scheduled). ``params`` is any
    mapping holding the action's parameters (a form, a JSON body, a dict). With
    ``commit=False`` it joins the caller's transaction (``start_action`` commits it
    with the creation's audit event)."""
    if kind not in ACTIONS:
        raise errors.NotFound(f"There is no bulk action {kind!r}.")
    total = count_selection(selection)
    if total == 0:
        raise InvalidJob("No users are selected.")
    params = read_params(kind, params)
    if ACTIONS[kind].check:
        ACTIONS[kind].check(total, params)
    now = utcnow()
    scheduled = run_at is not None and run_at > now
    params = {"selection": selection, **params}
    # Whoever asked (an administrator, an API token…), for audit events written while it runs.
    if actor_type is None and has_request_context() and (g.get("actor_type") or g.get("admin")):
        actor_type = g.get("actor_type") or "admin"
    if actor_type is not None:
        params.setdefault("actor_type", actor_type)
    job = Job(kind=kind, state=JOB_SCHEDULED if scheduled else JOB_QUEUED,
              params=params,
              description=f"{ACTIONS[kind].label}: {describe_selection(selection, total)}",
              run_at=run_at if scheduled else None, created_by=actor, total=total)
    db.session.add(job)
    if commit:
        db.session.commit()
    else:
        db.session.flush()
    return job


def get_job(job_id: int) -> Job:
    job = db.session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"Job {job_id} does not exist (finished jobs are pruned after a while).")
    return job


def cancel_job(job_id: int, *, actor: str | None = None, actor_type: str | None = None) -> Job:
    """Cancel a scheduled or queued job (it never runs), or stop a running one after its batch.
    Writes the one ``job.cancel`` audit event, in the same transaction."""
    job = get_job(job_id)
    changed = db.session.execute(
        update(Job).where(Job.id == job_id, Job.state.in_([JOB_SCHEDULED, JOB_QUEUED, JOB_RUNNING]))
        .values(state=JOB_CANCELLED, finished_at=utcnow(),
                message="Cancelled before it ran." if job.state != JOB_RUNNING
                else "Cancelled while running; the users already done stay done.")
    ).rowcount
    if not changed:
        db.session.rollback()
        raise JobFinished(f"Job {job_id} has already finished ({job.state}).")
    record_event("job.cancel", actor=actor, actor_type=actor_type, count=job.total, commit=False,
                 detail={"job": job.id, "kind": job.kind, "description": job.description})
    db.session.commit()
    db.session.refresh(job)
    return job


# --- running -------------------------------------------------------------------
#
# A runner claims a job by writing its own claim token (host, process, a random part:
# never the same for two runs, even in one process) and a heartbeat. While it works,
# a heartbeat thread renews the claim every JOB_HEARTBEAT_SECONDS, and every write
# that matters (the counters, and an action's "about to hand over" step, see
# ``renew_claim``) is made only while the row still names this claim. A claim not
# renewed for JOB_STALE_SECONDS belongs to a dead runner and may be taken over.

class ClaimLost(Exception):
    """Another runner took this job over (this one was presumed dead); stop at once."""


PAUSED = "Paused:"


class RunnerStopping(Exception):
    """This process is stopping: the job is left for the next runner to resume."""


# Set when the server stops: runners stop before their next hand-over.
_stopping = threading.Event()


def stop_runners(timeout: float) -> bool:
    """Ask this process's job runners to stop (the server is shutting down) and wait up
    to ``timeout`` seconds for them. Their jobs are resumed by the next runner."""
    _stopping.set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _executor_lock:
            if not _in_process:
                return True
        time.sleep(0.05)
    return False


@dataclass
class Claim:
    job_id: int
    token: str
    lost: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    # What an action keeps for the length of this run (e.g. its SMTP connection).
    resources: dict = field(default_factory=dict)


_claim_var: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("cds_job_claim", default=None)


def current_claim() -> Claim | None:
    """The claim of the job this thread is running, if any."""
    return _claim_var.get()


def heartbeat_interval() -> float:
    return float(current_app.config["JOB_HEARTBEAT_SECONDS"])


def stale_after() -> timedelta:
    return timedelta(seconds=float(current_app.config["JOB_STALE_SECONDS"]))


def renew_claim() -> None:
    """Within the caller's transaction: renew this thread's claim, or raise ClaimLost
    (and roll back) when another runner holds the job. An action calls it in the same
    transaction that records "about to hand over", so only the claim holder ever does."""
    claim = current_claim()
    if claim is None:
        return
    if _stopping.is_set() or claim.lost.is_set():
        _check_renewal(claim, False)
    _check_renewal(claim, _renew(claim.job_id, claim.token))


def send_claim_renewal(cursor) -> Callable[[], None]:
    """``renew_claim`` in two steps, for a transaction whose statements go to the server
    together (a psycopg pipeline): the renewal is sent on ``cursor`` (a driver cursor
    of ``cds.client.statements`` on the session's connection, used for nothing else);
    the returned function, called once the server has answered and before the
    transaction is committed, raises as ``renew_claim`` does (and rolls back)."""
    claim = current_claim()
    if claim is None:
        return lambda: None
    if _stopping.is_set() or claim.lost.is_set():
        return lambda: _check_renewal(claim, False)
    _RENEW.write(cursor, {"job_id": claim.job_id, "token": claim.token, "now": utcnow()})
    return lambda: _check_renewal(claim, cursor.raw.rowcount == 1)


def _check_renewal(claim: Claim, renewed: bool) -> None:
    if _stopping.is_set():
        db.session.rollback()
        raise RunnerStopping(f"job {claim.job_id}: this process is stopping")
    if claim.lost.is_set() or not renewed:
        claim.lost.set()
        db.session.rollback()
        raise ClaimLost(f"job {claim.job_id} was taken over by another runner")


_RENEW = DriverStatement(update(Job.__table__).where(
    Job.__table__.c.id == bindparam("job_id"), Job.__table__.c.runner == bindparam("token"))
    .values(heartbeat_at=bindparam("now")))


def _renew(job_id: int, token: str) -> bool:
    return db.session.execute(update(Job).where(Job.id == job_id, Job.runner == token)
                              .values(heartbeat_at=utcnow())).rowcount == 1


def _heartbeat(app, claim: Claim) -> None:
    """Renews the claim while the runner works; notices when it was taken over."""
    with app.app_context():
        interval = heartbeat_interval()
        while not claim.stop.wait(interval):
            try:
                renewed = _renew(claim.job_id, claim.token)
                db.session.commit()
            except Exception as exc:  # storage trouble: the runner itself will hit it too
                db.session.rollback()
                log.warning("job %s: heartbeat not written (%s)", claim.job_id, _short(exc))
                continue
            if not renewed:
                claim.lost.set()
                return
        db.session.remove()


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__


def is_storage_error(exc: BaseException) -> bool:
    """The database could not be written or reached (disk full, read-only, connection
    lost): worth waiting out, not a reason to give a job up."""
    return isinstance(exc, (OperationalError, InterfaceError)) or \
        (isinstance(exc, DBAPIError) and exc.connection_invalidated)


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
# Jobs submitted to or running in this process: never two runners of one job here.
_in_process: set[int] = set()


def submit(job: Job) -> None:
    """Start a queued job: in this request (inline) or on a background thread."""
    app = current_app._get_current_object()
    if job.state != JOB_QUEUED:
        return
    if app.config["JOB_EXECUTION"] == "inline":
        run_job(job.id)
        return
    start_in_background(app, job.id)


def start_in_background(app, job_id: int) -> bool:
    """Run the job on a background thread, unless this process already runs it."""
    global _executor
    with _executor_lock:
        if job_id in _in_process:
            return False
        _in_process.add(job_id)
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cds-job")
    try:
        _executor.submit(_run_in_context, app, job_id)
    except Exception:
        with _executor_lock:
            _in_process.discard(job_id)
        raise
    return True


def _run_in_context(app, job_id: int) -> None:
    with app.app_context():
        try:
            run_job(job_id, _submitted=True)
        except ClaimLost:
            log.warning("job %s: another runner took it over; this one stopped", job_id)
            db.session.rollback()
        except Exception as exc:
            db.session.rollback()
            if is_storage_error(exc):
                _pause(job_id, exc)
            else:
                log.exception("job %s crashed", job_id)
                _fail(job_id, "The job stopped on an unexpected error; see the log.")
        finally:
            with _executor_lock:
                _in_process.discard(job_id)
            db.session.remove()


def _pause(job_id: int, exc: BaseException) -> None:
    """A storage error interrupted the job: it stays "running" with an old heartbeat,
    so the scheduler resumes it (after the last user recorded) once writes work again."""
    log.warning("job %s paused: the database cannot be written (%s); it resumes by itself "
                "when it can", job_id, _short(exc))
    try:
        db.session.execute(update(Job).where(Job.id == job_id, Job.state == JOB_RUNNING).values(
            heartbeat_at=utcnow() - stale_after() - timedelta(seconds=1), runner=None,
            message=f"{PAUSED} the database could not be written ({_short(exc)[:300]}). "
                    "It resumes by itself when it can."))
        db.session.commit()
    except Exception:
        # Still failing: the heartbeat is no longer renewed, so the claim goes stale anyway.
        db.session.rollback()


def _fail(job_id: int, message: str) -> None:
    """The job ends as failed; every user it did not reach is recorded with the reason."""
    try:
        job = db.session.get(Job, job_id)
        if job is not None and job.state == JOB_RUNNING:
            _record_not_reached(job, f"Not done: {message}")
        db.session.execute(update(Job).where(Job.id == job_id, Job.state == JOB_RUNNING)
                           .values(state=JOB_FAILED, finished_at=utcnow(), runner=None,
                                   message=message))
        db.session.commit()
    except Exception as exc:
        db.session.rollback()
        if not is_storage_error(exc):
            raise
        _pause(job_id, exc)


def _record_not_reached(job: Job, reason: str) -> None:
    """A failed item for every selected user the job has no item for."""
    act = ACTIONS.get(job.kind)
    while True:
        last_id = db.session.scalar(select(func.max(JobItem.user_id)).where(JobItem.job_id == job.id)) or 0
        users = next_users(job.params["selection"], last_id, 1000)
        if not users:
            return
        outcomes = act.settle(job, users, reason) if act and act.settle else \
            [Outcome(u, "failed", reason) for u in users]
        _record(job, outcomes, token=None)


def _claim(job_id: int) -> Claim | None:
    now = utcnow()
    # Host, a part no other run ever has, and the process (to read in the Jobs tab):
    # at most 64 characters, the column's size.
    token = f"{socket.gethostname()[:40]}#{uuid.uuid4().hex[:12]}:{os.getpid()}"
    claimed = db.session.execute(
        update(Job).where(
            Job.id == job_id,
            (Job.state == JOB_QUEUED)
            | ((Job.state == JOB_RUNNING)
               & (Job.heartbeat_at.is_(None) | (Job.heartbeat_at < now - stale_after()))),
        ).values(state=JOB_RUNNING, runner=token, heartbeat_at=now,
                 started_at=func.coalesce(Job.started_at, now),
                 message=case((Job.message.like(f"{PAUSED}%"), None), else_=Job.message))
    ).rowcount
    db.session.commit()
    return Claim(job_id, token) if claimed == 1 else None


def run_job(job_id: int, *, _submitted: bool = False) -> Job | None:
    """Run (or resume) a job to its end. Returns None if another runner owns it."""
    if not _submitted:
        # Called directly (inline, CLI, tests): still never beside a runner of this process.
        with _executor_lock:
            if job_id in _in_process:
                return None
            _in_process.add(job_id)
        try:
            return run_job(job_id, _submitted=True)
        finally:
            with _executor_lock:
                _in_process.discard(job_id)
    claim = _claim(job_id)
    if claim is None:
        return None
    app = current_app._get_current_object()
    beat = threading.Thread(target=_heartbeat, args=(app, claim), daemon=True,
                            name=f"cds-job-{job_id}-heartbeat")
    beat.start()
    reset = _claim_var.set(claim)
    try:
        return _run_claimed(db.session.get(Job, job_id), claim)
    except RunnerStopping:
        db.session.rollback()
        # Let the next runner (after a restart, or another node) resume it at once.
        db.session.execute(update(Job).where(Job.id == job_id, Job.runner == claim.token).values(
            runner=None, heartbeat_at=utcnow() - stale_after() - timedelta(seconds=1)))
        db.session.commit()
        log.info("job %s stopped with the server; it resumes after the last user recorded", job_id)
        return None
    finally:
        _claim_var.reset(reset)
        claim.stop.set()
        beat.join(timeout=5)


def _run_claimed(job: Job, claim: Claim) -> Job:
    act = ACTIONS[job.kind]
    log.info("job %s (%s) started by %s: %s users", job.id, job.kind, claim.token, job.total)
    # Resume after the last user this job recorded (users are walked in id order).
    last_id = db.session.scalar(select(func.max(JobItem.user_id)).where(JobItem.job_id == job.id)) or 0
    with acting_for(job.created_by, job.params.get("actor_type")):
        try:
            while True:
                if claim.lost.is_set():
                    raise ClaimLost(f"job {job.id} was taken over by another runner")
                if _stopping.is_set():
                    raise RunnerStopping(f"job {job.id}: this process is stopping")
                users = next_users(job.params["selection"], last_id, act.batch_size)
                if not users:
                    break
                outcomes = act.run_batch(job, users)
                _record(job, outcomes, token=claim.token)
                last_id = users[-1].id
                db.session.refresh(job)
                if job.state == JOB_CANCELLED:
                    log.info("job %s cancelled after %s users", job.id, job.done)
                    return job
                log.info("job %s progress %s/%s", job.id, job.done, job.total)
        finally:
            if act.finish:
                act.finish(job)
    state = JOB_FAILED if job.failed and not job.succeeded and not job.skipped else JOB_DONE
    finished = db.session.execute(update(Job).where(Job.id == job.id, Job.runner == claim.token,
                                                    Job.state == JOB_RUNNING).values(
        state=state, finished_at=utcnow(),
        total=case((Job.done > Job.total, Job.done), else_=Job.total))).rowcount
    db.session.commit()
    db.session.refresh(job)
    if finished:
        log.info("job %s finished: %s ok, %s skipped, %s failed",
                 job.id, job.succeeded, job.skipped, job.failed)
    return job


def _record(job: Job, outcomes: list[Outcome], *, token: str | None) -> None:
    """One item per user and the counters, in one transaction; a user already recorded
    for this job is not recorded (nor counted) again. With ``token``, only while that
    claim holds the job (else ClaimLost, nothing written)."""
    if outcomes:
        already = set(db.session.scalars(select(JobItem.user_id).where(
            JobItem.job_id == job.id, JobItem.user_id.in_([o.user.id for o in outcomes]))))
        outcomes = [o for o in outcomes if o.user.id not in already]
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    now = utcnow()
    items = []
    for o in outcomes:
        counts[o.outcome] += 1
        items.append({"job_id": job.id, "user_id": o.user.id, "login_id": o.user.login_id,
                      "outcome": o.outcome, "message": o.message[:1000], "at": now})
    guard = [Job.id == job.id] + ([Job.runner == token] if token else [])
    changed = db.session.execute(update(Job).where(*guard).values(
        done=Job.done + len(outcomes), succeeded=Job.succeeded + counts["ok"],
        skipped=Job.skipped + counts["skipped"], failed=Job.failed + counts["failed"],
        heartbeat_at=now)).rowcount
    if not changed:
        db.session.rollback()
        raise ClaimLost(f"job {job.id} was taken over by another runner")
    if items:
        # Not one ORM object per user: a job over 100,000 users records 100,000 items.
        # SQLite takes them fastest as one executemany, PostgreSQL as one COPY.
        connection = db.session.connection()
        if connection.dialect.name == "postgresql":
            columns = ("job_id", "user_id", "login_id", "outcome", "message", "at")
            with connection.connection.driver_connection.cursor() as cursor:
                with cursor.copy(f"COPY job_item ({', '.join(columns)}) FROM STDIN") as copy:
                    for item in items:
                        copy.write_row([item[c] for c in columns])
        else:
            connection.execute(insert(JobItem.__table__), items)
    db.session.commit()


def job_items(job: Job, outcome: str | None = None, limit: int = 200) -> list[JobItem]:
    q = select(JobItem).where(JobItem.job_id == job.id)
    if outcome:
        q = q.where(JobItem.outcome == outcome)
    return list(db.session.scalars(q.order_by(JobItem.id).limit(limit)))


def reason_counts(job: Job) -> list[tuple[str, str, int]]:
    """(outcome, message, count): the summary's split. Successes are split too (e.g. Auto
    deploy: "Force config set." and "Sent."; an Outbox write is not a send), then
    failures and skips with their reasons."""
    rows = db.session.execute(
        select(JobItem.outcome, JobItem.message, func.count())
        .where(JobItem.job_id == job.id)
        .group_by(JobItem.outcome, JobItem.message).order_by(func.count().desc()).limit(30))
    order = {"ok": 0, "failed": 1, "skipped": 2}
    return sorted((tuple(r) for r in rows), key=lambda r: order.get(r[0], 3))


# --- what the Jobs tab shows ------------------------------------------------------

def action_label(kind: str) -> str:
    return ACTIONS[kind].label if kind in ACTIONS else kind


def active_jobs() -> list[Job]:
    """Queued and running jobs, oldest first."""
    return list(db.session.scalars(select(Job).where(Job.state.in_([JOB_QUEUED, JOB_RUNNING]))
                                   .order_by(Job.id)))


def scheduled_jobs() -> list[Job]:
    return list(db.session.scalars(select(Job).where(Job.state == JOB_SCHEDULED)
                                   .order_by(Job.run_at, Job.id)))


def finished_jobs(page: int = 1, per_page: int = 25) -> tuple[list[Job], int]:
    """One page of finished jobs, most recent first, and how many there are."""
    finished = Job.state.in_([JOB_DONE, JOB_FAILED, JOB_CANCELLED])
    total = db.session.scalar(select(func.count(Job.id)).where(finished))
    jobs = db.session.scalars(select(Job).where(finished)
                              .order_by(Job.finished_at.desc(), Job.id.desc())
                              .offset((page - 1) * per_page).limit(per_page))
    return list(jobs), total


ITEM_OUTCOMES = ("failed", "skipped", "ok")


def item_page(job: Job, outcome: str | None, page: int = 1, per_page: int = 100
              ) -> tuple[list[JobItem], int]:
    """One page of a job's per-user outcomes (``outcome`` None: failed and skipped)."""
    cond = JobItem.job_id == job.id
    cond &= (JobItem.outcome == outcome) if outcome else JobItem.outcome.in_(["failed", "skipped"])
    total = db.session.scalar(select(func.count(JobItem.id)).where(cond))
    items = db.session.scalars(select(JobItem).where(cond).order_by(JobItem.id)
                               .offset((page - 1) * per_page).limit(per_page))
    return list(items), total


def sync_schedules() -> list:
    """Connections and their periodic sync: interval, last result, next run."""
    return list(db.session.scalars(select(Connection).order_by(
        Connection.enabled.desc(), Connection.next_sync_at, Connection.name)))


# --- the scheduler's part ----------------------------------------------------

@tick_task("jobs.run_due")
def run_due(app) -> None:
    """Start scheduled jobs whose time has come, and pick up orphaned or stale ones."""
    now = utcnow()
    db.session.execute(update(Job).where(Job.state == JOB_SCHEDULED, Job.run_at <= now)
                       .values(state=JOB_QUEUED))
    db.session.commit()
    waiting = db.session.scalars(select(Job.id).where(
        ((Job.state == JOB_QUEUED) & ((Job.run_at.is_not(None)) | (Job.created_at < now - timedelta(seconds=10))))
        | ((Job.state == JOB_RUNNING)
           & (Job.heartbeat_at.is_(None) | (Job.heartbeat_at < now - stale_after()))))).all()
    for job_id in waiting:
        if start_in_background(app, job_id):
            log.info("job %s: starting (queued, or its runner stopped renewing its claim)", job_id)


@tick_task("jobs.prune", every_ticks=720)
def prune_finished(app) -> int:
    """Forget finished jobs older than the retention set in Settings (0 keeps them all)."""
    days = get_setting("JOB_RETENTION_DAYS")
    if not days or days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=days)
    old = select(Job.id).where(Job.state.in_([JOB_DONE, JOB_FAILED, JOB_CANCELLED]),
                               Job.finished_at < cutoff)
    db.session.execute(delete(JobItem).where(JobItem.job_id.in_(old)))
    pruned = db.session.execute(delete(Job).where(Job.id.in_(old))).rowcount
    db.session.commit()
    if pruned:
        log.info("pruned %s finished jobs older than %s days", pruned, days)
    return pruned
