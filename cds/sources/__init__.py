"""Reading users from the sources a connection points at.

Three kinds are HTTP JSON web services (MBG, MiCollab Client Service, Users and
Services; the API is in docs/sources.md) and share ``http_json``; the fourth is
an LDAP directory or Active Directory (``ldap``). Every client returns plain
records: ``{"source_key": ..., <user field>: ...}`` with the fields the kind
provides, which is what the Import Users view stores and Sync compares.

This package holds what both clients share (errors, limits, clean records);
``cds.sources.kinds`` hands a connection to the client of its kind.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from cds import errors
from cds.users.fields import FIELD, SOURCE_OWNED_FIELDS

# The user fields a source may provide, with the column sizes of SourceRecord / User
# (from the field table).
FIELD_SIZES = {name: FIELD[name].size for name in SOURCE_OWNED_FIELDS}
KEY_SIZE = 255

HTTP_KINDS = ("mbg", "mcs", "usa")
LDAP_KIND = "ldap"


class SourceError(errors.Conflict):
    """The source could not be read; the message is meant for the administrator. A 409
    everywhere: the request was understood, the source's state refuses it."""


class SourceAuthError(SourceError):
    """The source refused the credentials or the token (re-authorization needed)."""


class SourceUnreachable(SourceError):
    """The source did not answer (no route, connection refused, time-out). Unlike a refusal,
    a wrong certificate or an answer CDS cannot use, this may pass by itself."""


class SourceLimitError(SourceError):
    """Reading the source went past one of the connection's limits; nothing was changed."""


# What one read of a source may take, unless the connection sets its own (its options,
# under the same names). A source that pages on forever, or sends ever more data, is
# stopped at the first bound it reaches, and the sync changes nothing.
LIMIT_DEFAULTS = {"max_records": 200_000, "max_pages": 10_000, "max_megabytes": 256, "max_seconds": 600}
LIMIT_RANGES = {"max_records": (1, 5_000_000), "max_pages": (1, 1_000_000),
                "max_megabytes": (1, 16_384), "max_seconds": (1, 86_400)}
LIMIT_LABELS = {"max_records": "users", "max_pages": "pages", "max_megabytes": "MB",
                "max_seconds": "seconds"}


def limit_problems(options: dict) -> dict[str, str]:
    """Option name -> what is wrong with it, for the limits a connection sets."""
    problems = {}
    for name, (low, high) in LIMIT_RANGES.items():
        value = options.get(name)
        if value in (None, ""):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() \
                or not low <= int(value) <= high:
            problems[name] = f"must be a whole number from {low:,} to {high:,}"
    return problems


def limits_of(options: dict) -> dict[str, int]:
    """The effective limits: the connection's own, else the defaults."""
    out = {}
    for name, default in LIMIT_DEFAULTS.items():
        value = options.get(name)
        out[name] = int(value) if value not in (None, "") and str(value).strip().isdigit() else default
    return out


@dataclass
class ReadBudget:
    """Counts what one read of a source took, and stops it at the first limit passed."""
    limits: dict[str, int]
    started: float = field(default_factory=time.monotonic)
    records: int = 0
    pages: int = 0
    bytes: int = 0

    @classmethod
    def for_connection(cls, connection) -> "ReadBudget":
        return cls(limits_of(connection.options or {}))

    @property
    def max_bytes(self) -> int:
        return self.limits["max_megabytes"] * 1024 * 1024

    def remaining_seconds(self) -> float:
        return self.limits["max_seconds"] - (time.monotonic() - self.started)

    def _stop(self, what: str, option: str) -> None:
        limit = self.limits[option]
        raise SourceLimitError(
            f"Reading the source stopped: {what} (this connection's limit is {limit:,} "
            f"{LIMIT_LABELS[option]}). Nothing was changed. If the source really holds that much, "
            f"raise the limit in the connection's settings ({option}).")

    def check_time(self) -> None:
        if self.remaining_seconds() <= 0:
            self._stop("it took longer than the time allowed", "max_seconds")

    def add_page(self) -> None:
        self.pages += 1
        if self.pages > self.limits["max_pages"]:
            self._stop(f"the source sent more than {self.limits['max_pages']:,} pages", "max_pages")
        self.check_time()

    def add_bytes(self, count: int) -> None:
        self.bytes += count
        if self.bytes > self.max_bytes:
            self._stop(f"the source sent more than {self.limits['max_megabytes']:,} MB", "max_megabytes")

    def add_record(self) -> None:
        self.records += 1
        if self.records > self.limits["max_records"]:
            self._stop(f"the source returned more than {self.limits['max_records']:,} users",
                       "max_records")


@dataclass
class Authorization:
    """What a successful authorization leaves: a token (web services) and its expiry."""
    token: str | None
    expires_at: datetime | None


def clean_record(key, values: dict, fields: tuple[str, ...]) -> dict:
    """One source record in the stored form: strings, stripped, cut to the column sizes."""
    record = {"source_key": _text(key)[:KEY_SIZE]}
    for name in fields:
        record[name] = _text(values.get(name))[:FIELD_SIZES[name]]
    return record


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip()
