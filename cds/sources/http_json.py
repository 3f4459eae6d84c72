"""The HTTP JSON client shared by the MBG, MiCollab Client Service and Users and
Services connections. The API it speaks is documented in docs/sources.md:

    POST <url>/api/v1/token   {"username", "password"} -> {"token", "expires_at" | "expires_in"}
    GET  <url>/api/v1/users?limit=N[&cursor=C]  (Authorization: Bearer <token>)
                              -> {"users": [...], "next_cursor": C | null}

The three kinds differ only in the names of the fields they return (KIND_FIELDS).
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone

from cds import safejson
from cds.models import utcnow
from cds.security import decrypt
from cds.sources import Authorization, ReadBudget, SourceAuthError, SourceError, SourceUnreachable, \
    clean_record

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 30
DEFAULT_PAGE_SIZE = 500
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
READ_CHUNK = 256 * 1024

# JSON field of each kind -> CDS user field. "id" is always the record's stable key.
KIND_FIELDS: dict[str, dict[str, str]] = {
    "mbg": {
        "login": "login_id",
        "firstName": "first_name",
        "lastName": "last_name",
        "directoryNumber": "number",
        "sipUserName": "mbg_sip_username",
        "email": "email",
    },
    "mcs": {
        "loginId": "login_id",
        "firstName": "first_name",
        "lastName": "last_name",
        "extension": "number",
        "account": "mcs_account",
        "email": "email",
    },
    "usa": {
        "loginId": "login_id",
        "firstName": "first_name",
        "lastName": "last_name",
        "primaryDn": "number",
        "pbxNumber": "pbx_number",
        "pbxSipUserName": "pbx_sip_username",
        "mbgSipUserName": "mbg_sip_username",
        "mcsAccount": "mcs_account",
        "email": "email",
    },
}


def _ssl_context(options: dict) -> ssl.SSLContext:
    pem = (options.get("ca_cert_pem") or "").strip()
    ctx = ssl.create_default_context(cadata=pem) if pem else ssl.create_default_context()
    if options.get("verify_tls") is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _call(method: str, url: str, options: dict, *, body: dict | None = None,
          token: str | None = None, budget: ReadBudget | None = None) -> dict:
    """One request; returns the decoded JSON object or raises SourceError with a clear reason.
    The body is read in chunks, counted against ``budget`` (bytes and time) as it comes."""
    headers = {"Accept": "application/json", "User-Agent": "CDS"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    timeout = float(options.get("timeout") or DEFAULT_TIMEOUT)
    if budget is not None:
        budget.check_time()
        timeout = max(0.5, min(timeout, budget.remaining_seconds()))
    host = urllib.parse.urlsplit(url).netloc
    try:
        kwargs = {"context": _ssl_context(options)} if url.startswith("https:") else {}
        with urllib.request.urlopen(request, timeout=timeout, **kwargs) as resp:
            raw = _read_body(resp, budget)
    except urllib.error.HTTPError as exc:
        reason = _error_text(exc)
        if exc.code == 401:
            raise SourceAuthError(f"{host} refused the authorization (HTTP 401{reason}).") from None
        raise SourceError(f"{host} answered HTTP {exc.code}{reason}.") from None
    except (socket.timeout, TimeoutError):
        raise SourceUnreachable(f"{host} did not answer within {timeout:g} seconds.") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (socket.timeout, TimeoutError)):
            raise SourceUnreachable(f"{host} did not answer within {timeout:g} seconds.") from None
        if isinstance(exc.reason, ssl.SSLError):
            raise SourceError(f"TLS with {host} failed: {exc.reason.reason or exc.reason}.") from None
        raise SourceUnreachable(f"{host} cannot be reached: {exc.reason}.") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise SourceError(f"{host}: the request failed ({exc.__class__.__name__}: {exc}).") from None
    if len(raw) > MAX_RESPONSE_BYTES:
        raise SourceError(f"{host} sent a response larger than {MAX_RESPONSE_BYTES // 2**20} MB.")
    try:
        payload = safejson.loads(raw)
    except safejson.UnsafeJSON as exc:
        raise SourceError(f"{host} answered JSON that CDS cannot use: {exc}.") from None
    except (ValueError, UnicodeDecodeError):
        raise SourceError(f"{host} did not answer with JSON (the URL may point at the wrong "
                          f"service).") from None
    if not isinstance(payload, dict):
        raise SourceError(f"{host} answered JSON that is not an object.")
    return payload


def _read_body(resp, budget: ReadBudget | None) -> bytes:
    """The response body, chunk by chunk, stopped as soon as a bound is passed."""
    chunks, size = [], 0
    while True:
        chunk = resp.read(READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if budget is not None:
            budget.add_bytes(len(chunk))
            budget.check_time()
        if size > MAX_RESPONSE_BYTES:
            return b"".join(chunks) + chunk  # reported as too large by the caller
        chunks.append(chunk)


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        payload = safejson.loads(exc.read(4096) or b"{}")
        message = payload.get("message") or payload.get("error") if isinstance(payload, dict) else None
    except (ValueError, OSError):
        message = None
    return f": {str(message)[:200]}" if message else ""


def _endpoint(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + API_PREFIX + path


def request_token(url: str, username: str, password: str, options: dict) -> Authorization:
    """Exchange the credentials for an access token (POST /api/v1/token)."""
    payload = _call("POST", _endpoint(url, "/token"), options,
                    body={"username": username, "password": password})
    token = payload.get("token")
    if not isinstance(token, str) or not token:
        raise SourceError("The source's token answer has no token.")
    return Authorization(token, _expiry(payload))


def _expiry(payload: dict) -> datetime | None:
    if payload.get("expires_at"):
        try:
            value = datetime.fromisoformat(str(payload["expires_at"]).replace("Z", "+00:00"))
        except ValueError:
            raise SourceError("The source's token answer has an unreadable expires_at.") from None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.replace(microsecond=0)
    if payload.get("expires_in") is not None:
        try:
            return utcnow() + timedelta(seconds=int(payload["expires_in"]))
        except (TypeError, ValueError):
            raise SourceError("The source's token answer has an unreadable expires_in.") from None
    return None


def fetch_http_records(connection) -> list[dict]:
    """Walk GET /api/v1/users page by page with the connection's token, within the
    connection's limits (records, pages, bytes, time: ``cds.sources.LIMIT_DEFAULTS``)."""
    if connection.token_expires_at is not None and connection.token_expires_at <= utcnow():
        raise SourceAuthError(
            f"The authorization expired on {connection.token_expires_at:%Y-%m-%d %H:%M} UTC; "
            f"the primary administrator must re-authorize this connection.")
    token = decrypt(connection.token_enc)
    if not token:
        raise SourceAuthError("This connection has no authorization yet; the primary administrator "
                              "must authorize it.")
    options = connection.options or {}
    mapping = KIND_FIELDS[connection.kind]
    fields = tuple(mapping.values())
    page_size = int(options.get("page_size") or DEFAULT_PAGE_SIZE)
    records: list[dict] = []
    seen: set[str] = set()
    cursor = None
    budget = ReadBudget.for_connection(connection)
    while True:
        budget.add_page()
        query = {"limit": page_size}
        if cursor:
            query["cursor"] = cursor
        url = _endpoint(connection.url, "/users") + "?" + urllib.parse.urlencode(query)
        try:
            payload = _call("GET", url, options, token=token, budget=budget)
        except SourceAuthError:
            raise SourceAuthError("The source refused the connection's token (expired or revoked); "
                                  "the primary administrator must re-authorize this connection.") \
                from None
        users = payload.get("users")
        if not isinstance(users, list):
            raise SourceError("The source's answer has no \"users\" list.")
        for item in users:
            budget.add_record()
            record = _parse_user(item, mapping, fields, len(records) + 1)
            if record["source_key"] in seen:
                raise SourceError(f"The source returned the id {record['source_key']!r} twice.")
            seen.add(record["source_key"])
            records.append(record)
        next_cursor = payload.get("next_cursor")
        if next_cursor in (None, ""):
            return records
        if not isinstance(next_cursor, (str, int)) or str(next_cursor) == cursor:
            raise SourceError("The source's paging cursor is invalid or does not advance.")
        if not users:
            raise SourceError("The source returned an empty page with a next cursor.")
        cursor = str(next_cursor)


def _parse_user(item, mapping: dict[str, str], fields: tuple[str, ...], position: int) -> dict:
    if not isinstance(item, dict):
        raise SourceError(f"User {position} in the source's answer is not an object.")
    key = item.get("id")
    if key in (None, "") or isinstance(key, (dict, list, bool)):
        raise SourceError(f"User {position} in the source's answer has no id.")
    values = {}
    for json_name, field in mapping.items():
        value = item.get(json_name)
        if isinstance(value, (dict, list)):
            raise SourceError(f"User {key!s:.40} in the source's answer has a malformed "
                              f"{json_name!r}.")
        values[field] = value
    record = clean_record(key, values, fields)
    if not record["login_id"]:
        login_name = next(n for n, f in mapping.items() if f == "login_id")
        raise SourceError(f"User {key!s:.40} in the source's answer has no {login_name!r}.")
    return record
