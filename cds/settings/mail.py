"""Settings → E-mail (SMTP, test e-mail) and Settings → E-mail template (with live preview)."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeSerializer
from markupsafe import Markup

from cds.mail import service
from cds.mail.compose import PLACEHOLDERS, TemplateProblem, builtin_template
from cds.settings.forms import MailSettingsForm, TemplateForm, TestMailForm
from cds.mail.transport import MailSettings, outbox_dir
from cds.web import primary_required, toast

bp = Blueprint("mailsettings", __name__, url_prefix="/settings")

# The preview frame is its own document: no script at all, inline styles (e-mail
# HTML needs them), images only from data: URLs, and it may only sit in our pages.
FRAME_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
             "frame-ancestors 'self'; sandbox")


def _page(form, test_form, status=200):
    settings = MailSettings.load()
    has_password = bool(settings.password)
    outbox_count = len(list(outbox_dir().glob("*.eml"))) if outbox_dir().is_dir() else 0
    html = render_template("settings/mail.html", form=form, test_form=test_form, settings=settings,
                           has_password=has_password, outbox_count=outbox_count, active_tab="settings")
    return current_app.response_class(html, status=status, mimetype="text/html")


def _fill(form: MailSettingsForm, settings: MailSettings) -> None:
    form.server.data = settings.server or ""
    form.port.data = settings.port
    form.security.data = "ssl" if settings.use_ssl else ("starttls" if settings.use_tls else "none")
    form.username.data = settings.username or ""
    form.sender.data = settings.sender
    form.rate_limit.data = settings.rate_limit


@bp.route("/mail", methods=["GET"])
def mail():
    form = MailSettingsForm()
    _fill(form, MailSettings.load())
    return _page(form, TestMailForm())


@bp.route("/mail", methods=["POST"])
@primary_required
def save_mail():
    form = MailSettingsForm()
    if not form.validate_on_submit():
        return _page(form, TestMailForm(formdata=None), status=422)
    changed = service.save_mail_settings(form.to_settings(), g.actor)
    toast("E-mail settings saved." if changed else "Nothing changed.", "success" if changed else "info")
    return redirect(url_for("mailsettings.mail"))


@bp.route("/mail/test", methods=["POST"])
@primary_required
def test_mail():
    test_form = TestMailForm()
    form = MailSettingsForm(formdata=None)
    _fill(form, MailSettings.load())
    if not test_form.validate_on_submit():
        return _page(form, test_form, status=422)
    delivery = service.send_test_mail(test_form.to.data.strip(), g.actor)
    message, category = service.describe_delivery(delivery, MailSettings.load())
    toast(message, category)
    return redirect(url_for("mailsettings.mail"))


# --- the deployment e-mail template --------------------------------------------

def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt="mail-template-preview")


def _preview_context(draft: dict) -> dict:
    try:
        rendered = service.preview(draft, qr_src="cid:preview")
    except TemplateProblem as exc:
        return {"problem": str(exc)}
    frame = url_for("mailsettings.template_frame", d=_serializer().dumps(draft))
    return {"rendered": rendered, "frame_url": frame}


def _template_page(form: TemplateForm, status: int = 200):
    draft = {"subject": form.subject.data or "", "text": form.text.data or "", "html": form.html.data or ""}
    html = render_template("settings/mail_template.html", form=form, placeholders=PLACEHOLDERS,
                           builtin={k: builtin_template(k) for k in ("subject", "text", "html")},
                           stored=service.current_templates(), active_tab="settings",
                           **_preview_context(draft))
    return current_app.response_class(html, status=status, mimetype="text/html")


@bp.route("/template", methods=["GET"])
def template():
    stored = service.current_templates()
    form = TemplateForm(formdata=None)
    for kind in ("subject", "text", "html"):
        # An empty stored value means the built-in template: show that text to edit.
        getattr(form, kind).data = stored[kind] or builtin_template(kind)
    return _template_page(form)


@bp.route("/template", methods=["POST"])
@primary_required
def save_template():
    form = TemplateForm()
    if not form.validate_on_submit():
        return _template_page(form, status=422)
    draft = {"subject": form.subject.data or "", "text": form.text.data or "", "html": form.html.data or ""}
    try:
        changed = service.save_templates(draft, g.actor)
    except TemplateProblem as exc:
        form.form_errors.append(str(exc))
        return _template_page(form, status=422)
    toast("E-mail template saved." if changed else "Nothing changed.", "success" if changed else "info")
    return redirect(url_for("mailsettings.template"))


@bp.route("/template/reset", methods=["POST"])
@primary_required
def reset_template():
    service.save_templates({"subject": "", "text": "", "html": ""}, g.actor)
    toast("The built-in e-mail template is in use again.", "success")
    return redirect(url_for("mailsettings.template"))


@bp.route("/template/preview", methods=["POST"])
def template_preview():
    """htmx: the preview of what is typed, before it is saved."""
    form = TemplateForm()
    draft = {"subject": form.subject.data or "", "text": form.text.data or "", "html": form.html.data or ""}
    return render_template("settings/_template_preview.html", **_preview_context(draft))


@bp.route("/template/frame")
def template_frame():
    try:
        draft = _serializer().loads(request.args.get("d", ""))
    except BadSignature:
        abort(404)
    try:
        html = service.preview(draft).html
    except TemplateProblem as exc:
        html = str(Markup("<p>{}</p>").format(str(exc)))
    resp = current_app.response_class(html, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = FRAME_CSP
    resp.headers["X-Frame-Options"] = "SAMEORIGIN"
    return resp
