"""Settings › API tokens: list, create (shown once), revoke."""
from __future__ import annotations

from flask import Blueprint, g, render_template, request

from cds.settings.tokens import TokenError, create_api_token, list_api_tokens, revoke_api_token
from cds.web import primary_required, toast

bp = Blueprint("apitokens", __name__, url_prefix="/settings/api-tokens")

ROLE_CHOICES = [("admin", "Administrator"), ("read-only", "Read-only"), ("primary", "Primary administrator")]


def _page(status=200, new_token=None, error=None):
    return render_template("settings/api_tokens.html", tokens=list_api_tokens(), new_token=new_token,
                           error=error, roles=ROLE_CHOICES, section="api_tokens",
                           active_tab="settings"), status


@bp.route("")
def index():
    return _page()


@bp.route("", methods=["POST"])
@primary_required
def create():
    expires = request.form.get("expires_days", "").strip()
    try:
        days = int(expires) if expires else None
    except ValueError:
        return _page(422, error="Expiry must be a number of days.")
    try:
        row, token = create_api_token(request.form.get("name", ""), request.form.get("role", "admin"),
                                      days, created_by=g.admin.username)
    except TokenError as exc:
        return _page(422, error=str(exc))
    return _page(new_token=token)


@bp.route("/<int:token_id>/revoke", methods=["POST"])
@primary_required
def revoke(token_id: int):
    try:
        row = revoke_api_token(token_id, actor=g.actor)
    except TokenError as exc:
        return _page(404, error=str(exc))
    toast(f"API token {row.name!r} revoked: it stopped working.", "success")
    return _page()
