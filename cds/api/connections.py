"""/api/v1/connections: the sources users are imported from, and Sync now."""
from __future__ import annotations

from flask import Response, g

from cds.api.blueprint import ApiError, body_json, bp
from cds.api.schema import connection_json, job_json
from cds.connections import service as connections
from cds.connections.service import ConnectionSettings
from cds.extensions import db
from cds.models import Connection


def _connection(connection_id: int) -> Connection:
    conn = db.session.get(Connection, connection_id)
    if conn is None:
        raise ApiError(404, "not_found", f"Connection {connection_id} does not exist.")
    return conn


def _require_primary() -> None:
    """Creating or re-authorizing a source is the primary administrator's, in the API
    as in the console: it takes a token created with --role primary."""
    if g.api_token.role != "primary":
        raise ApiError(403, "forbidden", "Only a primary-administrator token (create-api-token "
                                         "--role primary) may create or re-authorize a connection.")


def _settings_from(data: dict, conn: Connection | None):
    allowed = {"name", "sync_interval_minutes", "enabled", "options"} | \
        ({"kind", "url", "username", "password"} if conn is None else set())
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(422, "invalid", "These fields cannot be set here: " + ", ".join(unknown) + ".",
                       {k: "not settable" for k in unknown})
    problems = {}
    interval = data.get("sync_interval_minutes", conn.sync_interval_minutes if conn else 60)
    if not isinstance(interval, int) or isinstance(interval, bool):
        problems["sync_interval_minutes"] = "must be an integer"
    enabled = data.get("enabled", conn.enabled if conn else True)
    if not isinstance(enabled, bool):
        problems["enabled"] = "must be true or false"
    options = data.get("options", conn.options if conn else {})
    if not isinstance(options, dict):
        problems["options"] = "must be an object"
    for key in ("name", "kind", "url", "username"):
        if key in data and not isinstance(data[key], str):
            problems[key] = "must be a string"
    if problems:
        raise ApiError(422, "invalid", "Some values have the wrong type.", problems)
    return ConnectionSettings(name=data.get("name", conn.name if conn else ""),
                              kind=data.get("kind", conn.kind if conn else ""),
                              url=data.get("url", conn.url if conn else ""),
                              username=data.get("username", conn.username if conn else ""),
                              sync_interval_minutes=interval, enabled=enabled, options=options)


@bp.get("/connections")
def list_connections():
    items = [connection_json(c) for c in connections.list_connections()]
    return {"items": items, "total": len(items), "page": 1, "per_page": max(1, len(items)), "next": None}


@bp.get("/connections/<int:connection_id>")
def get_connection(connection_id: int):
    return connection_json(_connection(connection_id))


@bp.post("/connections")
def create_connection():
    data = body_json()
    _require_primary()
    password = data.get("password", "")
    if not isinstance(password, str):
        raise ApiError(422, "invalid", "password must be a string.", {"password": "must be a string"})
    settings = _settings_from(data, None)
    conn = connections.create_connection(settings, password, actor=g.actor)  # ConnectionProblem: 422 with its field errors
    return connection_json(conn), 201, {"Location": f"/api/v1/connections/{conn.id}"}


@bp.post("/connections/<int:connection_id>/authorize")
def reauthorize_connection(connection_id: int):
    """Authorize again: a new token from the source, or a new URL / credentials."""
    conn = _connection(connection_id)
    data = body_json()
    _require_primary()
    unknown = sorted(set(data) - {"url", "username", "password"})
    if unknown or not all(isinstance(data.get(k, ""), str) for k in ("url", "username", "password")):
        raise ApiError(422, "invalid", "Send url, username and password as strings.",
                       {k: "not settable" for k in unknown} or {"body": "strings expected"})
    conn = connections.reauthorize(conn, data.get("url", conn.url), data.get("username", conn.username),
                       data.get("password") or None, actor=g.actor)
    return connection_json(conn)


@bp.patch("/connections/<int:connection_id>")
def update_connection(connection_id: int):
    conn = _connection(connection_id)
    data = body_json()
    settings = _settings_from(data, conn)
    conn = connections.update_connection(conn, settings, actor=g.actor)
    return connection_json(conn)


@bp.delete("/connections/<int:connection_id>")
def delete_connection(connection_id: int):
    connections.delete_connection(_connection(connection_id), actor=g.actor)
    return Response(status=204)


@bp.post("/connections/<int:connection_id>/sync")
def sync_connection(connection_id: int):
    """Sync now: a job when users were imported from it, else a refresh of its records."""
    conn = _connection(connection_id)
    job, refreshed = connections.start_sync(conn, actor=g.actor)  # SourceError: 409
    if job is not None:
        db.session.refresh(job)
        return {"job": job_json(job), "records": None}, 202
    db.session.refresh(conn)
    return {"job": None, "records": {"total": refreshed.total, "added": refreshed.added,
                                     "changed": refreshed.changed, "removed": refreshed.removed}}, 200
