"""Administrator accounts: sign-in, creation, and the first primary administrator."""
from __future__ import annotations

import re

from sqlalchemy import func, select

from cds import errors
from cds.extensions import db
from cds.models import ROLES, AdminAccount, utcnow
from cds.security import MIN_PASSWORD_LENGTH, generate_password, hash_password, verify_password

USERNAME_RE = re.compile(r"^[A-Za-z0-9._@-]{2,64}$")


class AccountError(errors.Invalid):
    """An account cannot be created or changed as asked; the message says why."""


def authenticate(username: str, password: str) -> AdminAccount | None:
    admin = db.session.scalar(select(AdminAccount).where(
        func.lower(AdminAccount.username) == username.strip().lower()))
    ok = verify_password(admin.password_hash if admin else None, password)
    if not ok or admin is None or admin.disabled:
        return None
    admin.last_login_at = utcnow()
    db.session.commit()
    return admin


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"The password must have at least {MIN_PASSWORD_LENGTH} characters.")


def create_admin(username: str, password: str, role: str = "admin", *, actor: str | None = None,
                 password_generated: bool = False) -> AdminAccount:
    """Create an administrator account, audited (``admin.create``) in the same transaction:
    from Settings (``actor`` the primary administrator), the shell (``cli``) or the
    first start (``system``)."""
    from cds.audit.service import record_event

    username = username.strip()
    if not USERNAME_RE.match(username):
        raise AccountError("A user name has 2-64 letters, digits or . _ @ -")
    if role not in ROLES:
        raise AccountError(f"The role must be one of: {', '.join(ROLES)}.")
    check_new_password(password)
    exists = db.session.scalar(select(AdminAccount.id).where(
        func.lower(AdminAccount.username) == username.lower()))
    if exists:
        raise AccountError(f"An administrator named {username!r} already exists.")
    admin = AdminAccount(username=username, password_hash=hash_password(password), role=role)
    db.session.add(admin)
    record_event("admin.create", actor=actor, commit=False,
                 detail={"account": username, "role": role, "password_generated": password_generated})
    db.session.commit()
    return admin


def ensure_first_admin() -> str | None:
    """On an instance without any administrator, create `admin`; return its password once."""
    if db.session.scalar(select(func.count()).select_from(AdminAccount)):
        return None
    password = generate_password()
    admin = create_admin("admin", password, role="primary", actor="system", password_generated=True)
    admin.password_change_due = True  # printed in the log: the administrator chooses their own
    db.session.commit()
    return password
