"""Reading the .eml files of instance/outbox/ for the Outbox page."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path

from cds import errors
from cds.audit.service import record_event
from cds.mail.compose import qr_data_uri
from cds.mail.transport import outbox_dir

PAGE_SIZE = 50
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.eml$")


class OutboxError(errors.NotFound):
    pass


# A live deployment link is a credential (whoever opens it activates the user's client
# and receives the four secrets), so only administrators who may deploy see one. For
# the others every link token (43 URL-safe characters, see cds.security.new_token) is
# replaced and the QR code left out, on every view of a message.
_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
HIDDEN_TOKEN = "HIDDEN-link-visible-to-administrators-who-deploy"


def mask_links(text: str) -> str:
    return _TOKEN.sub(HIDDEN_TOKEN, text)


def masked(message: "OutboxMessage") -> "OutboxMessage":
    """The message as a read-only administrator sees it: no link token, no QR code."""
    message.subject = mask_links(message.subject)
    message.text = mask_links(message.text)
    message.html = mask_links(message.html) if message.html is not None else None
    message.images = {}
    message.links_hidden = True
    return message


@dataclass
class OutboxEntry:
    name: str
    subject: str
    to: str
    date: datetime | None
    size: int


@dataclass
class OutboxMessage(OutboxEntry):
    sender: str = ""
    text: str = ""
    html: str | None = None
    # Content-ID (without <>) -> (content type, bytes), images only.
    images: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    links_hidden: bool = False


def _files() -> list[Path]:
    folder = outbox_dir()
    if not folder.is_dir():
        return []
    # Names start with the UTC time they were written, so the name orders them.
    return sorted((p for p in folder.glob("*.eml") if p.is_file()), key=lambda p: p.name, reverse=True)


def _date(value) -> datetime | None:
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when


def _entry(path: Path, parser) -> OutboxEntry:
    with path.open("rb") as fh:
        headers = parser.parse(fh)
    return OutboxEntry(path.name, str(headers.get("Subject", "")), str(headers.get("To", "")),
                       _date(headers.get("Date")), path.stat().st_size)


def list_messages(page: int = 1, to: str = "") -> tuple[list[OutboxEntry], int]:
    """One page of messages, newest first, and how many there are. ``to``: only those
    whose recipient (name or address) contains it, ignoring case. Only headers are read."""
    files = _files()
    start = (max(page, 1) - 1) * PAGE_SIZE
    parser = BytesHeaderParser(policy=policy.default)
    wanted = to.strip().casefold()
    if not wanted:
        return [_entry(p, parser) for p in files[start:start + PAGE_SIZE]], len(files)
    matching = [e for e in (_entry(p, parser) for p in files) if wanted in e.to.casefold()]
    return matching[start:start + PAGE_SIZE], len(matching)


def count_messages() -> int:
    return len(_files())


def has_messages() -> bool:
    folder = outbox_dir()
    return folder.is_dir() and any(folder.glob("*.eml"))


def _path(name: str) -> Path:
    if not _NAME.match(name):
        raise OutboxError("No such message.")
    path = outbox_dir() / name
    if not path.is_file():
        raise OutboxError("No such message (it may have been deleted).")
    return path


def raw_message(name: str) -> bytes:
    return _path(name).read_bytes()


def read_message(name: str) -> OutboxMessage:
    path = _path(name)
    msg: EmailMessage = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    out = OutboxMessage(name, str(msg.get("Subject", "")), str(msg.get("To", "")), _date(msg.get("Date")),
                        path.stat().st_size, sender=str(msg.get("From", "")))
    text_part = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    out.text = text_part.get_content() if text_part is not None else ""
    out.html = html_part.get_content() if html_part is not None else None
    for part in msg.walk():
        cid = part.get("Content-ID")
        if cid and part.get_content_maintype() == "image":
            out.images[cid.strip().strip("<>")] = (part.get_content_type(), part.get_payload(decode=True))
    return out


def html_with_inline_images(message: OutboxMessage) -> str:
    """The HTML part with cid: references replaced by data: URLs (the preview frame allows only those)."""
    html = message.html or ""
    for cid, (ctype, data) in message.images.items():
        if ctype == "image/png":
            html = html.replace(f"cid:{cid}", qr_data_uri(data))
    return html


def delete_all(*, actor: str) -> int:
    """Empty the Outbox (audited as ``outbox.empty``); returns how many messages went."""
    count = 0
    for path in _files():
        path.unlink(missing_ok=True)
        count += 1
    record_event("outbox.empty", actor=actor, count=count)
    return count
