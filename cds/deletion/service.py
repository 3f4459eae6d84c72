"""Delete: remove users for good, after cutting off everything they were given.

Each deleted user's device credentials and open links are revoked first (so an
installed client gets 401 ``redeploy_required`` at its next status check, and a
link in an old e-mail stops working), their redirect entries are withdrawn, and
one audit event per user records who deleted whom.
"""
from __future__ import annotations

from sqlalchemy import select

from cds.audit.service import record_event
from cds.extensions import db
from cds.jobs.service import InvalidJob, Outcome, action
from cds.models import Deployment, Job, User, utcnow
from cds.redirect.service import withdraw_links
from cds.users.login_ids import revoke_client_access

# Above this many users the administrator must type "all" to confirm.
CONFIRM_ALL_ABOVE = 100


class DeleteNotConfirmed(InvalidJob):
    """A large delete was asked for without typing "all"."""


def check_delete_confirmation(total: int, confirm_text: str | None) -> None:
    """Deleting more than 100 users needs the word "all" typed; raises DeleteNotConfirmed."""
    if total > CONFIRM_ALL_ABOVE and (confirm_text or "").strip().lower() != "all":
        raise DeleteNotConfirmed(
            f"Deleting {total} users cannot be undone: type the word \"all\" to confirm.")


def _check_job(total: int, params: dict) -> None:
    check_delete_confirmation(total, params.get("confirm"))


def delete_user(user: User, *, reason: str = "deleted", job: Job | None = None) -> dict:
    """Delete one user in the caller's transaction; returns what was revoked."""
    now = utcnow()
    # Links that are no longer open (used, superseded, revoked) may still have a
    # redirect entry until they expire: withdraw those too.
    closed_links = list(db.session.scalars(select(Deployment.token_hash).where(
        Deployment.user_id == user.id, Deployment.expires_at > now,
        (Deployment.used_at.is_not(None)) | (Deployment.superseded_at.is_not(None))
        | (Deployment.revoked_at.is_not(None)))))
    devices, links = revoke_client_access(user, reason)
    withdraw_links(closed_links)
    detail = {"devices_revoked": devices, "links_revoked": links, "name": user.display_name}
    actor = actor_type = None
    if job is not None:
        detail["job"] = job.id
        # Jobs run away from the request: the event names who asked for the job.
        actor = job.created_by
        actor_type = job.params.get("actor_type") or ("admin" if job.created_by else "system")
    record_event("user.delete", user=user, actor=actor, actor_type=actor_type, detail=detail,
                 commit=False)
    # Device credentials and deployments go with the user (ON DELETE CASCADE);
    # a client presenting a key that no longer exists is told to redeploy.
    db.session.delete(user)
    db.session.flush()
    return {"devices": devices, "links": links}


@action("delete", "Delete", check=_check_job, options=("confirm",))
def delete_batch(job: Job, users: list[User]) -> list[Outcome]:
    """The Delete bulk action: one savepoint per user, so one failure never stops the rest."""
    try:
        check_delete_confirmation(job.total, job.params.get("confirm"))
    except DeleteNotConfirmed as exc:
        return [Outcome(u, "skipped", str(exc)) for u in users]
    outcomes = []
    for user in users:
        login_id, user_id = user.login_id, user.id
        try:
            with db.session.begin_nested():
                revoked = delete_user(user, job=job)
        except Exception as exc:  # one user's failure is reported, the others go on
            outcomes.append(Outcome(_Gone(user_id, login_id), "failed", f"Not deleted: {exc}"))
            continue
        message = []
        if revoked["devices"]:
            message.append(f"{revoked['devices']} device(s) revoked")
        if revoked["links"]:
            message.append(f"{revoked['links']} open link(s) revoked")
        outcomes.append(Outcome(_Gone(user_id, login_id), "ok", ", ".join(message)))
    return outcomes


class _Gone:
    """What the job report needs of a user row that no longer exists."""
    def __init__(self, user_id: int, login_id: str):
        self.id = user_id
        self.login_id = login_id
