"""Login IDs: who owns one (unique ignoring case), and what changing a user's ID does
(the installed client stops working and must be redeployed)."""
from __future__ import annotations

from sqlalchemy import func, select, update

from cds.extensions import db
from cds.jobs.actions import start_action
from cds.models import ClientDevice, Deployment, User, login_key, utcnow
from cds.redirect.service import withdraw_links
from cds.settings.service import get_setting


def revoke_client_access(user: User, reason: str) -> tuple[int, int]:
    """Stop every device credential and unused link of a user. Returns (devices, links)."""
    now = utcnow()
    devices = db.session.execute(
        update(ClientDevice).where(ClientDevice.user_id == user.id, ClientDevice.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)).rowcount
    open_links = list(db.session.scalars(select(Deployment.token_hash).where(
        Deployment.user_id == user.id, Deployment.used_at.is_(None),
        Deployment.revoked_at.is_(None), Deployment.superseded_at.is_(None))))
    db.session.execute(update(Deployment).where(
        Deployment.user_id == user.id, Deployment.used_at.is_(None), Deployment.revoked_at.is_(None),
        Deployment.superseded_at.is_(None)).values(revoked_at=now))
    withdraw_links(open_links)
    return devices, len(open_links)


def apply_login_id_change(user: User, new_login_id: str) -> bool:
    """A user's Login ID changes: the installed client stops working and must be redeployed.

    Returns True when the ID changed. The caller commits."""
    if new_login_id == user.login_id:
        return False
    user.login_id = new_login_id
    revoke_client_access(user, "id_change")
    user.redeploy_required = True
    user.force_config = False
    user.config_version += 1
    return True


def id_change_consequences(user: User) -> str:
    """What changing this user's ID does, said before it is done (the page asks first)."""
    devices = db.session.scalar(select(func.count(ClientDevice.id)).where(
        ClientDevice.user_id == user.id, ClientDevice.revoked_at.is_(None))) or 0
    links = db.session.scalar(select(func.count(Deployment.id)).where(
        Deployment.user_id == user.id, Deployment.used_at.is_(None), Deployment.revoked_at.is_(None),
        Deployment.superseded_at.is_(None), Deployment.expires_at > utcnow())) or 0
    parts = []
    if devices:
        parts.append(f"the app on {devices} device{'s' if devices != 1 else ''} stops working "
                     f"and must be factory reset")
    if links:
        parts.append(f"{links} unused deployment link{'s' if links != 1 else ''} stop{'s' if links == 1 else ''} working")
    parts.append("the user is marked \"redeploy required\"")
    then = ("a new deployment e-mail is sent at once (setting \"Redeploy on ID change\")"
            if get_setting("AUTO_REDEPLOY_ON_ID_CHANGE") else "a new deployment e-mail must be sent")
    return "Changing the ID of " + user.display_name + ": " + "; ".join(parts) + "; " + then + "."


def login_id_owner(login_id: str, exclude_user_id: int | None = None) -> User | None:
    """The user who has this login ID, ignoring case ("JDoe" is "jdoe"), or None."""
    query = select(User).where(User.login_key == login_key(login_id))
    if exclude_user_id is not None:
        query = query.where(User.id != exclude_user_id)
    return db.session.scalar(query.limit(1))


def login_id_owners(login_ids) -> dict[str, tuple[int, str, str]]:
    """For the login IDs already in use: login_key -> (user id, login ID, name)."""
    keys = sorted({login_key(v) for v in login_ids if v})
    out = {}
    for start in range(0, len(keys), 900):
        for row in db.session.execute(select(User.login_key, User.id, User.login_id, User.first_name,
                                             User.last_name).where(User.login_key.in_(keys[start:start + 900]))):
            name = " ".join(p for p in (row.first_name, row.last_name) if p) or row.login_id
            out[row.login_key] = (row.id, row.login_id, name)
    return out


def login_id_in_use(login_id: str, owner_login_id: str, owner_name: str) -> str:
    """The message for a login ID another user has: which user, and why a different case is no escape."""
    same = "" if owner_login_id == login_id else " (Login IDs that differ only in upper/lower case are the same)"
    return f"Login ID {login_id!r} is already used by {owner_name} ({owner_login_id}){same}."


def redeploy_after_id_change(user: User, *, actor: str | None = None):
    """With the setting AUTO_REDEPLOY_ON_ID_CHANGE on, start the Deploy job for the
    user whose ID just changed. Returns the job, or None (the setting is off)."""
    if not get_setting("AUTO_REDEPLOY_ON_ID_CHANGE"):
        return None
    return start_action("deploy", {"ids": [user.id]}, actor=actor or "system")
