"""Administrator accounts as Settings changes them: add, change role, reset password,
disable and enable, and each administrator's own password. Each change is audited
here, in the same transaction as the change, with the acting administrator passed in.

Rules: only the primary administrator changes accounts (the routes enforce it),
and the last active primary administrator can be neither demoted nor disabled,
so the installation always keeps someone who can manage it. A password reset or
a disable ends that account's sessions (``session_epoch`` changes).
"""
from __future__ import annotations

from sqlalchemy import func, select

from cds.audit.service import record_event
from cds.auth.service import AccountError, check_new_password, create_admin, end_sessions
from cds.extensions import db
from cds.models import ROLE_LABELS, ROLES, AdminAccount
from cds.security import generate_password, hash_password, verify_password


class LastPrimaryAdmin(AccountError):
    """The change would leave no active primary administrator."""


class ConfirmationNeeded(AccountError):
    """An administrator is about to lock themselves out of something: done only when
    explicitly confirmed. The message says what would happen."""


# What each role may do, for the question asked before a role changes.
ROLE_POWERS = {
    "primary": "may do everything, including administrator accounts, connections and mail settings",
    "admin": "may change users, deploy, import and sync, but not manage administrator accounts "
             "or create connections",
    "readonly": "may only look: no changes to users, no deployments, imports or settings",
}


def role_change_question(admin: AdminAccount, role: str, actor: str | None) -> str:
    """What a role change will do, said before it is done (``actor``: who asks, by name)."""
    text = (f"Change {admin.username} from {ROLE_LABELS[admin.role].lower()} to "
            f"{ROLE_LABELS[role].lower()}? Then {admin.username} {ROLE_POWERS[role]}.")
    if actor == admin.username:
        text += (" This is your own account: you lose the rights of a primary administrator at once "
                 "and cannot take them back yourself.")
    return text


def list_admins() -> list[AdminAccount]:
    return list(db.session.scalars(select(AdminAccount).order_by(
        AdminAccount.disabled, func.lower(AdminAccount.username))))


def get_admin(admin_id: int) -> AdminAccount:
    admin = db.session.get(AdminAccount, admin_id)
    if admin is None:
        raise AccountError(f"Administrator account {admin_id} does not exist.")
    return admin


def _active_primaries() -> int:
    return db.session.scalar(select(func.count(AdminAccount.id)).where(
        AdminAccount.role == "primary", AdminAccount.disabled.is_(False)))


def _keep_a_primary(admin: AdminAccount, action: str) -> None:
    if admin.role == "primary" and not admin.disabled and _active_primaries() <= 1:
        raise LastPrimaryAdmin(f"{admin.username} is the last primary administrator and cannot be "
                               f"{action}. Make another account primary administrator first.")


def add_admin(username: str, role: str, password: str = "", *, actor: str | None = None
              ) -> tuple[AdminAccount, str | None]:
    """Create an account. With no password given one is generated and returned (shown once)."""
    generated = None
    if not password:
        password = generated = generate_password()
    admin = create_admin(username, password, role, actor=actor, password_generated=bool(generated))
    admin.password_change_due = True  # the primary administrator knows it: a one-time password
    db.session.commit()
    return admin, generated


def check_role_change(admin_id: int, role: str) -> AdminAccount:
    """The account, if ``role`` may be given to it; else AccountError saying why."""
    admin = get_admin(admin_id)
    role = "readonly" if role == "read-only" else role
    if role not in ROLES:
        raise AccountError(f"The role must be one of: {', '.join(ROLE_LABELS.values())}.")
    if role != admin.role and role != "primary":
        _keep_a_primary(admin, f"made {ROLE_LABELS[role].lower()}")
    return admin


def change_role(admin_id: int, role: str, *, actor: str, confirmed: bool = False) -> AdminAccount:
    """Change an account's role. Never the last active primary administrator's; one's own
    (``actor`` is the account's name) only when ``confirmed``."""
    admin = check_role_change(admin_id, role)
    role = "readonly" if role == "read-only" else role
    if role == admin.role:
        return admin
    if actor == admin.username and not confirmed:
        raise ConfirmationNeeded(role_change_question(admin, role, actor))
    old = admin.role
    admin.role = role
    record_event("admin.role", actor=actor, commit=False,
                 detail={"account": admin.username, "from": old, "to": role})
    db.session.commit()
    return admin


def reset_password(admin_id: int, password: str = "", *, actor: str) -> tuple[AdminAccount, str | None]:
    """Set a new password (or generate one, returned to be shown once); ends their sessions."""
    admin = get_admin(admin_id)
    generated = None
    if not password:
        password = generated = generate_password()
    check_new_password(password)
    admin.password_hash = hash_password(password)
    end_sessions(admin)
    admin.password_change_due = True
    record_event("admin.password_reset", actor=actor, commit=False, detail={"account": admin.username})
    db.session.commit()
    return admin, generated


def set_disabled(admin_id: int, disabled: bool, *, actor: str, confirmed: bool = False) -> AdminAccount:
    """Disable or enable an account. Never the last active primary administrator; one's
    own account (``actor``) only when ``confirmed``."""
    admin = get_admin(admin_id)
    if disabled == admin.disabled:
        return admin
    if disabled:
        _keep_a_primary(admin, "disabled")
        if actor == admin.username and not confirmed:
            raise ConfirmationNeeded("This is your own account: disabling it signs you out at once, "
                                     "and only another primary administrator can enable it again.")
        end_sessions(admin)  # their open sessions end now
    admin.disabled = disabled
    record_event("admin.disable" if disabled else "admin.enable", actor=actor, commit=False,
                 detail={"account": admin.username})
    db.session.commit()
    return admin


def change_own_password(admin: AdminAccount, current: str, new: str, repeat: str) -> int:
    """An administrator's own password. Other sessions of the account end; returns the
    new session epoch for the caller's own session to keep."""
    if not verify_password(admin.password_hash, current or ""):
        raise AccountError("The current password is wrong.")
    if new != repeat:
        raise AccountError("The new passwords do not match.")
    check_new_password(new)
    if verify_password(admin.password_hash, new):
        raise AccountError("The new password is the same as the current one.")
    admin.password_hash = hash_password(new)
    end_sessions(admin)
    admin.password_change_due = False
    record_event("admin.password_change", actor=admin.username, commit=False, detail={"account": admin.username})
    db.session.commit()
    return admin.session_epoch
