"""A connection's kind decides which client reads its source: the LDAP client for
LDAP / Active Directory, the HTTP JSON client for the three web services."""
from __future__ import annotations

from cds.sources import LDAP_KIND, Authorization
from cds.sources.http_json import KIND_FIELDS, fetch_http_records, request_token
from cds.sources.ldap import attribute_mapping, check_bind, fetch_ldap_records


def provided_fields(connection) -> tuple[str, ...]:
    """The user fields this connection's source provides (and so owns)."""
    if connection.kind == LDAP_KIND:
        return tuple(attribute_mapping(connection.options or {}))
    return tuple(KIND_FIELDS[connection.kind].values())


def authorize(kind: str, url: str, username: str, password: str, options: dict) -> Authorization:
    """Check the credentials against the source and get a token where the kind uses one."""
    if kind == LDAP_KIND:
        check_bind(url, username, password, options)
        return Authorization(None, None)
    return request_token(url, username, password, options)


def fetch_records(connection) -> list[dict]:
    """Every user the source holds, as clean records. Raises SourceError."""
    if connection.kind == LDAP_KIND:
        return fetch_ldap_records(connection)
    return fetch_http_records(connection)
