"""The JSON API's blueprint and what every resource shares: bearer API tokens, the
request budget, one error shape, reading a JSON body and page arguments, answering
a page of items. The resources (one module each) add their routes to ``bp``.

No cookie is ever accepted here (so no CSRF either): a request is authenticated
by its `Authorization: Bearer cds_…` header alone.
"""
from __future__ import annotations

import hashlib
import time

from flask import Blueprint, current_app, g, jsonify, request, url_for
from limits import parse_many
from werkzeug.exceptions import HTTPException

from cds.settings.tokens import find_valid_token
from cds.errors import CdsError
from cds.extensions import csrf, db, limit_counter, limiter
from cds.http import MAX_PAGE

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)


class ApiError(CdsError):
    """A refusal of the API itself (its token, its request format), with the status and
    code it names; answered like every other ``CdsError`` (``service_error_response``)."""

    def __init__(self, status: int, code: str, message: str, details=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.details, self.headers = status, code, details, headers


def error_response(status: int, code: str, message: str, details=None, headers=None):
    resp = jsonify(error=code, message=message, details=details)
    resp.status_code = status
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 410: "gone", 413: "too_large",
              415: "unsupported_media_type", 422: "invalid", 429: "rate_limited",
              500: "internal_error"}


@bp.errorhandler(CdsError)
def service_error_response(exc: CdsError):
    """A refusal, in the API's shape; a service's has the same status as on the console's
    pages. Whatever had begun is rolled back."""
    db.session.rollback()
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    return error_response(exc.status, exc.code, exc.message, exc.errors or None)


@bp.errorhandler(HTTPException)
def http_error_response(exc: HTTPException):
    """Also for paths under /api/ no route matched (the app's handler sends them here)."""
    status = exc.code or 500
    message = exc.description or exc.name
    headers = {}
    if status == 429:
        message = "Too many requests; slow down and retry later."
        retry = getattr(exc, "retry_after", None)
        if retry:
            headers["Retry-After"] = str(int(retry))
    if status == 405:
        message = f"{request.method} is not allowed on this resource."
    if status == 404 and not request.url_rule:
        message = "No such API endpoint."
    return error_response(status, HTTP_CODES.get(status, "error"), message, None, headers)


def _api_limit() -> str:
    return current_app.config["API_RATE_LIMIT"]


def _api_key() -> str:
    # The whole header, hashed: tokens share a prefix, and a key on a fixed slice of it
    # would let one token's budget be spent by another.
    header = request.headers.get("Authorization", "")
    if not header:
        return "api-addr:" + (request.remote_addr or "-")
    return "api:" + hashlib.sha256(header.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _auth_failure_limits():
    return parse_many(current_app.config["API_AUTH_FAILURE_LIMIT"])


def _refuse_unauthenticated(message: str):
    """A 401, counted per address: a client that keeps sending bad tokens (each its own
    budget above) is stopped by address, whatever tokens it makes up."""
    address = request.remote_addr or "-"
    for lim in _auth_failure_limits():
        limit_counter("hit", lim, "api-auth-failure", address)
    raise ApiError(401, "unauthorized", message)


def _check_auth_failures() -> None:
    address = request.remote_addr or "-"
    for lim in _auth_failure_limits():
        stats = limit_counter("get_window_stats", lim, "api-auth-failure", address)
        if stats.remaining <= 0:
            raise ApiError(429, "rate_limited", "Too many requests with a missing or wrong API token "
                           "from this address; wait and retry later.", None,
                           {"Retry-After": str(max(1, int(stats.reset_time - time.time()) + 1))})


# Per-token (or per-address) request budget, answered as 429 in the API's error shape.
limiter.limit(_api_limit, key_func=_api_key, scope="api")(bp)


@bp.before_request
def _authenticate():
    # Cookies are ignored: whatever the session says, only the bearer token counts.
    g.admin = None
    g.api_token = None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if request.endpoint in ("api.openapi",):
        return None
    _check_auth_failures()
    if scheme.lower() != "bearer" or not token.strip():
        _refuse_unauthenticated("Send an API token: Authorization: Bearer <token>.")
    row = find_valid_token(token.strip())
    if row is None:
        _refuse_unauthenticated("The API token is unknown, expired or revoked.")
    g.api_token = row
    g.actor = f"api:{row.name}"[:64]
    g.actor_type = "api"
    if request.method not in ("GET", "HEAD", "OPTIONS") and row.role == "readonly":
        raise ApiError(403, "forbidden", "This API token is read-only.")
    return None


def body_json() -> dict:
    """The request's JSON object, or a 400/415 in the API's shape."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Send a JSON body (Content-Type: application/json).")
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    if _has_nul(data):
        raise ApiError(400, "bad_request", "The body contains a NUL character, which no field accepts.")
    return data


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def paginated(items: list, total: int, page: int, per_page: int, endpoint: str, args: dict):
    pages = max(1, -(-total // per_page))
    nxt = url_for(endpoint, **{**args, "page": page + 1, "per_page": per_page}) if page < pages else None
    return {"items": items, "total": total, "page": page, "per_page": per_page, "next": nxt}


def page_args(default_per_page: int = 50, max_per_page: int = 500) -> tuple[int, int]:
    try:
        page = int(request.args.get("page", 1))
        per_page = int(request.args.get("per_page", default_per_page))
    except ValueError:
        raise ApiError(400, "bad_request", "page and per_page must be whole numbers.") from None
    if not 1 <= page <= MAX_PAGE or not 1 <= per_page <= max_per_page:
        raise ApiError(400, "bad_request", f"page 1-{MAX_PAGE} and per_page 1-{max_per_page}.")
    return page, per_page


def refuse_unknown_fields(data: dict, allowed, message: str = "Unknown fields: ") -> None:
    """422 naming every key of ``data`` not in ``allowed``: unknown keys are refused, not ignored."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ApiError(422, "invalid", message + ", ".join(unknown) + ".", {k: "unknown field" for k in unknown})
