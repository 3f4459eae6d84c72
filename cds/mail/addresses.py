"""E-mail addresses and header text: the one validator for every value that ends up
in a message header (the sender, recipients, the subject).

A line break in a header value would let it forge more headers (``Bcc:``), so CR,
LF and every other control character are refused outright, wherever the value comes
from: Settings › E-mail, the configuration file or environment at start, a
profile's central address or subject, the e-mail template's subject.
"""
from __future__ import annotations

import re
from email.headerregistry import Address

from email_validator import EmailNotValidError, validate_email

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")
# A host name or IPv4 address as the domain of a sender (single labels such as
# "localhost" included: the relay decides what it accepts from its own network).
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# "Display Name <local@domain>", the name optionally in double quotes.
_NAME_ADDR = re.compile(r'^(?P<name>[^<>]*?)\s*<(?P<addr>[^<>\s]+)>$')
MAX_HEADER_LENGTH = 254


class AddressError(ValueError):
    """Not acceptable in a header; the message says why (for a form or a config line)."""


def check_header_text(value: str, what: str = "The value") -> str:
    """One line of header text (a subject): no line breaks or control characters."""
    if _CONTROL.search(value or ""):
        raise AddressError(f"{what} must be one line, without line breaks or control characters.")
    return value


def _header_value(value: str, what: str) -> str:
    """The stripped value, refused when empty, too long or carrying a line break."""
    value = (value or "").strip()
    check_header_text(value, what)
    if not value:
        raise AddressError(f"{what} is empty.")
    if len(value) > MAX_HEADER_LENGTH:
        raise AddressError(f"{what} is longer than {MAX_HEADER_LENGTH} characters.")
    return value


def check_address(value: str, *, local_domains: bool = False, what: str = "The address") -> str:
    """A bare address ``local@domain``, returned normalised. ``local_domains`` also accepts
    a domain without a dot (``cds@localhost``), as a sender may have."""
    value = _header_value(value, what)
    local, at, domain = value.rpartition("@")
    if local_domains and at and "." not in domain:
        if not _HOST.match(domain):
            raise AddressError(f"{what} {value!r} is not a valid e-mail address.")
        # Only the local part is left to check: check it against a neutral domain.
        try:
            validate_email(f"{local}@example.com", check_deliverability=False)
        except EmailNotValidError as exc:
            raise AddressError(f"{what} {value!r} is not a valid e-mail address ({exc}).") from None
        return f"{local}@{domain.lower()}"
    try:
        return validate_email(value, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as exc:
        raise AddressError(f"{what} {value!r} is not a valid e-mail address ({exc}).") from None


def check_sender(value: str, what: str = "The sender") -> str:
    """``Name <address>`` or a bare address, returned in its normal form (the name quoted
    where RFC 5322 needs it). Local domains such as ``localhost`` are accepted."""
    value = _header_value(value, what)
    match = _NAME_ADDR.match(value)
    if match is None:
        if "<" in value or ">" in value or " " in value:
            raise AddressError(f'{what} must be an address or Name <address>, e.g. '
                               f'"IT Service Desk <it@example.com>".')
        return check_address(value, local_domains=True, what=what)
    name = match.group("name").strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if '"' in name or "\\" in name:
        raise AddressError(f"{what}: the name may not contain quotes or backslashes.")
    address = check_address(match.group("addr"), local_domains=True, what=what)
    return str(Address(display_name=name, addr_spec=address)) if name else address
