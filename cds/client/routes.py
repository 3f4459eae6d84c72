"""Client protocol v1 endpoints. Public (blueprint "client"): authenticated by the
deployment token or the client key, rate limited per address, JSON errors."""
from __future__ import annotations

import json
import logging
import math
import time
from functools import lru_cache

from flask import Blueprint, current_app, request
from limits import parse_many
from werkzeug.exceptions import HTTPException

from cds.client import service
from cds.client.service import ClientError
from cds.extensions import csrf, limiter

log = logging.getLogger("cds.client")

bp = Blueprint("client", __name__, url_prefix="/client/v1")
csrf.exempt(bp)
# The per-address limit is checked below with the `limits` strategy and storage that
# Flask-Limiter is configured with (memory, or Redis shared by every process);
# Flask-Limiter's own per-request route resolution would cost more than a status
# check, so it lets these requests through at its first test.
limiter.request_filter(lambda: request.blueprint == "client")

RATE_LIMITED = "Too many requests from this address; wait a minute and try again."


@lru_cache(maxsize=8)
def _limits(setting: str):
    return parse_many(setting)


def per_address_limit():
    """Each endpoint has its own budget per client address (docs/client-protocol.md §5)."""
    if not limiter.enabled:
        return None
    strategy = limiter.limiter
    keys = ("client", request.endpoint, request.remote_addr or "-")
    items = _limits(current_app.config["CLIENT_LIMIT_PER_ADDRESS"])
    try:
        over = [item for item in items if not strategy.hit(item, *keys)]
        if not over:
            return None
        reset = max(strategy.get_window_stats(item, *keys).reset_time for item in over)
    except Exception:
        # A shared store (Redis) that is down must not take the client endpoints down.
        log.warning("client rate limit not checked: the rate-limit store is unreachable")
        return None
    resp = _json({"error": "rate_limited", "message": RATE_LIMITED}, 429)
    resp.headers["Retry-After"] = str(max(1, math.ceil(reset - time.time())))
    return resp


bp.before_request(per_address_limit)


def _json(payload: dict, status: int = 200):
    # json.dumps straight into the response: the configuration document is the
    # largest answer the busiest endpoints give, and key order carries no meaning.
    resp = current_app.response_class(json.dumps(payload, separators=(",", ":")).encode(), status,
                                      content_type="application/json")
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.errorhandler(ClientError)
def _client_error(exc: ClientError):
    resp = _json({"error": exc.error, "message": exc.message}, exc.status)
    if exc.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="cds-client"'
    return resp


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
             429: "rate_limited"}
    message = RATE_LIMITED if exc.code == 429 else exc.description
    return _json({"error": codes.get(exc.code, "error"), "message": message}, exc.code or 500)


def _bearer() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


@bp.route("/activate", methods=["POST"])
def activate():
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ClientError(400, "bad_request", 'Send JSON {"token": ..., "device": {...}}.')
    document, client_key = service.activate(data.get("token"), data.get("device"), request.remote_addr)
    return _json({**document, "client_key": client_key})


@bp.route("/status")
def status():
    return _json(service.status(_bearer(), request.remote_addr))


@bp.route("/config")
def config():
    return _json(service.download_config(_bearer(), request.remote_addr))
