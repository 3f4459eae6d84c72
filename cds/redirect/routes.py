"""The redirect server: /r/<token> -> {CDS_URL}/deploy/<token>, and the endpoint a CDS
uses to register and withdraw links when this server runs on its own.

It knows token hashes, URLs and expiry times, nothing else. An unknown and an
expired link get the same 404, so a caller cannot tell which.
"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, redirect, render_template, request

from cds.extensions import csrf
from cds.models import utcnow
from cds.redirect.service import resolve, store_links
from cds.security import same_secret, token_hash

bp = Blueprint("redirect", __name__)
csrf.exempt(bp)

MAX_TOKEN_LENGTH = 128


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes["application/json"] > 0


@bp.route("/r/<token>")
def follow(token: str):
    url = resolve(token_hash(token), utcnow()) if len(token) <= MAX_TOKEN_LENGTH else None
    if url is None:
        if _wants_json():
            resp = jsonify(error="not_found", message="This link is not valid: it may have expired "
                                                      "or been replaced.")
        else:
            resp = current_app.response_class(render_template("landing/link_not_found.html"),
                                              mimetype="text/html")
        resp.status_code = 404
    elif _wants_json():
        resp = jsonify(cds_url=url)
    else:
        resp = redirect(f"{url}/deploy/{token}", 302)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Vary"] = "Accept"
    return resp


# --- registration API (used when the redirect server runs on its own) ---------

def _api_error(status: int, error: str, message: str):
    resp = jsonify(error=error, message=message)
    resp.status_code = status
    return resp


@bp.before_request
def _authenticate_api():
    if not request.path.startswith("/r-api/"):
        return None
    secret = current_app.config.get("REDIRECT_API_SECRET")
    if not secret:
        return _api_error(404, "not_found", "Link registration is not enabled on this server.")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given or not same_secret(given.strip(), secret):
        return _api_error(401, "unauthorized", "A valid shared secret is required.")
    return None


def _apply(ops):
    try:
        count = store_links(ops)
    except ValueError as exc:
        return _api_error(422, "invalid", str(exc))
    return jsonify(applied=count)


@bp.route("/r-api/v1/links", methods=["POST"])
def apply_ops():
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("ops"), list):
        return _api_error(400, "bad_request", 'Send JSON {"ops": [...]}.')
    if len(data["ops"]) > 5000:
        return _api_error(413, "too_large", "At most 5000 operations per request.")
    return _apply(data["ops"])


@bp.route("/r-api/v1/links/<hash_hex>", methods=["PUT"])
def put_link(hash_hex: str):
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return _api_error(400, "bad_request", 'Send JSON {"cds_url": ..., "expires_at": ...}.')
    return _apply([{"op": "put", "hash": hash_hex, "cds_url": data.get("cds_url"),
                    "expires_at": data.get("expires_at")}])


@bp.route("/r-api/v1/links/<hash_hex>", methods=["DELETE"])
def delete_link(hash_hex: str):
    return _apply([{"op": "delete", "hash": hash_hex}])
