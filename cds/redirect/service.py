"""The redirect store: token hash -> CDS URL and expiry, and nothing else.

In "local" mode the entries live in this database and the redirect blueprint of
this app answers /r/<token>. In "remote" mode each registration or withdrawal is
queued in ``RedirectOutbox`` and pushed to the separate redirect server, with
retries, so a redirect server that is down loses nothing.
"""
from __future__ import annotations

from datetime import datetime

from flask import current_app
from sqlalchemy import delete

from cds.extensions import db
from cds.models import RedirectEntry, RedirectOutbox


def _remote() -> bool:
    return current_app.config["REDIRECT_MODE"] == "remote"


def register_link(token_hash: str, expires_at: datetime) -> None:
    """Make /r/<token> lead to this CDS until ``expires_at``. Joins the caller's transaction."""
    if _remote():
        db.session.add(RedirectOutbox(op="put", token_hash=token_hash, expires_at=expires_at))
    else:
        db.session.merge(RedirectEntry(token_hash=token_hash, cds_url=current_app.config["PUBLIC_URL"],
                                       expires_at=expires_at))


def withdraw_links(token_hashes: list[str]) -> None:
    """Forget links that must stop working. Joins the caller's transaction."""
    if not token_hashes:
        return
    if _remote():
        db.session.add_all(RedirectOutbox(op="delete", token_hash=h) for h in token_hashes)
    else:
        for start in range(0, len(token_hashes), 500):
            db.session.execute(delete(RedirectEntry).where(
                RedirectEntry.token_hash.in_(token_hashes[start:start + 500])))
