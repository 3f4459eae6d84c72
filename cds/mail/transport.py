"""Delivering messages: over SMTP (one connection reused for a whole run) or, with
no SMTP server configured, as .eml files in instance/outbox/.

Each SMTP step is taken separately so a failure is classified exactly: a reply
before the message body was accepted means the server does not have it (4xx:
try again later, 5xx: give up); a connection lost while the body was being
sent or its reply awaited means nobody knows, and the caller must never send
it again (state "unknown").
"""
from __future__ import annotations

import os
import re
import secrets
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from functools import cached_property
from email.utils import parseaddr
from pathlib import Path

from flask import current_app
from flask_mail import Message

from cds.mail.addresses import AddressError, check_sender
from cds.mail.compose import ComposedMail
from cds.mail.wire import message_bytes
from cds.models import utcnow
from cds.settings.service import get_settings

SENT = "sent"
RETRY = "retry"
FAILED = "failed"
UNKNOWN = "unknown"

# After a failed connection, further messages of the run fail fast for this long
# instead of each waiting for its own timeout.
DOWN_FOR_SECONDS = 30


@dataclass
class Delivery:
    state: str  # sent, retry, failed, unknown
    detail: str = ""
    outbox_file: str | None = None


@dataclass
class Prepared:
    """A message checked and (over SMTP) announced with MAIL FROM, not handed over yet."""
    data: bytes = b""
    recipient: str = ""
    label: str = "mail"
    early: Delivery | None = None  # the outcome, known without handing anything over
    smtp: smtplib.SMTP | None = None  # the connection MAIL FROM went out on


@dataclass
class InFlight:
    """A message whose body is with the SMTP server, its reply not read yet."""
    smtp: smtplib.SMTP


@dataclass
class MailSettings:
    server: str | None
    port: int
    use_tls: bool
    use_ssl: bool
    username: str | None
    password: str | None
    sender: str
    rate_limit: int
    timeout: int

    @classmethod
    def load(cls) -> "MailSettings":
        """The effective settings: what Settings saved in the database, over the config file."""
        s = get_settings("MAIL_SERVER", "MAIL_PORT", "MAIL_USE_TLS", "MAIL_USE_SSL", "MAIL_USERNAME",
                         "MAIL_PASSWORD", "MAIL_DEFAULT_SENDER", "MAIL_RATE_LIMIT")
        return cls(server=(s["MAIL_SERVER"] or "").strip() or None, port=int(s["MAIL_PORT"] or 25),
                   use_tls=bool(s["MAIL_USE_TLS"]), use_ssl=bool(s["MAIL_USE_SSL"]),
                   username=s["MAIL_USERNAME"] or None, password=s["MAIL_PASSWORD"] or None,
                   sender=s["MAIL_DEFAULT_SENDER"] or "CDS <cds@localhost>",
                   rate_limit=int(s["MAIL_RATE_LIMIT"] or 0),
                   timeout=int(current_app.config.get("MAIL_TIMEOUT") or 30))

    @property
    def uses_outbox(self) -> bool:
        return not self.server

    @property
    def sender_problem(self) -> str | None:
        try:
            check_sender(self.sender)
        except AddressError as exc:
            return str(exc)
        return None

    @cached_property
    def envelope_sender(self) -> str:
        return parseaddr(self.sender)[1] or "cds@localhost"


def outbox_dir() -> Path:
    return Path(current_app.instance_path) / "outbox"


def _reply_text(code: int, resp) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp or "")
    return f"{code} {' '.join(text.split())}"[:500]


def _classify(code: int, resp, step: str) -> Delivery:
    state = RETRY if 400 <= code < 500 else FAILED
    what = {"sender": "refused the sender", "recipient": "refused the recipient",
            "data": "refused the message"}[step]
    return Delivery(state, f"The SMTP server {what}: {_reply_text(code, resp)}")


class MailTransport:
    """One per run: opens the SMTP connection on first use, reuses it, paces sends."""

    def __init__(self, settings: MailSettings | None = None):
        self.settings = settings or MailSettings.load()
        self._sender_problem = self.settings.sender_problem  # once per run
        self._smtp: smtplib.SMTP | None = None
        self._down_until = 0.0
        self._down_reason = ""
        self._next_slot = 0.0
        self._outbox = outbox_dir() if self.settings.uses_outbox else None
        self._mail_from = f"from:{smtplib.quoteaddr(self.settings.envelope_sender)}"
        self._mail_sent: smtplib.SMTP | None = None  # MAIL FROM sent by prepare, reply unread
        self.sent = 0

    @property
    def uses_outbox(self) -> bool:
        return self._outbox is not None

    # --- pacing ------------------------------------------------------------

    def pace(self) -> None:
        """Wait for the next slot under MAIL_RATE_LIMIT (messages per minute). Slots are
        counted from the end of the previous message, as a relay counts what it accepted:
        a slow message never lets the next two arrive closer than the limit allows."""
        rate = self.settings.rate_limit
        if rate <= 0 or self.uses_outbox:
            return
        now = time.monotonic()
        if self._next_slot > now:
            time.sleep(self._next_slot - now)

    def _slot_used(self) -> None:
        if self.settings.rate_limit > 0:
            self._next_slot = time.monotonic() + 60.0 / self.settings.rate_limit

    # --- connection ----------------------------------------------------------

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context()
        if s.use_ssl:
            smtp = smtplib.SMTP_SSL(s.server, s.port, timeout=s.timeout, context=context)
        else:
            smtp = smtplib.SMTP(s.server, s.port, timeout=s.timeout)
        try:
            smtp.ehlo()
            if s.use_tls:
                smtp.starttls(context=context)
                smtp.ehlo()
            if s.username and s.password:
                smtp.login(s.username, s.password)
        except Exception:
            smtp.close()
            raise
        return smtp

    def _connection(self) -> smtplib.SMTP | Delivery:
        if self._smtp is not None:
            return self._smtp
        if time.monotonic() < self._down_until:
            return Delivery(RETRY, self._down_reason)
        s = self.settings
        try:
            self._smtp = self._connect()
            return self._smtp
        except smtplib.SMTPAuthenticationError as exc:
            reason = (f"The SMTP server refused the login ({_reply_text(exc.smtp_code, exc.smtp_error)}); "
                      "check the user name and password in Settings → E-mail.")
        except (OSError, smtplib.SMTPException) as exc:
            reason = f"Cannot reach the SMTP server {s.server}:{s.port} ({_describe(exc)})."
        self._down_until = time.monotonic() + DOWN_FOR_SECONDS
        self._down_reason = reason
        return Delivery(RETRY, reason)

    def _drop(self) -> None:
        self._mail_sent = None
        if self._smtp is not None:
            try:
                self._smtp.close()
            except Exception:
                pass
            self._smtp = None

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except Exception:
                pass
            self._drop()

    # --- sending -------------------------------------------------------------

    def send(self, message: Message | ComposedMail, label: str = "mail") -> Delivery:
        """Hand one message over (a Flask-Mail message, or one already in its wire
        form). The caller records "sending" before calling this."""
        return self.finish(self.start(self.prepare(message, label)))

    # A bulk run takes these steps one by one (see cds.deploy.service.SendLedger):
    # prepare (the server is told the envelope sender; nothing of the message yet),
    # record "sending" meanwhile, start (recipient, DATA, the body), compose the next
    # message meanwhile, finish (the server's reply to the body).

    def prepare(self, message: Message | ComposedMail, label: str = "mail") -> Prepared:
        """Check ``message`` and begin its SMTP transaction with MAIL FROM, without
        waiting for the reply: the caller records "sending" while the server answers.
        Nothing of the message is with the server before ``start``; a prepared message
        that is not started is ``abandon``-ed."""
        self._settle_mail()
        problem = self._sender_problem
        if problem:
            # A sender stored before it was validated: say where to fix it, send nothing.
            return Prepared(early=Delivery(FAILED, f"{problem} Correct it in Settings › E-mail."))
        composed = isinstance(message, ComposedMail)
        if message.bad_headers if composed else message.has_bad_headers():
            return Prepared(early=Delivery(FAILED, "The message has a line break in a header "
                                                   "(recipient or subject)."))
        if composed:
            data, recipient = message.data, message.recipient
        else:
            data, recipient = message_bytes(message), _address_of(message.recipients[0])
        prepared = Prepared(data=data, recipient=recipient, label=label)
        if self.uses_outbox:
            return prepared
        conn = self._connection()
        if isinstance(conn, Delivery):
            prepared.early = conn
            return prepared
        try:
            conn.putcmd("mail", self._mail_from)
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            prepared.early = Delivery(RETRY, f"The connection to the SMTP server was lost ({_describe(exc)}).")
            return prepared
        prepared.smtp = self._mail_sent = conn
        return prepared

    def start(self, prepared: Prepared) -> Delivery | InFlight:
        """Hand the prepared message over, up to the server's reply to its body, which
        ``finish`` reads. Once this returns an ``InFlight``, the body is with the server."""
        if prepared.early is not None:
            return prepared.early
        if self.uses_outbox:
            return self._write_outbox(prepared.data, prepared.label)
        smtp, self._mail_sent = prepared.smtp, None
        result = self._transmit(smtp, prepared.recipient, prepared.data)
        if isinstance(result, Delivery):
            self._slot_used()
        return result

    def abandon(self, prepared: Prepared) -> None:
        """A prepared message that is not to be sent: its SMTP transaction is reset."""
        if prepared.smtp is not None and self._mail_sent is prepared.smtp:
            self._settle_mail()

    def _settle_mail(self) -> None:
        """Close a transaction begun by ``prepare`` and never started."""
        smtp, self._mail_sent = self._mail_sent, None
        if smtp is not None:
            try:
                smtp.getreply()
            except (OSError, smtplib.SMTPException):
                self._drop()
                return
            self._after_refusal(smtp, None)

    def finish(self, started: Delivery | InFlight) -> Delivery:
        """The outcome of a message ``start`` began: the server's reply to its body."""
        if isinstance(started, Delivery):
            return started
        smtp = started.smtp
        try:
            code, resp = smtp.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            return Delivery(UNKNOWN, "The connection to the SMTP server was lost while the message was "
                                     f"being delivered ({_describe(exc)}); it may or may not have arrived.")
        finally:
            self._slot_used()
        if code == 250:
            self.sent += 1
            return Delivery(SENT, _reply_text(code, resp))
        return self._after_refusal(smtp, _classify(code, resp, "data"))

    def _transmit(self, smtp: smtplib.SMTP, recipient: str, data: bytes) -> Delivery | InFlight:
        """The rest of a transaction whose MAIL FROM ``prepare`` sent."""
        try:
            code, resp = smtp.getreply()
            if code != 250:
                return self._after_refusal(smtp, _classify(code, resp, "sender"))
            # smtplib's rcpt(recipient), the address put in its envelope form directly.
            smtp.putcmd("rcpt", f"TO:{envelope_address(recipient)}")
            code, resp = smtp.getreply()
            if code not in (250, 251):
                return self._after_refusal(smtp, _classify(code, resp, "recipient"))
            smtp.putcmd("data")
            code, resp = smtp.getreply()
            if code != 354:
                return self._after_refusal(smtp, _classify(code, resp, "data"))
        except (OSError, smtplib.SMTPException) as exc:
            # Lost before the body was sent: the server does not have the message.
            self._drop()
            return Delivery(RETRY, f"The connection to the SMTP server was lost ({_describe(exc)}).")
        try:
            # Dot-stuffing (RFC 5321 4.5.2), where a line starts with a dot.
            body = re.sub(rb"(?m)^\.", b"..", data) if data[:1] == b"." or b"\n." in data else data
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            smtp.send(body + b".\r\n")
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            return Delivery(UNKNOWN, "The connection to the SMTP server was lost while the message was "
                                     f"being delivered ({_describe(exc)}); it may or may not have arrived.")
        return InFlight(smtp)

    def _after_refusal(self, smtp: smtplib.SMTP, result: Delivery) -> Delivery:
        try:
            smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()
        return result

    def _write_outbox(self, data: bytes, label: str) -> Delivery:
        """Write the message as one .eml file, whole or not at all. A folder that cannot
        be written (full disk, read-only, missing permission) is a temporary failure:
        nothing was handed over, and the message is retried."""
        folder = self._outbox
        name = f"{utcnow():%Y%m%dT%H%M%S}-{label}-{secrets.token_hex(3)}.eml"
        tmp = folder / (name + ".part")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # The file holds a live link: readable by this service's account only.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / name)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            reason = exc.strerror or exc.__class__.__name__
            return Delivery(RETRY, f"The outbox folder {folder} cannot be written ({reason}).")
        self.sent += 1
        return Delivery(SENT, "Written to the outbox (no SMTP server is configured).", outbox_file=name)


# A plain address (dot-atoms of letters, digits and _+'-), as nearly every recipient is.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9_+'-]+(?:\.[A-Za-z0-9_+'-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def envelope_address(address: str) -> str:
    """``smtplib.quoteaddr(address)``, the form of an address in MAIL FROM and RCPT TO:
    a plain address is only put in angle brackets, without parsing it again (one
    parse cost as much as the rest of the RCPT command; tests/mail/test_mail.py
    compares the two)."""
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def _address_of(recipient: str | tuple[str, str]) -> str:
    """The envelope address of a recipient given as ``(name, address)`` or as text."""
    return recipient[1] if isinstance(recipient, tuple) else parseaddr(recipient)[1]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply_text(exc.smtp_code, exc.smtp_error)
    text = str(exc) or exc.__class__.__name__
    return text[:200]
