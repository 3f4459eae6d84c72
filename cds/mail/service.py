"""E-mail settings and templates, as the Settings pages change them."""
from __future__ import annotations

from flask_mail import Message

from cds.audit.service import record_event
from cds.extensions import db
from cds.mail.compose import (MailTemplates, TemplateProblem, builtin_template, message_id, qr_data_uri,
                              sample_context)
from cds.mail.qr import qr_png
from cds.mail.transport import SENT, Delivery, MailSettings, MailTransport
from cds.settings.service import public_url, redirect_url
from cds.models import utcnow
from cds.settings.service import get_setting, save_settings

MAIL_KEYS = ("MAIL_SERVER", "MAIL_PORT", "MAIL_USE_TLS", "MAIL_USE_SSL", "MAIL_USERNAME",
             "MAIL_PASSWORD", "MAIL_DEFAULT_SENDER", "MAIL_RATE_LIMIT")
TEMPLATE_KEYS = {"subject": "MAIL_TEMPLATE_SUBJECT", "text": "MAIL_TEMPLATE_TEXT", "html": "MAIL_TEMPLATE_HTML"}


def save_mail_settings(values: dict, actor: str) -> list[str]:
    """Store SMTP settings (already validated by the form). Returns the keys that changed."""
    changed = save_settings({k: values[k] for k in MAIL_KEYS if k in values}, actor, commit=False)
    if changed:
        # Which settings changed, never their values (the password is among them).
        record_event("settings.mail", actor=actor, detail={"changed": changed}, commit=False)
    db.session.commit()
    return changed


def send_test_mail(to: str, actor: str) -> Delivery:
    """A short message through the effective settings: proves the SMTP setup works."""
    settings = MailSettings.load()
    transport = MailTransport(settings)
    message = Message(subject="CDS test e-mail", recipients=[to], sender=settings.sender,
                      body=f"This is a test e-mail from the CDS at {public_url()}.\n"
                           f"Sent by {actor} at {utcnow():%Y-%m-%d %H:%M} UTC.\n\n"
                           "If you can read this, deployment e-mails can be delivered.\n")
    message.msgId = message_id(settings.sender)
    try:
        delivery = transport.send(message, label="test")
    finally:
        transport.close()
    record_event("settings.mail_test", actor=actor,
                 detail={"to": to, "result": delivery.state, "outbox": delivery.outbox_file is not None})
    return delivery


def describe_delivery(delivery: Delivery, settings: MailSettings) -> tuple[str, str]:
    """(message, toast category) for the administrator."""
    if delivery.state == SENT and delivery.outbox_file:
        return ("No SMTP server is configured: the message was written to the Outbox.", "warning")
    if delivery.state == SENT:
        return (f"The SMTP server {settings.server}:{settings.port} accepted the test e-mail.", "success")
    return (f"Not sent: {delivery.detail}", "error")


def current_templates() -> dict:
    """The stored template texts ("" = built-in) for the editing page."""
    return {kind: get_setting(key) or "" for kind, key in TEMPLATE_KEYS.items()}


def effective_templates(draft: dict | None = None) -> MailTemplates:
    """Compiled templates: the draft's non-empty fields over the built-in ones."""
    return MailTemplates.load(draft)


def preview(draft: dict, *, qr_src: str | None = None):
    """Render a draft with example values. Raises TemplateProblem with a clear message."""
    templates = MailTemplates.load({k: draft.get(k, "") for k in TEMPLATE_KEYS})
    context = sample_context(redirect_url())
    src = qr_src or qr_data_uri(qr_png(context["link"]))
    return templates.render(context, qr_src=src)


def save_templates(draft: dict, actor: str) -> list[str]:
    """Validate by rendering with example values, then store. Empty fields mean built-in."""
    preview(draft, qr_src="cid:example")
    values = {TEMPLATE_KEYS[k]: (draft.get(k) or "").strip("\n") for k in TEMPLATE_KEYS}
    # The built-in text, saved unchanged, stays "built-in" (it then follows new versions).
    for kind, key in TEMPLATE_KEYS.items():
        if values[key].strip() == builtin_template(kind).strip():
            values[key] = ""
    changed = save_settings(values, actor, commit=False)
    if changed:
        record_event("settings.mail_template", actor=actor, detail={"changed": changed}, commit=False)
    db.session.commit()
    return changed


__all__ = ["TemplateProblem", "save_mail_settings", "send_test_mail", "describe_delivery",
           "current_templates", "effective_templates", "preview", "save_templates"]
