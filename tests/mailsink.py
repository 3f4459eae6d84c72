"""A real SMTP server on loopback (aiosmtpd) — the ``smtp_server`` fixture of
tests/conftest.py — and helpers to read what it received: the text and HTML parts,
the deployment links and the inline QR code, decoded."""
from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from email import policy
from email.parser import BytesParser

from aiosmtpd.controller import Controller

from tests.conftest import free_port


class SinkHandler:
    def __init__(self):
        self.messages: list[tuple[list[str], bytes]] = []
        self.connections = 0
        # address -> replies to RCPT, used up one per attempt (then accepted).
        self.rcpt_replies: dict[str, list[str]] = {}
        # address -> reply to every RCPT (a permanent refusal).
        self.rcpt_refuse: dict[str, str] = {}
        self.hold_after: int | None = None  # accept this many messages, then hold the next
        self.release = threading.Event()
        self.holding = threading.Event()
        self.lock = threading.Lock()
        # A slow server: seconds before the reply to each message's data.
        self.delay = 0.0
        # A throttled relay: at most this many messages a minute, more are refused (451).
        self.per_minute: int | None = None
        self.throttled = 0
        self._last_accepted: float | None = None
        # (user name, password) of each AUTH LOGIN/PLAIN; every login is accepted.
        self.logins: list[tuple[str, str]] = []

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult
        with self.lock:
            self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            if address in self.rcpt_refuse:
                return self.rcpt_refuse[address]
            if self.rcpt_replies.get(address):
                return self.rcpt_replies[address].pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.per_minute:
            now = time.monotonic()
            with self.lock:
                # A little slack for the time between CDS's paced start and the data's end.
                if self._last_accepted is not None and now - self._last_accepted < 0.75 * 60 / self.per_minute:
                    self.throttled += 1
                    return "451 4.7.1 Too many messages, slow down"
                self._last_accepted = now
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), envelope.original_content or envelope.content))
            count = len(self.messages)
        if self.hold_after is not None and count > self.hold_after:
            self.holding.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        return "250 2.0.0 Message accepted"

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for rcpts, _ in self.messages for r in rcpts]


class MailSink:
    """The server and what it received. It offers AUTH (over plain text: loopback only)
    and accepts any login, so CDS's SMTP user name and password settings are used as
    with a real relay; ``handler.logins`` tells which were sent."""

    def __init__(self, port: int | None = None):
        self.handler = SinkHandler()
        self.port = port or free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     authenticator=self.handler.authenticate, auth_require_tls=False)

    def start(self) -> "MailSink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.handler.release.set()
        self.controller.stop()

    @property
    def messages(self):
        return self.handler.messages

    def tokens(self) -> list[str]:
        """The deployment token of each message's link, in the order received."""
        return [link_in(parts(raw)["text"]).rsplit("/", 1)[1] for _, raw in self.handler.messages]

    def token_for(self, recipient: str) -> str:
        for rcpts, raw in self.handler.messages:
            if recipient in rcpts:
                return link_in(parts(raw)["text"]).rsplit("/", 1)[1]
        raise AssertionError(f"no message to {recipient}")

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.handler.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} messages, got {len(self.handler.messages)}")
            time.sleep(0.02)


def parse(raw: bytes):
    return BytesParser(policy=policy.default).parsebytes(raw)


def parts(raw: bytes) -> dict:
    """{"subject", "to", "text", "html", "images": {cid: bytes}} of one message."""
    msg = parse(raw)
    out = {"subject": str(msg["Subject"]), "to": str(msg["To"]), "from": str(msg["From"]),
           "text": msg.get_body(preferencelist=("plain",)).get_content(),
           "html": msg.get_body(preferencelist=("html",)).get_content(), "images": {}}
    for part in msg.walk():
        if part.get_content_maintype() == "image" and part["Content-ID"]:
            out["images"][str(part["Content-ID"]).strip("<>")] = part.get_payload(decode=True)
    return out


def decode_qr(png: bytes) -> str:
    import zxingcpp
    from PIL import Image
    results = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert results, "no QR code found in the image"
    return results[0].text


LINK = re.compile(r"https?://\S+/r/[A-Za-z0-9_-]{43}")


def link_in(text: str) -> str:
    found = LINK.findall(text)
    assert found, "no deployment link in the text part"
    return found[0]
