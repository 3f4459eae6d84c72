"""Starting a bulk action: the one way, for the Users tab, the JSON API, the shell
and the services that start jobs themselves (import and deploy, sync now, periodic
sync, redeploy after an ID change).

``start_action`` takes the action, the selection (``parse_selection`` read it),
the action's parameters, the time to run and who asks. It refuses what any surface
would refuse — an unknown action, a time for an action that cannot be scheduled, a
time not understood or in the past, a missing profile, an unconfirmed large delete,
an empty selection — records the job and its ``job.create`` audit event in one
transaction, and queues the job (or, for the shell, runs it here and now).
"""
from __future__ import annotations

from datetime import datetime, timezone

from cds import errors
from cds.audit.service import actor_type_of, record_event
from cds.extensions import db
from cds.jobs.service import ACTIONS, InvalidJob, create_job, run_job, submit
from cds.models import Job, utcnow

RUN_AT_HELP = ("an ISO 8601 date and time, e.g. 2030-03-01T08:00:00Z or "
               "2030-03-01T09:00:00+01:00 (without an offset the time is UTC)")


def parse_run_at(value, *, now: datetime | None = None) -> datetime | None:
    """When to run: None (now) for no value; else an ISO 8601 time.

    One rule on every surface: a time with an offset (or ``Z``) is that instant; a
    time without one is UTC. A time that is not in the future is refused — leave it
    empty to run now. Returned as naive UTC to the second, as the database keeps it."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        when = value
    else:
        if not isinstance(value, str):
            raise InvalidJob(f"The time to run must be {RUN_AT_HELP}.", {"at": "not a string"})
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidJob(f"The time to run ({value!r}) was not understood: give {RUN_AT_HELP}.",
                             {"at": f"cannot read {value!r}"}) from None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    when = when.replace(microsecond=0)
    if when <= (now or utcnow()):
        raise InvalidJob("The time to run is in the past: choose a time in the future, or leave "
                         "it empty to run now.", {"at": "in the past"})
    return when


def start_action(kind: str, selection: dict, *, params=None, run_at=None,
                 actor: str, actor_type: str | None = None, inline: bool = False) -> Job:
    """Check, record, audit and start one bulk action; returns its job.

    ``params`` is any mapping holding the action's parameters (a form, a JSON body,
    a dict); ``run_at`` a time ``parse_run_at`` reads (or a datetime), None for now.
    ``actor``: who asks (an administrator's name, ``api:<token name>``, ``cli``,
    ``scheduler``); ``actor_type`` defaults to what that name says (``actor_type_of``).
    ``inline``: run the job to its end in this process (the shell) instead of queueing it."""
    actor_type = actor_type or actor_type_of(actor)
    action = ACTIONS.get(kind)
    if action is None:
        raise errors.NotFound(f"There is no bulk action {kind!r}.")
    when = parse_run_at(run_at)
    if when is not None and not action.schedulable:
        schedulable = ", ".join(a.label for a in ACTIONS.values() if a.schedulable)
        raise InvalidJob(f"{action.label} cannot be scheduled; it runs at once. Only {schedulable} "
                         f"can run at a set time.", {"at": "not for this action"})
    job = create_job(kind, selection, params=params, run_at=when,
                     actor=actor, actor_type=actor_type, commit=False)
    record_event("job.create", actor=actor, actor_type=actor_type, count=job.total, commit=False,
                 detail={"job": job.id, "kind": kind, "description": job.description,
                         "scheduled_for": when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None})
    db.session.commit()
    if job.run_at is None:
        if inline:
            run_job(job.id)
        else:
            submit(job)
        db.session.refresh(job)
    return job
