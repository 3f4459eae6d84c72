"""Client protocol v1 endpoints. Public (blueprint "client"): authenticated by the
deployment token or the client key, rate limited per address, JSON errors."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from cds.client import service
from cds.client.service import ClientError
from cds.extensions import csrf, limiter

bp = Blueprint("client", __name__, url_prefix="/client/v1")
csrf.exempt(bp)
limiter.limit(lambda: current_app.config["CLIENT_LIMIT_PER_ADDRESS"])(bp)


def _json(payload: dict, status: int = 200):
    resp = jsonify(payload)
    resp.status_code = status
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
    message = ("Too many requests from this address; wait a minute and try again."
               if exc.code == 429 else exc.description)
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
