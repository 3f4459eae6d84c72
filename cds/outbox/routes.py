"""The Outbox page: messages written to instance/outbox/ while no SMTP server is configured."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, url_for

from cds.mail.transport import MailSettings
from cds.outbox import service
from cds.http import page_number
from cds.web import current_admin, primary_required, toast

bp = Blueprint("outbox", __name__, url_prefix="/outbox")

# The HTML part is shown in its own sandboxed document: no script, no network.
FRAME_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
             "frame-ancestors 'self'; sandbox")


def _may_see_links() -> bool:
    """Only roles that may deploy may see a live deployment link (it is a credential)."""
    admin = current_admin()
    return admin is not None and admin.can_write


def _message(name: str):
    msg = service.read_message(name)  # OutboxError: 404
    return msg if _may_see_links() else service.masked(msg)


@bp.route("")
def index():
    page = page_number(request.args.get("page"))
    to = request.args.get("to", "").strip()[:254]
    entries, total = service.list_messages(page, to)
    if not _may_see_links():
        for entry in entries:
            entry.subject = service.mask_links(entry.subject)
    pages = max(1, -(-total // service.PAGE_SIZE))
    everything = service.count_messages() if to else total
    return render_template("outbox/index.html", entries=entries, total=total, page=page, pages=pages,
                           to=to, everything=everything, settings=MailSettings.load(), active_tab="settings")


@bp.route("/<name>")
def show(name: str):
    return render_template("outbox/message.html", msg=_message(name), active_tab="settings")


@bp.route("/<name>/html")
def html_part(name: str):
    msg = _message(name)
    if msg.html is None:
        abort(404, "This message has no HTML part.")
    resp = current_app.response_class(service.html_with_inline_images(msg), mimetype="text/html")
    resp.headers["Content-Security-Policy"] = FRAME_CSP
    resp.headers["X-Frame-Options"] = "SAMEORIGIN"
    return resp


@bp.route("/<name>/cid/<cid>")
def inline_image(name: str, cid: str):
    msg = _message(name)
    if cid not in msg.images:
        abort(404, "No such image in this message.")
    ctype, data = msg.images[cid]
    return current_app.response_class(data, mimetype=ctype)


@bp.route("/<name>/raw")
def raw(name: str):
    if not _may_see_links():
        # The .eml holds the link (and its QR code) in encoded parts: not masked, refused.
        abort(403, "The raw message holds a live deployment link; only administrators who "
                   "may deploy can download it.")
    data = service.raw_message(name)  # OutboxError: 404
    resp = current_app.response_class(data, mimetype="message/rfc822")
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return resp


@bp.route("/empty", methods=["POST"])
@primary_required
def empty():
    count = service.delete_all(actor=g.actor)
    toast(f"Deleted {count} message{'s' if count != 1 else ''} from the Outbox.", "success")
    return redirect(url_for("outbox.index"))
