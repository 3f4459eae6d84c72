"""API tokens: bearer credentials for scripts. Only a hash is stored; the token is shown once."""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError

from cds import errors
from cds.audit.service import record_event
from cds.extensions import db
from cds.models import ApiToken, utcnow
from cds.security import new_token, same_secret, token_hash

log = logging.getLogger("cds.api")

TOKEN_PREFIX = "cds_"
# "primary" may also create and re-authorize connections, as the primary administrator can.
API_ROLES = {"primary": "primary", "admin": "admin", "read-only": "readonly", "readonly": "readonly"}


class TokenError(errors.Invalid):
    """A token cannot be created or revoked as asked."""


class TokenNotFound(errors.NotFound, TokenError):
    pass


def create_api_token(name: str, role: str = "admin", expires_days: int | None = None,
                     created_by: str | None = None) -> tuple[ApiToken, str]:
    """Returns the stored row and the token itself, which is never retrievable again.
    ``created_by`` (who asks: an administrator, ``cli``) is also the audit event's actor."""
    name = (name or "").strip()
    if not 1 <= len(name) <= 64:
        raise TokenError("A token name has 1-64 characters.")
    if role not in API_ROLES:
        raise TokenError("The role of a token is primary, admin or read-only.")
    if expires_days is not None and not 1 <= expires_days <= 3650:
        raise TokenError("A token expires after 1-3650 days.")
    token = TOKEN_PREFIX + new_token()
    row = ApiToken(name=name, token_hash=token_hash(token), role=API_ROLES[role], created_by=created_by,
                   expires_at=utcnow() + timedelta(days=expires_days) if expires_days else None)
    db.session.add(row)
    db.session.flush()
    record_event("api_token.create", actor=created_by, commit=False,
                 detail={"name": row.name, "role": row.role, "token_id": row.id,
                         "expires_days": expires_days})
    db.session.commit()
    return row, token


def list_api_tokens() -> list[ApiToken]:
    return list(db.session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_api_token(token_id: int, *, actor: str | None = None) -> ApiToken:
    """The token stops working at once. Revoking a revoked token changes (and audits) nothing."""
    row = db.session.get(ApiToken, token_id)
    if row is None:
        raise TokenNotFound(f"API token {token_id} does not exist.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        record_event("api_token.revoke", actor=actor, commit=False,
                     detail={"name": row.name, "token_id": row.id})
        db.session.commit()
    return row


def find_valid_token(token: str) -> ApiToken | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    hashed = token_hash(token)
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == hashed))
    if row is None or not same_secret(row.token_hash, hashed):
        return None
    now = utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    # Recorded at most once a minute: reads stay reads.
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
        try:
            db.session.commit()
        except (OperationalError, InterfaceError) as exc:
            # Bookkeeping only: a database that cannot write (full disk) must not turn
            # every API read into an error. The request itself goes on.
            db.session.rollback()
            log.warning("API token %s: last use not recorded (%s)", row.id, exc.__class__.__name__)
    return row
