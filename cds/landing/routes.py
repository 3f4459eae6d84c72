"""The landing page a person reaches from a deployment link (blueprint "landing"): public,
and it never consumes the link."""
from flask import Blueprint, abort, current_app, render_template

from cds.deploy.service import view_link
from cds.mail.qr import qr_png

bp = Blueprint("landing", __name__)


def _no_store(resp):
    resp.headers["Cache-Control"] = "no-store"
    return resp


def landing_response(token: str):
    """The landing page of a link, whichever URL it was opened at (it never consumes it)."""
    view = view_link(token)
    status = 200 if view.state == "valid" else (404 if view.state == "unknown" else 410)
    html = render_template("landing/page.html", view=view, token=token)
    return _no_store(current_app.response_class(html, status=status, mimetype="text/html"))


@bp.route("/deploy/<token>")
def landing(token: str):
    return landing_response(token)


@bp.route("/deploy/<token>/qr.png")
def qr_image(token: str):
    view = view_link(token)
    if view.state != "valid":
        abort(404)
    return _no_store(current_app.response_class(qr_png(view.link), mimetype="image/png"))
