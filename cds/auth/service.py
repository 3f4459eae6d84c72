"""Administrator accounts: sign-in, creation, and the first primary administrator."""
from __future__ import annotations

import re
import time

from flask import current_app
from limits import parse_many
from sqlalchemy import func, select

from cds import errors
from cds.audit.service import record_event
from cds.extensions import db, limit_counter
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


# --- throttling failed sign-ins ------------------------------------------------------
#
# Three counters of *failed* sign-ins (a success never counts):
#   per address             LOGIN_LIMIT_PER_ADDRESS  – one address guessing many accounts;
#   per address + account   LOGIN_LIMIT_PER_ACCOUNT  – one address guessing one account;
#   per account             LOGIN_LIMIT_PER_ACCOUNT  – many addresses guessing one account.
# The account-wide counter only stops addresses that have themselves failed for that
# account: guessing stays throttled, but nobody can lock the real owner out by failing
# on purpose, because the owner signs in from an address that has no failures.

class SignInThrottled(Exception):
    """Too many failed sign-ins; the message says which limit and ``retry_after`` when."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, retry_after)


def _limits(setting: str):
    return parse_many(current_app.config[setting])


def _wait(stats) -> int:
    return int(stats.reset_time - time.time()) + 1


def check_sign_in_allowed(address: str, username: str) -> None:
    """Raise SignInThrottled if this address may not try this account now."""
    account = username.strip().lower()[:64]
    for lim in _limits("LOGIN_LIMIT_PER_ADDRESS"):
        stats = limit_counter("get_window_stats", lim, "login-address", address)
        if stats.remaining <= 0:
            raise SignInThrottled("Too many failed sign-ins from this address. Wait a minute and "
                                  "try again.", _wait(stats))
    failed_here = False
    for lim in _limits("LOGIN_LIMIT_PER_ACCOUNT"):
        stats = limit_counter("get_window_stats", lim, "login-pair", address, account)
        if stats.remaining <= 0:
            raise SignInThrottled("Too many failed sign-ins for this account from this address. "
                                  "Wait a minute and try again.", _wait(stats))
        failed_here = failed_here or stats.remaining < lim.amount
    if failed_here:
        for lim in _limits("LOGIN_LIMIT_PER_ACCOUNT"):
            stats = limit_counter("get_window_stats", lim, "login-account", account)
            if stats.remaining <= 0:
                raise SignInThrottled("Too many failed sign-ins for this account. Wait a minute and "
                                      "try again.", _wait(stats))


def record_failed_sign_in(address: str, username: str) -> None:
    account = username.strip().lower()[:64]
    for lim in _limits("LOGIN_LIMIT_PER_ADDRESS"):
        limit_counter("hit", lim, "login-address", address)
    for lim in _limits("LOGIN_LIMIT_PER_ACCOUNT"):
        limit_counter("hit", lim, "login-pair", address, account)
        limit_counter("hit", lim, "login-account", account)


def end_sessions(admin: AdminAccount) -> None:
    """Every session cookie issued to this administrator stops working (sign-out, password
    change, disable): each request compares the cookie's epoch with this one."""
    admin.session_epoch += 1
