"""The deployment e-mail: templates the administrator may edit, rendered in a sandbox.

Templates are Jinja run in a sandbox (an administrator's template cannot reach into
Python, nor run or write without bound: cds/mail/sandbox.py) with strict placeholders, so a typo is an
error at save time, not a blank in ten thousand e-mails. The HTML template is
autoescaped; the subject and text are not (they are not HTML).
"""
from __future__ import annotations

import base64
import functools
import re
import socket
from dataclasses import dataclass
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from flask import current_app
from flask_mail import Attachment, Message, sanitize_address, sanitize_subject
from jinja2 import StrictUndefined, Template, TemplateError
from markupsafe import Markup, escape

from cds import errors
from cds.clients import kind_named, kind_of
from cds.mail.addresses import AddressError, check_header_text
from cds.mail.sandbox import BoundedSandbox, PlainTemplate, RenderLimit, plain_form, render_bounded
from cds.mail.wire import WIRE_POLICY, message_bytes, new_boundary
from cds.models import DeploymentProfile, User, utcnow
from cds.settings.service import get_settings

QR_CID = "qr-code@cds"
QR_FILENAME = "qr-code.png"

# What templates may use. "qr" exists in the HTML template only.
PLACEHOLDERS = {
    "name": "The user's first and last name",
    "first_name": "First name",
    "last_name": "Last name",
    "link": "The personal deployment link",
    "expiry": "When the link stops working (UTC)",
    "instructions": "How to install and open the app",
    "app": "The app the profile's users run (MiCollab app, Linphone app…)",
    "qr": "The QR code image (HTML template only)",
}
_NAMES = frozenset(PLACEHOLDERS)

def _default_kind():
    return kind_named(None)


class TemplateProblem(errors.Invalid):
    """A template cannot be compiled or rendered; the message says where and why."""


def _env(autoescape: bool) -> BoundedSandbox:
    return BoundedSandbox(autoescape=autoescape, undefined=StrictUndefined,
                          keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True)


_TEXT_ENV = _env(False)
_HTML_ENV = _env(True)


def builtin_template(kind: str) -> str:
    """The default subject, text or HTML template shipped in templates/mail/."""
    name = {"subject": "subject.txt", "text": "deployment.txt", "html": "deployment.html"}[kind]
    path = Path(current_app.template_folder) / "mail" / name
    return path.read_text(encoding="utf-8").strip("\n") + ("\n" if kind != "subject" else "")


def compile_template(source: str, kind: str):
    env = _HTML_ENV if kind == "html" else _TEXT_ENV
    if kind == "subject":
        # A subject is one header line, whichever surface set it (Settings, a profile).
        try:
            check_header_text(source, "The subject template")
        except AddressError as exc:
            raise TemplateProblem(str(exc)) from None
    try:
        return CompiledTemplate(env.from_string(source), plain_form(env, source, _NAMES))
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f"line {line}: " if line else ""
        raise TemplateProblem(f"{kind.capitalize()} template, {where}{exc.message or exc}") from None


@dataclass(frozen=True)
class CompiledTemplate:
    """A template compiled by Jinja, and its plain form when it has one (the built-in
    templates do): rendered without Jinja, to the same text (cds/mail/sandbox.py)."""
    jinja: Template
    plain: PlainTemplate | None


def _render(template: CompiledTemplate, kind: str, context: dict) -> str:
    try:
        return render_bounded(template.jinja, context, template.plain)
    except RenderLimit as exc:
        raise TemplateProblem(f"{kind.capitalize()} template: refused, {exc}.") from None
    except TemplateError as exc:
        message = str(exc)
        if "is undefined" in message:
            message += f" (placeholders: {', '.join(k for k in PLACEHOLDERS if kind == 'html' or k != 'qr')})"
        raise TemplateProblem(f"{kind.capitalize()} template: {message}") from None
    except Exception as exc:  # sandbox refusals, arithmetic on text, …
        raise TemplateProblem(f"{kind.capitalize()} template: {exc}") from None


@dataclass
class RenderedMail:
    subject: str
    text: str
    html: str


def format_expiry(expires_at: datetime) -> str:
    return expires_at.strftime("%Y-%m-%d %H:%M UTC")


class MailTemplates:
    """The effective templates, compiled once for a whole bulk run."""

    def __init__(self, subject: str, text: str, html: str):
        self.sources = {"subject": subject, "text": text, "html": html}
        self.compiled = {k: compile_template(v, k) for k, v in self.sources.items()}
        self._profile_cache: dict[tuple, dict] = {}

    @classmethod
    def load(cls, overrides: dict | None = None) -> "MailTemplates":
        """From Settings (empty = built-in), with optional unsaved overrides (the preview)."""
        stored = get_settings("MAIL_TEMPLATE_SUBJECT", "MAIL_TEMPLATE_TEXT", "MAIL_TEMPLATE_HTML")
        values = {
            "subject": stored["MAIL_TEMPLATE_SUBJECT"], "text": stored["MAIL_TEMPLATE_TEXT"],
            "html": stored["MAIL_TEMPLATE_HTML"],
        }
        values.update(overrides or {})
        chosen = [values[k] if (values[k] or "").strip() else builtin_template(k)
                  for k in ("subject", "text", "html")]
        return cls(*chosen)

    def _for_profile(self, profile: DeploymentProfile | None) -> dict:
        """A profile may override the subject and the body (plain text, shown in both parts)."""
        if profile is None or not (profile.email_subject.strip() or profile.email_body.strip()):
            return self.compiled
        key = (profile.email_subject, profile.email_body)
        if key not in self._profile_cache:
            compiled = dict(self.compiled)
            if profile.email_subject.strip():
                compiled["subject"] = compile_template(profile.email_subject, "subject")
            if profile.email_body.strip():
                compiled["text"] = compile_template(profile.email_body, "text")
                compiled["html"] = None  # built from the text, see render()
            self._profile_cache[key] = compiled
        return self._profile_cache[key]

    def render(self, context: dict, profile: DeploymentProfile | None = None,
               qr_src: str = "cid:" + QR_CID) -> RenderedMail:
        compiled = self._for_profile(profile)
        text_ctx = dict(context)
        subject = _render(compiled["subject"], "subject", text_ctx)
        # A subject is one line: a line break would let a template forge headers.
        subject = " ".join(subject.split())[:250]
        text = _render(compiled["text"], "text", text_ctx)
        html_ctx = dict(context)
        html_ctx["qr"] = qr_image(qr_src)
        if compiled["html"] is None:
            html = _profile_html(text, context["link"], html_ctx["qr"])
        else:
            html = _render(compiled["html"], "html", html_ctx)
        return RenderedMail(subject, text, _wrap_long_lines(html))


@functools.lru_cache(maxsize=8)
def qr_image(src: str) -> Markup:
    """The HTML template's ``qr``: the QR code as an image (the same for every message of a run)."""
    return Markup('<img src="{0}" width="240" height="240" alt="QR code of your deployment link">').format(src)


def _profile_html(text: str, link: str, qr: Markup) -> str:
    """HTML part for a profile's plain-text body: the same words, the link clickable, the QR below."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.strip()):
        body = escape(block).replace("\n", Markup("<br>\n"))
        body = Markup(body).replace(escape(link), Markup('<a href="{0}">{0}</a>').format(link))
        paragraphs.append(Markup("<p>{}</p>").format(Markup(body)))
    return str(Markup(
        '<!doctype html>\n<html><body style="font-family:Arial,Helvetica,sans-serif;'
        'font-size:15px;color:#1d2330;">\n{}\n<p>{}</p>\n</body></html>\n'
    ).format(Markup("\n").join(paragraphs), qr))


def _wrap_long_lines(html: str, limit: int = 900) -> str:
    """SMTP refuses lines over 998 characters; break long HTML lines between tags."""
    if max(map(len, html.splitlines()), default=0) <= limit:
        return html
    return re.sub(r">(?=<)", ">\n", html)


def mail_context(user: User, link: str, expires_at: datetime) -> dict:
    # Only what the e-mail needs: never a password or PIN. The app and the steps are
    # those of the client kind the user's profile names.
    kind = kind_of(user.profile)
    return {
        "name": user.display_name,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "link": link,
        "expiry": format_expiry(expires_at),
        "instructions": kind.instructions,
        "app": kind.app_name,
    }


def sample_context(redirect_url: str, validity_hours: int = 96) -> dict:
    """Example values for the template preview."""
    kind = _default_kind()
    return {
        "name": "Alex Example",
        "first_name": "Alex",
        "last_name": "Example",
        "link": f"{redirect_url}/r/EXAMPLE-TOKEN-not-a-real-link-0123456789ab",
        "expiry": format_expiry(utcnow() + timedelta(hours=validity_hours)),
        "instructions": kind.instructions,
        "app": kind.app_name,
    }


def qr_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class DeploymentMessage(Message):
    """Flask-Mail builds multipart/mixed; a body whose HTML shows an inline image by
    cid: belongs in multipart/related (RFC 2387), which every mail client renders inline."""

    def _message(self):
        msg = super()._message()
        if any(a.disposition == "inline" for a in self.attachments or []) and self.alts:
            msg.set_type("multipart/related")
            msg.set_param("type", "multipart/alternative")
        return msg


def message_id(sender: str, domain: str | None = None) -> str:
    """A Message-ID in the sender's own domain: one in ``localhost`` (the host name of a
    typical appliance) is a spam signal, and it is not unique across installations.
    ``domain``: what ``message_id_domain(sender)`` gave (a bulk run asks once)."""
    return make_msgid(domain=domain or message_id_domain(sender))


def message_id_domain(sender: str) -> str:
    """The domain of ``sender``'s Message-IDs: its own, else this host's name (what
    make_msgid falls back to, a name lookup each time it is asked)."""
    domain = parseaddr(sender)[1].rpartition("@")[2].strip().lower()
    return domain if domain and domain != "localhost" else socket.getfqdn()


def recipient_address(recipient: str, name: str = "") -> str | tuple[str, str]:
    """The ``To:`` of a deployment e-mail as Flask-Mail takes it: ``(name, address)`` when
    the user has a name, so that the name is encoded once (RFC 2047) when the header is
    written; a name already encoded by ``formataddr`` would be encoded a second time and
    shown to the user as ``=?utf-8?…?=``."""
    name = " ".join(name.split())
    return (name, recipient) if name else recipient


def build_message(rendered: RenderedMail, sender: str, recipient: str, qr_png: bytes | None,
                  recipient_name: str = "") -> Message:
    """A Flask-Mail message: text and HTML alternatives, the QR code as an inline image.
    ``To:`` carries the user's name: a bare address beside an image is a spam signal."""
    attachments = []
    if qr_png is not None:
        attachments.append(Attachment(QR_FILENAME, "image/png", qr_png, "inline",
                                      {"Content-ID": f"<{QR_CID}>"}))
    to = recipient_address(recipient, recipient_name)
    message = DeploymentMessage(subject=rendered.subject, recipients=[to], body=rendered.text,
                                html=rendered.html, sender=sender, attachments=attachments)
    message.msgId = message_id(sender)
    return message


# --- the same message, serialised without building it ------------------------------

@dataclass
class ComposedMail:
    """A message already in its wire form: what ``MailTransport.send`` hands over."""
    data: bytes
    recipient: str  # the envelope recipient (the address alone)
    bad_headers: bool = False


_NEWLINES = re.compile(r"\r\n|\r|\n")  # as email.generator splits a part's lines
_TEXT_MARK, _HTML_MARK, _QR_MARK = "text-part-c3d7e0a1", "html-part-c3d7e0a1", b"qr-part-c3d7e0a1"
# Boundaries stand in the skeleton as marks of the same length as the real ones
# (``wire.new_boundary``), so every header folds exactly as it will.
_OUTER_MARK, _INNER_MARK = "=" * 15 + "o" * 32 + "==", "=" * 15 + "i" * 32 + "=="


def _body(text: str) -> bytes:
    """A text part's body as the generator writes it (8bit: UTF-8, CRLF line ends)."""
    if "\r" not in text:  # the same, only quicker: every line ends in "\n"
        return text.replace("\n", "\r\n").encode("utf-8")
    return "\r\n".join(_NEWLINES.split(text)).encode("utf-8")


class WireComposer:
    """Deployment e-mails of a bulk run, serialised straight to bytes.

    ``build_message`` + ``wire.message_bytes`` build a tree of email.message
    objects per user and flatten it, which cost more than handing the message over.
    Here that is done once per run, for a message with marks in the per-user places;
    each user's message is then the skeleton's constant parts with that user's
    headers (encoded and folded by the same functions the generator calls), text,
    HTML and QR code put in. The bytes are identical to the slow path's (see
    tests/mail/test_mail.py, which compares them), only cheaper."""

    def __init__(self, sender: str):
        self.sender = sender
        self._domain = message_id_domain(sender)
        self._fold = fold_header
        self._from = self._fold("From", sanitize_address(sender, "utf-8"))
        sample = build_message(RenderedMail("s", _TEXT_MARK, _HTML_MARK), sender, "x@example.com", _QR_MARK)
        sample.date = 1_000_000_000.0
        data = message_bytes(sample, boundaries=(_OUTER_MARK, _INNER_MARK))
        head, rest = data.split(b"MIME-Version: 1.0\r\n", 1)
        expected = (self._fold("Subject", "s") + self._from + self._fold("To", "x@example.com")
                    + self._fold("Date", formatdate(sample.date, localtime=True))
                    + self._fold("Message-ID", sample.msgId))
        if head != expected:
            raise RuntimeError("the e-mail skeleton does not have the expected headers")
        before_text, rest = rest.split(_TEXT_MARK.encode(), 1)
        before_html, rest = rest.split(_HTML_MARK.encode(), 1)
        before_qr, after_qr = rest.split(base64.encodebytes(_QR_MARK).rstrip(b"\n"), 1)
        cte = b"Content-Transfer-Encoding: 7bit\r\n\r\n"
        if not (before_text.endswith(cte) and before_html.endswith(cte)):
            raise RuntimeError("the e-mail skeleton's text parts are not where expected")
        self._parts = (b"MIME-Version: 1.0\r\n" + before_text[:-len(cte)], before_html[:-len(cte)],
                       before_qr, after_qr)

    def compose(self, rendered: RenderedMail, recipient: str, qr_png: bytes, recipient_name: str = "",
                *, boundaries: tuple[str, str] | None = None, date: str | None = None,
                msg_id: str | None = None) -> ComposedMail:
        """What ``message_bytes(build_message(…))`` gives for the same arguments.
        ``boundaries``, ``date`` and ``msg_id`` are chosen here unless given (tests)."""
        to = recipient_address(recipient, recipient_name)
        fold = self._fold
        head = [fold("Subject", sanitize_subject(rendered.subject, "utf-8"))] if rendered.subject else []
        parsed = to if isinstance(to, tuple) else parseaddr(to)  # as sanitize_address reads it
        head += [self._from, fold("To", address_header(parsed)),
                 fold("Date", date or formatdate(None, localtime=True)),
                 fold("Message-ID", msg_id or message_id(self.sender, self._domain))]
        outer, inner = (b.encode() for b in boundaries or (new_boundary(), new_boundary()))
        marks = (_OUTER_MARK.encode(), outer), (_INNER_MARK.encode(), inner)
        first, second, third, last = (_boundaries(p, marks) for p in self._parts)
        text, html = _body(rendered.text), _body(rendered.html)
        data = b"".join((*head, first, _cte(text), text, second, _cte(html), html, third,
                         base64.encodebytes(qr_png).replace(b"\n", b"\r\n").rstrip(b"\r\n"), last))
        # Flask-Mail's own check, on the same values.
        bad = Message.has_bad_headers(SimpleNamespace(sender=self.sender, recipients=[to], reply_to=None,
                                                      subject=rendered.subject))
        return ComposedMail(data, parsed[1], bad)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")


def address_header(parsed: tuple[str, str]) -> str:
    """Flask-Mail's ``sanitize_address`` of a parsed address: the name as an RFC 2047
    encoded word. A short name of letters, digits and single spaces becomes
    ``=?utf-8?q?First_Last?=`` (quoted-printable is the shorter encoding for it), written
    directly instead of by email.header (tests/mail/test_mail.py compares the two)."""
    name, address = parsed
    if len(name) <= 40 and _PLAIN_NAME.fullmatch(name) and address.isascii():
        return formataddr((f"=?utf-8?q?{name.replace(' ', '_')}?=", address))
    return sanitize_address(parsed, "utf-8")


def fold_header(name: str, value: str) -> bytes:
    """A header line as the compat32 generator writes it (``fold_binary``). A value
    of plain ASCII that fits on one line, with nothing to trim, comes out unchanged:
    written directly, without building an email.header.Header (tests/mail/test_mail.py
    compares the two on many values)."""
    if value and value.isascii() and value == value.strip() and "\r" not in value and "\n" not in value \
            and len(name) + 2 + len(value) <= 78:
        return f"{name}: {value}\r\n".encode("ascii")
    return WIRE_POLICY.fold_binary(name, value)


def _boundaries(part: bytes, marks) -> bytes:
    for mark, boundary in marks:
        part = part.replace(mark, boundary)
    return part


def _cte(body: bytes) -> bytes:
    return b"Content-Transfer-Encoding: 7bit\r\n\r\n" if body.isascii() else \
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
