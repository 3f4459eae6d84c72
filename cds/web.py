"""What every page shares: sign-in enforcement, roles, security headers,
errors shown the same way for full pages and htmx fragments, and toasts."""
from __future__ import annotations

import json
from datetime import datetime
from functools import wraps
from urllib.parse import urlsplit

from flask import (abort, current_app, flash, g, get_flashed_messages, jsonify, redirect, render_template,
                   request, session, url_for)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from cds.api.blueprint import http_error_response as api_http_error
from cds.api.blueprint import service_error_response as api_service_error
from cds.errors import CdsError
from cds.extensions import db
from cds.fragments import html_response
from cds.http import MAX_ID
from cds.models import ROLE_LABELS, AdminAccount, utcnow
from cds.settings.service import public_url

# Reachable without an administrator session (each has its own protection).
PUBLIC_BLUEPRINTS = {"redirect", "client", "landing", "api", "health"}
PUBLIC_ENDPOINTS = {"auth.login", "static"}
# Machine endpoints: an administrator's session cookie means nothing to them, so it
# is never read there (nor decoded and verified on every device poll). Under these
# prefixes every answer, errors included, is JSON (plain text or XML under
# /provisioning/), so no page needs a session either.
SESSIONLESS_BLUEPRINTS = {"client", "redirect", "health"}
SESSIONLESS_PREFIXES = ("/client/", "/r-api/", "/provisioning/")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# The same, for requests no route matched (a wrong method or path under a public area):
# they get that area's 404/405, not a sign-in page.
PUBLIC_PREFIXES = ("/api/", "/client/", "/r/", "/r-api/", "/deploy/", "/healthz", "/provisioning/")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'self'; "
       "object-src 'none'")

# htmx: swap 422 (form errors) like a success, show every other error as a toast,
# and never evaluate script or inject inline styles (the CSP forbids both).
HTMX_CONFIG = json.dumps({
    "allowEval": False,
    "allowScriptTags": False,
    "includeIndicatorStyles": False,
    "historyCacheSize": 0,
    "responseHandling": [
        {"code": "204", "swap": False},
        {"code": "[23]..", "swap": True},
        {"code": "422", "swap": True},
        {"code": "[45]..", "swap": True, "error": True},
    ],
})


def current_admin() -> AdminAccount | None:
    return g.get("admin")


def _admin_must(may, refusal: str):
    """A view decorator: a 403 with ``refusal`` unless the signed-in administrator ``may``."""
    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            admin = current_admin()
            if admin is None or not may(admin):
                abort(403, refusal)
            return view(*args, **kwargs)
        return wrapped
    return decorator


# Refuse the read-only role (the global rule already refuses their non-GET requests).
write_required = _admin_must(lambda admin: admin.can_write, "Your account is read-only.")
primary_required = _admin_must(lambda admin: admin.is_primary,
                               "Only the primary administrator may do this.")


def same_origin(url: str) -> bool:
    """Whether an Origin or Referer value names this CDS: the address the request came
    to, or the public URL (configuration or Settings). "null" (a sandboxed frame, a
    privacy tool) does not."""
    def origin_of(value: str) -> tuple[str, str] | None:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return None
        default = {"http": ":80", "https": ":443"}[parts.scheme]
        host = parts.netloc.rpartition("@")[2].lower()
        return parts.scheme, host[:-len(default)] if host.endswith(default) else host

    given = origin_of(url)
    if given is None:
        return False
    if given in (origin_of(request.host_url), origin_of(current_app.config["PUBLIC_URL"])):
        return True
    # The public URL may have been changed in Settings (stored in the database).
    return given == origin_of(public_url())


def client_ip() -> str:
    return request.remote_addr or "-"


def toast(message: str, category: str = "info") -> None:
    """A message for the administrator: shown on the next page, or out-of-band in htmx."""
    flash(message, category)


class AdminSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, not opened at all on the machine endpoints."""

    def open_session(self, app, request):
        if request.path.startswith(SESSIONLESS_PREFIXES):
            return self.null_session_class()
        return super().open_session(app, request)


def init_app(app) -> None:
    app.session_interface = AdminSessionInterface()
    app.jinja_env.globals.update(
        current_admin=current_admin,
        ROLE_LABELS=ROLE_LABELS,
        HTMX_CONFIG=HTMX_CONFIG,
    )
    app.jinja_env.filters["dt"] = format_datetime
    app.jinja_env.filters["ago_days"] = days_from_now
    # The console opens on the Users tab.
    app.add_url_rule("/", "home", lambda: redirect(url_for("users.index")))

    @app.url_value_preprocessor
    def _ids_in_range(endpoint, values):
        # Ids are 32-bit in every database CDS runs on: a larger one names nothing.
        for value in (values or {}).values():
            if isinstance(value, int) and not 0 <= value <= MAX_ID:
                abort(404)

    @app.before_request
    def _refuse_nul_characters():
        # No text field of CDS may hold a NUL (PostgreSQL cannot store one); say so
        # plainly instead of failing deep in the database.
        if any("\x00" in v for v in request.args.values()) or \
                (request.environ.get("CONTENT_TYPE", "").startswith(FORM_TYPES)
                 and any("\x00" in v for v in request.form.values())):
            abort(400, "The request contains a NUL character, which no field accepts.")

    @app.before_request
    def _refuse_cross_site_writes():
        # Defence in depth beside the CSRF token (as Django does): a state-changing
        # request that says it comes from another site is refused, token or not. Pages
        # send Origin (and Referer: Referrer-Policy same-origin) on their own requests.
        if request.method in ("GET", "HEAD", "OPTIONS") or request.blueprint in ("api", "client") \
                or request.path.startswith(SESSIONLESS_PREFIXES):
            return None
        origin = request.headers.get("Origin")
        if origin is not None:
            if not same_origin(origin):
                abort(403, "This request came from another site and was refused.")
            return None
        referer = request.headers.get("Referer")
        if referer and not same_origin(referer):
            abort(403, "This request came from another site and was refused.")
        return None

    @app.before_request
    def _load_admin():
        g.admin = None
        if request.blueprint in SESSIONLESS_BLUEPRINTS:
            return None
        admin_id = session.get("admin_id")
        if admin_id is not None:
            admin = db.session.get(AdminAccount, admin_id)
            if admin and not admin.disabled and session.get("epoch") == admin.session_epoch:
                g.admin = admin
                g.actor = admin.username
            else:
                session.clear()
        if request.blueprint in PUBLIC_BLUEPRINTS or request.endpoint in PUBLIC_ENDPOINTS \
                or request.path.startswith(PUBLIC_PREFIXES):
            return None
        if g.admin is None:
            if request.htmx:
                resp = app.response_class(status=401)
                resp.headers["HX-Redirect"] = url_for("auth.login")
                return resp
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        # Read-only administrators see everything and change nothing (but their own password).
        if request.method not in ("GET", "HEAD", "OPTIONS") and not g.admin.can_write \
                and request.endpoint not in ("auth.logout", "settings.account"):
            abort(403, "Your account is read-only.")
        return None

    @app.after_request
    def _security_headers(response):
        h = response.headers
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        # Console pages send their address to the console itself (the cross-site check
        # above reads it) and to nobody else; public pages (links with tokens) send none.
        h.setdefault("Referrer-Policy", "no-referrer" if request.blueprint in (
            "redirect", "client", "landing") or request.path.startswith(PUBLIC_PREFIXES)
            else "same-origin")
        if request.blueprint not in ("redirect", "client", "landing", "health") \
                and not request.path.startswith("/provisioning/") \
                and request.endpoint != "static":
            h.setdefault("Cache-Control", "no-store")
        if app.config["SESSION_COOKIE_SECURE"]:
            h.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response

    @app.after_request
    def _toasts_out_of_band(response):
        """htmx fragments carry pending flash messages as an out-of-band toast swap."""
        if (request.htmx and response.mimetype == "text/html" and not response.direct_passthrough
                and "HX-Redirect" not in response.headers and session.get("_flashes")):
            messages = get_flashed_messages(with_categories=True)
            extra = render_template("_toasts.html", messages=messages, oob=True)
            response.set_data(response.get_data(as_text=True) + extra)
        return response

    @app.errorhandler(CdsError)
    def _service_error(exc: CdsError):
        # A refused action changes nothing: whatever the service had begun is rolled back.
        db.session.rollback()
        if request.path.startswith("/api/"):
            return api_service_error(exc)
        return _error_response(exc.status, exc.message)

    @app.errorhandler(CSRFError)
    def _csrf_error(exc):
        return _error_response(400, "The form was stale or incomplete (security token missing "
                                    "or expired). Reload the page and try again.")

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        if request.path.startswith("/api/"):
            # Also for paths no API route matched: the API's one error shape.
            return api_http_error(exc)
        if request.blueprint in ("client", "redirect"):
            return exc  # those blueprints answer JSON themselves
        if request.path.startswith("/provisioning/"):
            return _plain_error(exc.code or 500, exc.description)
        if request.path.startswith(("/client/", "/r-api/")):
            code = exc.code or 500
            resp = jsonify(error={404: "not_found", 405: "method_not_allowed"}.get(code, "error"),
                           message=exc.description)
            resp.status_code = code
            return resp
        message = exc.description if exc.description and not exc.description.startswith(
            ("The server", "The requested", "You don't", "The browser")) else None
        return _error_response(exc.code or 500, message or DEFAULT_ERRORS.get(exc.code, exc.name))

    @app.errorhandler(Exception)
    def _unexpected(exc):
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        db.session.rollback()
        app.logger.exception("unexpected error on %s %s", request.method, request.path)
        if request.blueprint in ("api", "client"):
            return jsonify(error="internal_error", message="Unexpected server error; "
                                                           "see the CDS log.", details=None), 500
        if request.path.startswith("/provisioning/"):
            return _plain_error(500, "Unexpected server error; try again later.")
        return _error_response(500, "Something went wrong on the server; nothing was changed. "
                                    "The details are in the CDS log.")


DEFAULT_ERRORS = {
    400: "The request was not understood.",
    403: "You are not allowed to do this.",
    404: "This page or record does not exist (it may have been deleted).",
    405: "This action is not available here.",
    409: "This conflicts with the current state; reload and try again.",
    413: "The upload is too large.",
    429: "Too many attempts. Wait a moment and try again.",
}


def _plain_error(code: int, message: str):
    """Provisioning URLs (fetched by apps, without a session): a plain-text error."""
    resp = current_app.response_class(f"{message}\n", status=code, mimetype="text/plain")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _error_response(code: int, message: str):
    if request.htmx:
        resp = html_response(render_template("_toasts.html", messages=[("error", message)]), code)
        resp.headers["HX-Retarget"] = "#toasts"
        # Set directly: htmx-flask 0.1.0 mis-lists some HX-Reswap values.
        resp.headers["HX-Reswap"] = "beforeend"
        return resp
    return html_response(render_template("error.html", code=code, message=message), code)


def format_datetime(value: datetime | None, empty: str = "") -> Markup:
    """A UTC time as <time>: the browser shows it in the admin's zone, full stamp on hover."""
    if value is None:
        return Markup(empty)
    # Digits and separators only: nothing to escape (the Users table shows 100 a page).
    shown = value.strftime("%Y-%m-%d %H:%M")
    return Markup(f'<time class="local" datetime="{value.strftime("%Y-%m-%dT%H:%M:%S")}Z" '
                  f'title="{shown} UTC">{shown}</time>')


def days_from_now(value: datetime | None) -> str:
    if value is None:
        return ""
    days = (value - utcnow()).total_seconds() / 86400
    if days < 0:
        return "expired"
    return f"{int(days)} days"
