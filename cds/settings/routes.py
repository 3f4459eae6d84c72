"""Settings: General (public URLs, job retention, automatic redeploy), Administrators,
and My account. The section's other pages are blueprints of their own in this area
(E-mail and the e-mail template, API tokens, Backup); ``blueprints`` lists them all."""
from __future__ import annotations

from flask import Blueprint, abort, g, redirect, request, session, url_for

from cds.auth.service import AccountError
from cds.fragments import page_or_fragment, wants_fragment
from cds.models import ROLE_LABELS, ROLES
from cds.settings import accounts, api_tokens, backup, mail
from cds.settings.service import GENERAL_KEYS, get_settings, is_overridden, parse_general, save_general
from cds.web import current_admin, primary_required, toast

bp = Blueprint("settings", __name__, url_prefix="/settings")
# Every page of the Settings tab, for create_app to register.
blueprints = (bp, mail.bp, api_tokens.bp, backup.bp)


def _render(template: str, partial: str, target: str, status: int = 200, **context):
    """The full page, or only the section's fragment when htmx asked for it."""
    return page_or_fragment(template, partial, target, status, active_tab="settings", **context)


# --- General -------------------------------------------------------------------

@bp.route("", methods=["GET", "POST"])
def index():
    values = get_settings(*GENERAL_KEYS)
    errors: dict = {}
    status = 200
    if request.method == "POST":
        if not current_admin().can_write:
            abort(403, "Your account is read-only.")
        submitted, errors = parse_general(request.form)
        if errors:
            values.update({k: request.form.get(k, "") for k in GENERAL_KEYS if k in errors})
            values.update({k: v for k, v in submitted.items()})
            status = 422
        else:
            changed = save_general(submitted)
            toast("Settings saved." if changed else "Nothing was changed.", "success" if changed else "info")
            if not wants_fragment("general-form"):
                return redirect(url_for("settings.index"))
            values = get_settings(*GENERAL_KEYS)
    overridden = {k: is_overridden(k) for k in GENERAL_KEYS}
    return _render("settings/general.html", "settings/_general_form.html", "general-form", status,
                   section="general", values=values, errors=errors, overridden=overridden)


# --- Administrators ----------------------------------------------------------------

def _admins_page(status: int = 200, error: str | None = None, shown_password=None, form=None,
                 question=None):
    return _render("settings/admins.html", "settings/_admins.html", "admins", status,
                   section="admins", admins=accounts.list_admins(), roles=ROLES, error=error,
                   shown_password=shown_password, form=form or {}, question=question)


def _confirmed() -> bool:
    return request.form.get("confirm") == "1"


@bp.route("/admins")
def admins():
    return _admins_page()


def _account_change(change, success: str):
    """Run one account change; errors come back as the section with a message (422)."""
    try:
        result = change()
    except accounts.ConfirmationNeeded as exc:
        fields = {k: v for k, v in request.form.items() if k not in ("csrf_token", "confirm")}
        return _admins_page(question={"text": str(exc), "action": request.path, "fields": fields,
                                      "button": "Yes, go ahead"})
    except AccountError as exc:
        return _admins_page(422, error=str(exc), form=request.form)
    shown = None
    if isinstance(result, tuple):
        admin, generated = result
        if generated:
            shown = (admin.username, generated)
    else:
        admin = result
    toast(success.format(name=admin.username), "success")
    if not wants_fragment("admins") and shown is None:
        return redirect(url_for("settings.admins"))
    return _admins_page(shown_password=shown)


@bp.route("/admins", methods=["POST"])
@primary_required
def add_admin():
    form = request.form
    return _account_change(lambda: accounts.add_admin(form.get("username", ""), form.get("role", ""),
                                                      form.get("password", ""), actor=g.actor),
                           "Administrator {name} added.")


@bp.route("/admins/<int:admin_id>/role", methods=["POST"])
@primary_required
def change_role(admin_id: int):
    role = request.form.get("role", "")
    if not _confirmed():
        # Ask first, saying what the new role may do; nothing changes until confirmed.
        try:
            admin = accounts.check_role_change(admin_id, role)
        except AccountError as exc:
            return _admins_page(422, error=str(exc))
        role = "readonly" if role == "read-only" else role
        if role == admin.role:
            toast(f"{admin.username} already is {ROLE_LABELS[role].lower()}.", "info")
            return _admins_page()
        question = {"text": accounts.role_change_question(admin, role, g.actor),
                    "action": url_for("settings.change_role", admin_id=admin.id),
                    "fields": {"role": role}, "button": "Change role"}
        return _admins_page(question=question)
    return _account_change(lambda: accounts.change_role(admin_id, role, actor=g.actor, confirmed=True),
                           "{name} is now " + ROLE_LABELS.get(role, role).lower() + ".")


@bp.route("/admins/<int:admin_id>/password", methods=["POST"])
@primary_required
def reset_password(admin_id: int):
    return _account_change(lambda: accounts.reset_password(admin_id, request.form.get("password", ""), actor=g.actor),
                           "Password of {name} reset; their sessions have ended.")


@bp.route("/admins/<int:admin_id>/disable", methods=["POST"])
@primary_required
def disable(admin_id: int):
    return _account_change(lambda: accounts.set_disabled(admin_id, True, actor=g.actor,
                                                         confirmed=_confirmed()),
                           "{name} is disabled and signed out.")


@bp.route("/admins/<int:admin_id>/enable", methods=["POST"])
@primary_required
def enable(admin_id: int):
    return _account_change(lambda: accounts.set_disabled(admin_id, False, actor=g.actor), "{name} is enabled again.")


# --- My account ------------------------------------------------------------------

@bp.route("/account", methods=["GET", "POST"])
def account():
    error, status = None, 200
    if request.method == "POST":
        form = request.form
        try:
            epoch = accounts.change_own_password(current_admin(), form.get("current", ""),
                                                 form.get("new", ""), form.get("repeat", ""))
        except AccountError as exc:
            error, status = str(exc), 422
        else:
            session["epoch"] = epoch  # this session stays; the account's others end
            toast("Your password is changed. Your other sessions have ended.", "success")
            if not wants_fragment("account-form"):
                return redirect(url_for("settings.account"))
    return _render("settings/account.html", "settings/_account_form.html", "account-form", status,
                   section="account", error=error)
