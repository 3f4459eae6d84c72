"""The bytes of a message as they go on the wire: one serialisation policy, MIME
boundaries, and the message itself. Shared by the composer and the transport."""
from __future__ import annotations

import io
import secrets
from email.generator import BytesGenerator
from email.policy import compat32

from flask_mail import Message

# Flask-Mail has already encoded every header (RFC 2047) and every body part (base64);
# serialising with the compat32 policy keeps them as they are and is several times
# faster than re-parsing each header with the SMTP policy.
WIRE_POLICY = compat32.clone(linesep="\r\n")


def new_boundary() -> str:
    """A MIME boundary. The generator would compile a regular expression per part to
    check that a boundary of its own choosing is not in the text: 128 random bits
    that no template or attachment can know cannot be in it either."""
    return "=" * 15 + secrets.token_hex(16) + "=="


def message_bytes(message: Message, boundaries: tuple[str, ...] | None = None) -> bytes:
    """The message as sent on the wire (CRLF line ends, no line over 78 characters).
    ``boundaries``: those of its multipart parts, in order (else new ones)."""
    mime = message._message()
    chosen = iter(boundaries or ())
    for part in mime.walk():
        if part.is_multipart() and part.get_boundary() is None:
            part.set_boundary(next(chosen, None) or new_boundary())
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=WIRE_POLICY).flatten(mime)
    return out.getvalue()
