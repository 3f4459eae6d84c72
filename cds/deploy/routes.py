"""Deploy and Auto deploy on the Users tab: what they would do with the selection, for
their confirmations, before anything is sent. (The buttons start their jobs through the
Users tab's bulk action route, as every bulk button does.)"""
from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request

from cds.deploy.service import plan_deploy, preview_deploy
from cds.jobs.service import ACTIONS
from cds.mail.transport import MailSettings
from cds.users.errors import InvalidQuery
from cds.users.selection import parse_selection
from cds.web import write_required

bp = Blueprint("deploy", __name__, url_prefix="/users/actions")


@bp.route("/deploy/plan")
def plan():
    """What Deploy would do with the selection, for its confirmation: how many users would
    be sent an e-mail, and how many not, and why. Nothing is changed."""
    return plan_deploy(parse_selection(request.args)).as_dict()


@bp.route("/<kind>/preview", methods=["POST"])
@write_required
def preview(kind: str):
    """What Auto deploy would do with the selection, for its confirmation: counted by the
    rules the job itself follows (``classify``), before anything is sent."""
    if kind != "auto_deploy" or kind not in ACTIONS:
        abort(404, f"There is no preview for {kind!r}.")
    try:
        selection = parse_selection(request.form)
    except InvalidQuery as exc:
        return current_app.response_class(str(exc), status=400, mimetype="text/plain")
    text = render_template("users/_deploy_preview.txt", preview=preview_deploy(kind, selection),
                           outbox=MailSettings.load().uses_outbox)
    return current_app.response_class(text, mimetype="text/plain")
