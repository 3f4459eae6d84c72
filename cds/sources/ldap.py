"""The LDAP / Active Directory client (ldap3).

ldap:// always upgrades with StartTLS before binding, ldaps:// is TLS from the
first byte: the bind password never crosses the network in clear. Users are
read with a paged search (RFC 2696), so directories larger than the server's
size limit are read whole.
"""
from __future__ import annotations

import ssl
import uuid
from urllib.parse import urlsplit

from cds.sources import ReadBudget, SourceAuthError, SourceError, SourceUnreachable, clean_record
from cds.users.fields import FIELD, SOURCE_OWNED_FIELDS

DEFAULT_FILTER = "(objectClass=person)"
DEFAULT_PAGE_SIZE = 500
DEFAULT_TIMEOUT = 30
# The record key must survive renames, so a changed uid is seen as an ID change:
# entryUUID (OpenLDAP, RFC 4530) or objectGUID (Active Directory).
DEFAULT_KEY_ATTRIBUTE = "entryUUID,objectGUID"

# CDS user field -> attribute(s); the first attribute present wins. From the field table.
MAPPABLE_FIELDS = SOURCE_OWNED_FIELDS
DEFAULT_MAPPING = {name: FIELD[name].ldap for name in MAPPABLE_FIELDS if FIELD[name].ldap}


def attribute_mapping(options: dict) -> dict[str, list[str]]:
    """The effective field -> attributes mapping (defaults where the admin set nothing)."""
    configured = options.get("mapping") or {}
    mapping = {}
    for field in MAPPABLE_FIELDS:
        raw = configured.get(field, DEFAULT_MAPPING.get(field, ""))
        attrs = [a.strip() for a in str(raw or "").split(",") if a.strip()]
        if attrs:
            mapping[field] = attrs
    mapping.setdefault("login_id", DEFAULT_MAPPING["login_id"].split(","))
    return mapping


def _split_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise SourceError("The URL must look like ldap://host or ldaps://host.")
    secure = parts.scheme == "ldaps"
    try:
        port = parts.port or (636 if secure else 389)
    except ValueError:
        raise SourceError("The port in the URL is not a number.") from None
    return parts.hostname, port, secure


# ldap3 is imported in the functions that use it: loading it takes about a third of a
# second and 9 MB, which a console without an LDAP connection never needs.

def _open(url: str, bind_dn: str, password: str, options: dict):
    """A bound, read-only connection over TLS, or SourceError with a clear reason."""
    from ldap3 import NONE, Connection, Server, Tls
    from ldap3.core import exceptions as lx

    host, port, secure = _split_url(url)
    timeout = max(1, int(float(options.get("timeout") or DEFAULT_TIMEOUT)))
    verify = options.get("verify_tls", True) is not False
    pem = (options.get("ca_cert_pem") or "").strip() or None
    tls = Tls(validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE, ca_certs_data=pem)
    server = Server(host, port=port, use_ssl=secure, tls=tls, get_info=NONE,
                    connect_timeout=timeout)
    conn = Connection(server, user=bind_dn or None, password=password or None,
                      receive_timeout=timeout, read_only=True, auto_referrals=False,
                      raise_exceptions=True)
    where = f"{host}:{port}"
    try:
        conn.open()
        if not secure:
            conn.start_tls()
        conn.bind()
    except lx.LDAPInvalidCredentialsResult:
        _close(conn)
        raise SourceAuthError(f"{where} refused the bind DN or password.") from None
    except (lx.LDAPSocketOpenError, lx.LDAPSocketReceiveError, lx.LDAPSocketSendError) as exc:
        _close(conn)
        text = str(exc)
        if "timed out" in text or "timeout" in text.lower():
            raise SourceUnreachable(f"{where} did not answer within {timeout:g} seconds.") from None
        if "certificate" in text.lower() or "ssl" in text.lower() or "tls" in text.lower():
            raise SourceError(f"TLS with {where} failed (check the CA certificate): {text}") from None
        raise SourceUnreachable(f"{where} cannot be reached: {text}") from None
    except lx.LDAPStartTLSError as exc:
        _close(conn)
        raise SourceError(f"StartTLS with {where} failed (check the CA certificate, or use "
                          f"ldaps://): {exc}") from None
    except lx.LDAPException as exc:
        _close(conn)
        raise SourceError(f"{where}: {exc.__class__.__name__}: {exc}") from None
    return conn


def _close(conn) -> None:
    try:
        conn.unbind()
    except Exception:
        pass


def check_bind(url: str, bind_dn: str, password: str, options: dict) -> None:
    """Connect, secure and bind; also checks that the base DN can be searched."""
    from ldap3 import BASE
    from ldap3.core import exceptions as lx

    base_dn = (options.get("base_dn") or "").strip()
    if not base_dn:
        raise SourceError("The base DN is required.")
    conn = _open(url, bind_dn, password, options)
    try:
        conn.search(base_dn, "(objectClass=*)", search_scope=BASE, attributes=["1.1"])
    except lx.LDAPNoSuchObjectResult:
        raise SourceError(f"The base DN {base_dn!r} does not exist on the server.") from None
    except lx.LDAPException as exc:
        raise SourceError(f"Searching {base_dn!r} failed: {exc}") from None
    finally:
        _close(conn)


def _value(attributes: dict, names: list[str]):
    lowered = {k.lower(): v for k, v in attributes.items()}
    for name in names:
        value = lowered.get(name.lower())
        if isinstance(value, list):
            value = value[0] if value else None
        if value not in (None, "", b""):
            return value
    return None


def _key_text(value) -> str:
    """objectGUID arrives as 16 raw bytes (little-endian UUID); entryUUID as text."""
    if isinstance(value, bytes):
        if len(value) == 16:
            return str(uuid.UUID(bytes_le=value))
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return value.hex()
        return text if text.isprintable() else value.hex()
    return str(value)


def fetch_ldap_records(connection) -> list[dict]:
    from ldap3 import SUBTREE
    from ldap3.core import exceptions as lx

    options = connection.options or {}
    base_dn = (options.get("base_dn") or "").strip()
    if not base_dn:
        raise SourceError("The base DN is not set.")
    search_filter = (options.get("search_filter") or "").strip() or DEFAULT_FILTER
    page_size = int(options.get("page_size") or DEFAULT_PAGE_SIZE)
    mapping = attribute_mapping(options)
    key_attrs = [a.strip() for a in (options.get("key_attribute") or DEFAULT_KEY_ATTRIBUTE).split(",")
                 if a.strip()]
    attributes = sorted({a for attrs in mapping.values() for a in attrs} | set(key_attrs))
    fields = tuple(mapping)

    conn = _open(connection.url, connection.username, connection.get_password() or "", options)
    records: list[dict] = []
    seen: set[str] = set()
    budget = ReadBudget.for_connection(connection)
    try:
        entries = conn.extend.standard.paged_search(
            base_dn, search_filter, search_scope=SUBTREE, attributes=attributes,
            paged_size=page_size, generator=True)
        for position, entry in enumerate(entries):
            # The directory's pages arrive as the generator is walked: one entry at a time
            # is counted (every page_size entries as a page, the raw values as bytes).
            if position % page_size == 0:
                budget.add_page()
            if entry.get("type") != "searchResEntry":
                continue  # referrals
            attrs = entry.get("raw_attributes") or {}
            budget.add_bytes(sum(len(v) for vals in attrs.values() for v in vals
                                 if isinstance(v, (bytes, str))))
            budget.add_record()
            decoded = {k: ([_decode(v) for v in vals] if k.lower() not in
                           {a.lower() for a in key_attrs} else vals)
                       for k, vals in attrs.items()}
            key = _value(decoded, key_attrs)
            values = {field: _value(decoded, names) for field, names in mapping.items()}
            if key is None or not values.get("login_id"):
                continue  # not a user CDS can identify (e.g. a service entry without uid)
            record = clean_record(_key_text(key), values, fields)
            if record["source_key"] in seen:
                continue
            seen.add(record["source_key"])
            records.append(record)
    except lx.LDAPNoSuchObjectResult:
        raise SourceError(f"The base DN {base_dn!r} does not exist on the server.") from None
    except lx.LDAPInvalidFilterError:
        raise SourceError(f"The search filter {search_filter!r} is not valid LDAP filter syntax.") \
            from None
    except (lx.LDAPSocketReceiveError, lx.LDAPSocketSendError, lx.LDAPSessionTerminatedByServerError) as exc:
        raise SourceError(f"The directory stopped answering during the search: {exc}") from None
    except lx.LDAPException as exc:
        raise SourceError(f"The directory search failed: {exc.__class__.__name__}: {exc}") from None
    finally:
        _close(conn)
    return records


def _decode(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value
