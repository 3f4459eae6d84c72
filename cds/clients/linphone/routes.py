"""Linphone's provisioning URLs. Public (blueprint "linphone"), sessionless, rate limited
per address like the client protocol.

liblinphone sends no Accept header; browsers and link scanners do. Only a request
that looks like the client gets the XML and consumes the link: anything that asks
for HTML, or says it is a browser, gets the landing page and changes nothing.
"""
from __future__ import annotations

from flask import Blueprint, current_app, request

from cds.client.routes import per_address_limit
from cds.client.service import ClientError
from cds.clients.linphone import service
from cds.extensions import csrf, limiter
from cds.landing.routes import landing_response

bp = Blueprint("linphone", __name__, url_prefix="/provisioning/linphone")
csrf.exempt(bp)
limiter.request_filter(lambda: request.blueprint == "linphone")
bp.before_request(per_address_limit)

_BROWSER_MARKS = ("Mozilla/", "Opera/")


def is_provisioning_client() -> bool:
    """liblinphone ≥ 5.3 says so; 5.1 sends no Accept header and no browser User-Agent.
    A HEAD (link checkers send them) is never the client: it must not use the link up."""
    if request.method != "GET":
        return False
    if request.headers.get("X-Linphone-Provisioning"):
        return True
    if request.headers.get("User-Agent", "").startswith(_BROWSER_MARKS):
        return False
    if request.headers.get("Accept") is None:
        return True
    # A program that names XML (and prefers it to HTML) is a client too; */* is not enough.
    named = {value.lower(): quality for value, quality in request.accept_mimetypes}
    xml = max(named.get("application/xml", 0), named.get("text/xml", 0))
    return xml > 0 and xml > named.get("text/html", 0)


def _plain(message: str, status: int):
    resp = current_app.response_class(message + "\n", status=status, mimetype="text/plain")
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.errorhandler(ClientError)
def _client_error(exc: ClientError):
    return _plain(exc.message, exc.status)


def _xml(document: bytes):
    resp = current_app.response_class(document, status=200, content_type="application/xml; charset=utf-8")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Vary"] = "Accept, User-Agent"
    return resp


@bp.route("/<token>")
def first_fetch(token: str):
    if not is_provisioning_client():
        resp = landing_response(token)
        resp.headers["Vary"] = "Accept, User-Agent"
        return resp
    return _xml(service.first_fetch(token, configured_url=current_app.config["PUBLIC_URL"], ip=request.remote_addr,
                                    user_agent=request.headers.get("User-Agent"),
                                    sip_from=request.headers.get("From")))


@bp.route("/device/<key>")
def device_fetch(key: str):
    if not is_provisioning_client():
        return _plain("This address belongs to a Linphone app; there is nothing to see here.", 200)
    return _xml(service.device_fetch(key, configured_url=current_app.config["PUBLIC_URL"], ip=request.remote_addr,
                                     user_agent=request.headers.get("User-Agent"),
                                     sip_from=request.headers.get("From")))
