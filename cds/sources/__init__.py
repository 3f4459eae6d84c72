"""Reading users from the sources a connection points at.

Three kinds are HTTP JSON web services (MBG, MiCollab Client Service, Users and
Services; the API is in docs/sources.md) and share ``http_json``; the fourth is
an LDAP directory or Active Directory (``ldap``). Every client returns plain
records: ``{"source_key": ..., <user field>: ...}`` with the fields the kind
provides, which is what the Import Users view stores and Sync compares.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# The user fields a source may provide (models.SOURCE_OWNED_FIELDS), with the
# column sizes of SourceRecord / User.
FIELD_SIZES = {"login_id": 113, "first_name": 100, "last_name": 100, "number": 32,
               "pbx_number": 32, "pbx_sip_username": 128, "mbg_sip_username": 128,
               "mcs_account": 128, "email": 254}
KEY_SIZE = 255

HTTP_KINDS = ("mbg", "mcs", "usa")
LDAP_KIND = "ldap"


class SourceError(Exception):
    """The source could not be read; the message is meant for the administrator."""


class SourceAuthError(SourceError):
    """The source refused the credentials or the token (re-authorization needed)."""


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


def provided_fields(connection) -> tuple[str, ...]:
    """The user fields this connection's source provides (and so owns)."""
    if connection.kind == LDAP_KIND:
        from cds.sources.ldap import attribute_mapping
        return tuple(attribute_mapping(connection.options or {}))
    from cds.sources.http_json import KIND_FIELDS
    return tuple(KIND_FIELDS[connection.kind].values())


def authorize(kind: str, url: str, username: str, password: str, options: dict) -> Authorization:
    """Check the credentials against the source and get a token where the kind uses one."""
    if kind == LDAP_KIND:
        from cds.sources.ldap import check_bind
        check_bind(url, username, password, options)
        return Authorization(None, None)
    from cds.sources.http_json import request_token
    return request_token(url, username, password, options)


def fetch_records(connection) -> list[dict]:
    """Every user the source holds, as clean records. Raises SourceError."""
    if connection.kind == LDAP_KIND:
        from cds.sources.ldap import fetch_ldap_records
        return fetch_ldap_records(connection)
    from cds.sources.http_json import fetch_http_records
    return fetch_http_records(connection)
