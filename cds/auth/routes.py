from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for

from cds.audit.service import record_event
from cds.auth.forms import LoginForm
from cds.auth.service import authenticate
from cds.extensions import limiter
from cds.web import toast

bp = Blueprint("auth", __name__)


def _account_key() -> str:
    return "login-account:" + request.form.get("username", "").strip().lower()


def _failed(response) -> bool:
    return response.status_code == 401


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["LOGIN_LIMIT_PER_ADDRESS"], methods=["POST"],
               deduct_when=_failed, scope="login-address",
               error_message="Too many failed sign-ins from this address. Wait a minute and try again.")
@limiter.limit(lambda: current_app.config["LOGIN_LIMIT_PER_ACCOUNT"], methods=["POST"],
               key_func=_account_key, deduct_when=_failed, scope="login-account",
               error_message="Too many failed sign-ins for this account. Wait a minute and try again.")
def login():
    if g.admin is not None:
        return redirect(url_for("users.index"))
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        admin = authenticate(form.username.data, form.password.data)
        if admin is not None:
            session.clear()
            session.permanent = True
            session["admin_id"] = admin.id
            session["epoch"] = admin.session_epoch
            g.actor = admin.username
            record_event("admin.login", actor=admin.username)
            target = request.args.get("next", "")
            # Only a local path: never an open redirect.
            if not target.startswith("/") or target.startswith("//"):
                target = url_for("users.index")
            if admin.password_change_due:
                toast("You signed in with a one-time password: choose your own now.", "warning")
                target = url_for("settings.account")
            return redirect(target)
        error = "Wrong user name or password."
        record_event("admin.login_failed", actor=form.username.data.strip()[:64] or "-")
        return render_template("auth/login.html", form=form, error=error), 401
    return render_template("auth/login.html", form=form, error=error)


@bp.route("/logout", methods=["POST"])
def logout():
    if g.admin is not None:
        record_event("admin.logout")
    session.clear()
    return redirect(url_for("auth.login"))
