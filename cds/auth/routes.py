from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for

from cds.audit.service import record_event
from cds.auth.forms import LoginForm
from cds.auth.service import SignInThrottled, authenticate, check_sign_in_allowed, end_sessions, record_failed_sign_in
from cds.web import client_ip, toast

bp = Blueprint("auth", __name__)


def safe_next(target: str | None) -> str | None:
    """The local path to go to after sign-in, or None. Checked in the form a browser
    reads it: browsers drop tabs and line breaks anywhere in a URL, trim spaces and
    control characters at its ends, and read a backslash as a slash, so
    "/\t/evil.example" is "//evil.example" to them — another site."""
    if not target:
        return None
    cleaned = "".join(c for c in target if c not in "\t\r\n").strip("\x00- ").replace("\\", "/")
    parts = urlsplit(cleaned)
    if not cleaned.startswith("/") or cleaned.startswith("//") or parts.scheme or parts.netloc \
            or any(ord(c) < 32 or ord(c) == 127 for c in cleaned):
        return None
    return cleaned


@bp.route("/login", methods=["GET", "POST"])
def login():
    if g.admin is not None:
        return redirect(url_for("users.index"))
    form = LoginForm()
    if form.validate_on_submit():
        try:
            check_sign_in_allowed(client_ip(), form.username.data)
        except SignInThrottled as exc:
            resp = _login_page(form, str(exc), 429)
            resp.headers["Retry-After"] = str(exc.retry_after)
            return resp
        admin = authenticate(form.username.data, form.password.data)
        if admin is not None:
            session.clear()
            session.permanent = True
            session["admin_id"] = admin.id
            session["epoch"] = admin.session_epoch
            g.actor = admin.username
            record_event("admin.login", actor=admin.username)
            if admin.password_change_due:
                toast("You signed in with a one-time password: choose your own now.", "warning")
                return redirect(url_for("settings.account"))
            return redirect(safe_next(request.args.get("next")) or url_for("users.index"))
        record_failed_sign_in(client_ip(), form.username.data)
        record_event("admin.login_failed", actor=form.username.data.strip()[:64] or "-")
        return _login_page(form, "Wrong user name or password.", 401)
    return render_template("auth/login.html", form=form, error=None)


def _login_page(form, error: str, status: int):
    return current_app.response_class(render_template("auth/login.html", form=form, error=error),
                                      status=status, mimetype="text/html")


@bp.route("/logout", methods=["POST"])
def logout():
    if g.admin is not None:
        # Server-side: the cookie (and any copy of it) is worthless from now on.
        end_sessions(g.admin)
        record_event("admin.logout")  # commits both
    session.clear()
    return redirect(url_for("auth.login"))
