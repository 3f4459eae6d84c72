"""The redirect store: token hash -> CDS URL and expiry, and nothing else.

In "local" mode the entries live in this database and the redirect blueprint of
this app answers /r/<token>. In "remote" mode each registration or withdrawal is
queued in ``RedirectOutbox`` and pushed to the separate redirect server, with
retries, so a redirect server that is down loses nothing.
"""
from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import delete, func, insert, select, update

from cds.extensions import db
from cds.models import RedirectEntry, RedirectOutbox, utcnow
from cds.scheduler import tick_task
from cds.settings.service import public_url, redirect_url

log = logging.getLogger("cds.redirect")


def _remote() -> bool:
    return current_app.config["REDIRECT_MODE"] == "remote"


def register_link(token_hash: str, expires_at: datetime) -> None:
    """Make /r/<token> lead to this CDS until ``expires_at``. Joins the caller's transaction."""
    register_links([(token_hash, expires_at)])


def register_links(links: list[tuple[str, datetime]]) -> None:
    """``register_link`` for each (token hash, expiry), in one statement. A new random
    token's hash is never already stored: a plain insert will do."""
    if not links:
        return
    if _remote():
        db.session.execute(insert(RedirectOutbox), [
            {"op": "put", "token_hash": h, "expires_at": expires} for h, expires in links])
    else:
        url = public_url()
        db.session.execute(insert(RedirectEntry), [
            {"token_hash": h, "cds_url": url, "expires_at": expires} for h, expires in links])


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


# --- answering /r/<token> ----------------------------------------------------------

def resolve(token_hash_hex: str, now: datetime) -> str | None:
    """The CDS URL a live link leads to; None for unknown and expired alike."""
    entry = db.session.get(RedirectEntry, token_hash_hex)
    if entry is None or entry.expires_at <= now:
        return None
    return entry.cds_url


def store_links(ops: list[dict]) -> int:
    """Apply registrations and withdrawals sent by a CDS, in order, in one transaction.

    Each op is {"op": "put", "hash", "cds_url", "expires_at"} or {"op": "delete", "hash"}.
    Raises ValueError (with the index) on a malformed op; nothing is stored then."""
    parsed = [_parse_op(i, op) for i, op in enumerate(ops)]
    for op, hash_hex, url, expires in parsed:
        if op == "put":
            db.session.merge(RedirectEntry(token_hash=hash_hex, cds_url=url, expires_at=expires))
        else:
            db.session.execute(delete(RedirectEntry).where(RedirectEntry.token_hash == hash_hex))
    db.session.commit()
    return len(parsed)


_HASH = re.compile(r"^[0-9a-f]{64}$")


def _parse_op(index: int, op) -> tuple:
    if not isinstance(op, dict):
        raise ValueError(f"ops[{index}] must be an object")
    kind = op.get("op")
    hash_hex = str(op.get("hash", ""))
    if kind not in ("put", "delete"):
        raise ValueError(f"ops[{index}].op must be put or delete")
    if not _HASH.match(hash_hex):
        raise ValueError(f"ops[{index}].hash must be 64 lower-case hex digits (a SHA-256 of the token)")
    if kind == "delete":
        return kind, hash_hex, None, None
    url = str(op.get("cds_url", ""))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 512:
        raise ValueError(f"ops[{index}].cds_url must be an http(s) URL")
    try:
        expires = datetime.fromisoformat(str(op.get("expires_at", "")).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"ops[{index}].expires_at must be an ISO 8601 time") from None
    if expires.tzinfo is not None:
        expires = expires.astimezone(timezone.utc).replace(tzinfo=None)
    return kind, hash_hex, url.rstrip("/"), expires.replace(microsecond=0)


def purge_expired(now: datetime) -> int:
    """Expired entries are of no use to anyone: drop them (the 404 is the same)."""
    removed = db.session.execute(delete(RedirectEntry).where(RedirectEntry.expires_at <= now)).rowcount
    db.session.commit()
    return removed


# --- pushing to a redirect server that runs on its own ---------------------------------

PUSH_BATCH = 500
MAX_BACKOFF = timedelta(hours=1)


class PushFailed(Exception):
    pass


def push_outbox(limit: int = 20 * PUSH_BATCH) -> int:
    """Send queued registrations/withdrawals to the remote redirect server, oldest first.

    Rows are deleted once the server confirmed them. On failure the rows stay,
    with a growing delay, so a redirect server that is down loses nothing."""
    if not _remote():
        return 0
    now = utcnow()
    pushed = 0
    while pushed < limit:
        rows = list(db.session.scalars(select(RedirectOutbox).order_by(RedirectOutbox.id)
                                       .limit(PUSH_BATCH)))
        if not rows:
            break
        # Keep the order: if the oldest row must still wait, everything after it waits too.
        if rows[0].next_attempt_at > now:
            break
        try:
            _post_ops(rows)
        except PushFailed as exc:
            delay = min(MAX_BACKOFF, timedelta(seconds=5 * 2 ** min(rows[0].attempts, 12)))
            ids = [r.id for r in rows]
            db.session.execute(update(RedirectOutbox).where(RedirectOutbox.id.in_(ids)).values(
                attempts=RedirectOutbox.attempts + 1, next_attempt_at=now + delay,
                last_error=str(exc)[:500]))
            db.session.commit()
            log.warning("redirect server push failed (%s rows waiting): %s", len(rows), exc)
            break
        db.session.execute(delete(RedirectOutbox).where(RedirectOutbox.id.in_([r.id for r in rows])))
        db.session.commit()
        pushed += len(rows)
    return pushed


def _post_ops(rows: list[RedirectOutbox]) -> None:
    cfg = current_app.config
    cds_url = public_url()
    ops = []
    for r in rows:
        if r.op == "put":
            ops.append({"op": "put", "hash": r.token_hash, "cds_url": cds_url,
                        "expires_at": r.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")})
        else:
            ops.append({"op": "delete", "hash": r.token_hash})
    body = json.dumps({"ops": ops}).encode()
    req = urllib.request.Request(
        redirect_url() + "/r-api/v1/links", data=body, method="POST",
        headers={"Content-Type": "application/json",
                 "Authorization": f"Bearer {cfg['REDIRECT_API_SECRET']}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise PushFailed(f"HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        raise PushFailed(f"HTTP {exc.code} from the redirect server") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PushFailed(f"cannot reach the redirect server ({reason})") from None


def outbox_backlog() -> int:
    return db.session.scalar(select(func.count(RedirectOutbox.id))) or 0


@tick_task("redirect.push", every_ticks=1)
def push_tick(app) -> None:
    push_outbox()


@tick_task("redirect.purge", every_ticks=720)
def purge_tick(app) -> None:
    purge_expired(utcnow())
