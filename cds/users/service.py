"""Changing users one at a time (the page, the API and the CLI share ``save_user``),
the user page's history, devices and audit trail, and the Assign profile bulk action.

Finding users is ``cds.users.query``, selections ``cds.users.selection``, the field
table ``cds.users.fields``, the rules of a change ``cds.users.changes``, login IDs
``cds.users.login_ids``."""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from cds.audit.service import actor_type_of, record_event
from cds.extensions import db
from cds.jobs.service import Outcome, action
from cds.models import AuditEvent, ClientDevice, Deployment, DeploymentProfile, User, utcnow
from cds.users.changes import Change, plan_change
from cds.users.errors import InvalidUser, NotFound, UserError
from cds.users.login_ids import apply_login_id_change, login_id_in_use, login_id_owner


def get_user(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(f"User {user_id} does not exist (it may have been deleted).")
    return user


# --- adding and editing users ------------------------------------------------------

@dataclass
class SaveResult:
    user: User
    created: bool = False
    changed: list[str] = field(default_factory=list)
    old_login_id: str | None = None  # set when the ID changed

    @property
    def id_changed(self) -> bool:
        return self.old_login_id is not None


def _profile(profile_id) -> DeploymentProfile | None:
    try:
        return db.session.get(DeploymentProfile, int(profile_id)) if profile_id not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _checked(user: User | None, values: dict, secrets: dict) -> tuple[Change, DeploymentProfile | None]:
    """The planned change of an add or edit, with the errors only the database can
    tell (a profile that does not exist, a login ID another user has); writes nothing."""
    profile = _profile(values.get("profile_id"))
    change = plan_change(user, {**values, "profile_id": profile.id if profile else None}, secrets)
    if profile is None:
        change.errors["profile_id"] = "Choose a deployment profile that exists."
    login_id = change.fields.get("login_id")
    if login_id and "login_id" not in change.errors:
        owner = login_id_owner(login_id, user.id if user else None)
        if owner is not None:
            change.errors["login_id"] = login_id_in_use(login_id, owner.login_id, owner.display_name)
    return change, profile


def user_errors(user: User | None, values: dict, secrets: dict | None = None) -> dict[str, str]:
    """The field errors ``save_user`` would report, without saving (e.g. before asking
    the administrator to confirm an ID change)."""
    return _checked(user, values, secrets or {})[0].errors


def apply_change(user: User, change: Change) -> None:
    """Write a planned change into a user; the caller commits. A new login ID runs the
    ID change (devices revoked, redeploy required), which raises config_version itself."""
    if change.profile_id is not None:
        user.profile_id = change.profile_id
    for name, value in change.fields.items():
        if name != "login_id" or change.created:
            setattr(user, name, value)
    for name, value in change.secrets.items():
        user.set_secret(name, value or None)
    if change.login_id_changed:
        apply_login_id_change(user, change.fields["login_id"])
    elif change.raises_config_version:
        user.config_version += 1


def save_user(user: User | None, values: dict, secrets: dict | None = None, *,
              actor: str | None = None) -> SaveResult:
    """Create (user=None) or edit a user from the console, API or CLI, in one transaction.

    ``values`` holds fields and ``profile_id``; for an imported user the fields its
    source owns cannot change (Sync changes them), the profile and secrets can.
    ``secrets``: {name: new value} replaces, {name: None} clears, absent keeps.
    Raises InvalidUser with every field error; nothing is written then."""
    change, profile = _checked(user, values, secrets or {})
    if change.errors:
        raise InvalidUser(change.errors)
    result = SaveResult(user=user, created=user is None, changed=change.changed,
                        old_login_id=change.old_login_id)
    if user is None:
        user = result.user = User(login_id=change.fields["login_id"], profile=profile)
        db.session.add(user)
    apply_change(user, change)
    db.session.flush()
    # Field names only: the audit trail never holds a secret.
    detail = {"changed": result.changed, "source": user.source}
    if result.old_login_id:
        detail["old_login_id"] = result.old_login_id
    if result.created or result.changed:
        record_event("user.create" if result.created else "user.update", actor=actor, user=user,
                     detail=detail, commit=False)
    db.session.commit()
    return result


# --- the user page: history, devices, audit ----------------------------------------

def deployment_history(user: User, limit: int = 50) -> list[Deployment]:
    return list(db.session.scalars(select(Deployment).where(Deployment.user_id == user.id)
                                   .order_by(Deployment.issued_at.desc(), Deployment.id.desc())
                                   .limit(limit)))


def user_devices(user: User) -> list[ClientDevice]:
    return list(db.session.scalars(select(ClientDevice).where(ClientDevice.user_id == user.id)
                                   .order_by(ClientDevice.revoked_at.is_not(None),
                                             ClientDevice.activated_at.desc())))


def user_audit_events(user: User, limit: int = 50):
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.user_id == user.id)
                                   .order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)))


def revoke_device(user: User, device_id: int, *, actor: str | None = None) -> ClientDevice:
    """A lost phone: this device's credential stops working at once (the client then
    gets 401 redeploy_required); the user's other devices keep working."""
    device = db.session.get(ClientDevice, device_id)
    if device is None or device.user_id != user.id:
        raise NotFound(f"Device {device_id} of this user does not exist.")
    if device.revoked_at is not None:
        raise UserError("This device was already revoked.")
    device.revoked_at = utcnow()
    device.revoked_reason = "revoked_by_admin"
    record_event("device.revoke", actor=actor, user=user,
                 detail={"device": device.device_id, "platform": device.platform}, commit=False)
    db.session.commit()
    return device


# --- the Assign profile bulk action --------------------------------------------------

@action("assign_profile", "Assign profile", options=("profile_id",))
def assign_profile_batch(job, users: list[User]) -> list[Outcome]:
    """Put the users on the profile params["profile_id"]; their configuration changes."""
    profile = db.session.get(DeploymentProfile, job.params.get("profile_id") or 0)
    if profile is None:
        return [Outcome(u, "failed", "The chosen profile no longer exists.") for u in users]
    outcomes, moved = [], 0
    for user in users:
        if user.profile_id == profile.id:
            outcomes.append(Outcome(user, "skipped", f"Already on {profile.name}."))
            continue
        user.profile_id = profile.id
        user.config_version += 1
        moved += 1
        outcomes.append(Outcome(user, "ok"))
    if moved:
        record_event("user.assign_profile", actor=job.created_by, actor_type=actor_type_of(job.created_by),
                     count=moved, detail={"profile": profile.name, "job": job.id}, commit=False)
    return outcomes
