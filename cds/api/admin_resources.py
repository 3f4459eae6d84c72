"""/api/v1 profiles, connections, CSV imports and audit events."""
from __future__ import annotations

import base64
import binascii

from flask import Response, g, request

from cds.api.routes import ApiError, bp, body_json, iso, paginated
from cds.extensions import db
from cds.models import Connection, DeploymentProfile
from cds.web import MAX_ID

# --- deployment profiles ---------------------------------------------------------------

PROFILE_INT_FIELDS = ("mbg_sip_port", "pbx_sip_port", "mcs_port", "link_validity_hours")


def profile_json(p: DeploymentProfile, users: int | None = None) -> dict:
    from cds.profiles.service import PROFILE_FIELDS, profile_problems
    out = {"id": p.id, **{k: getattr(p, k) for k in PROFILE_FIELDS},
           "is_default": p.is_default, "is_do_not_deploy": p.is_do_not_deploy,
           "missing": profile_problems(p),
           "created_at": iso(p.created_at), "updated_at": iso(p.updated_at)}
    if users is not None:
        out["users"] = users
    return out


def _profile(profile_id: int) -> DeploymentProfile:
    profile = db.session.get(DeploymentProfile, profile_id)
    if profile is None:
        raise ApiError(404, "not_found", f"Deployment profile {profile_id} does not exist.")
    return profile


def _profile_body(data: dict) -> tuple[dict, bool]:
    from cds.profiles.service import PROFILE_FIELDS
    unknown = sorted(set(data) - set(PROFILE_FIELDS) - {"is_default"})
    problems = {k: "unknown field" for k in unknown}
    for key, value in data.items():
        if key in PROFILE_INT_FIELDS and (not isinstance(value, int) or isinstance(value, bool)):
            problems[key] = "must be an integer"
        elif key in PROFILE_FIELDS and key not in PROFILE_INT_FIELDS and not isinstance(value, str):
            problems[key] = "must be a string"
    if "is_default" in data and not isinstance(data["is_default"], bool):
        problems["is_default"] = "must be true or false"
    if problems:
        raise ApiError(422, "invalid", "Some values are not acceptable.", problems)
    make_default = bool(data.get("is_default"))
    return {k: v for k, v in data.items() if k != "is_default"}, make_default


@bp.get("/profiles")
def list_profiles():
    from cds.profiles.service import all_profiles, user_counts
    counts = user_counts()
    items = [profile_json(p, counts.get(p.id, 0)) for p in all_profiles()]
    return {"items": items, "total": len(items), "page": 1, "per_page": max(1, len(items)), "next": None}


@bp.get("/profiles/<int:profile_id>")
def get_profile(profile_id: int):
    from cds.profiles.service import user_counts
    return profile_json(_profile(profile_id), user_counts().get(profile_id, 0))


@bp.post("/profiles")
def create_profile():
    from cds.profiles.service import save_profile
    data, make_default = _profile_body(body_json())
    if "name" not in data:
        raise ApiError(422, "invalid", "A profile needs a name.", {"name": "required"})
    profile = save_profile(None, data, actor=g.actor, make_default=make_default)  # InvalidProfile: 422
    return profile_json(profile, 0), 201, {"Location": f"/api/v1/profiles/{profile.id}"}


@bp.patch("/profiles/<int:profile_id>")
def update_profile(profile_id: int):
    from cds.profiles.service import save_profile, user_counts
    profile = _profile(profile_id)
    data, make_default = _profile_body(body_json())
    profile = save_profile(profile, data, actor=g.actor, make_default=make_default)  # InvalidProfile: 422
    return profile_json(profile, user_counts().get(profile.id, 0))


@bp.delete("/profiles/<int:profile_id>")
def delete_profile(profile_id: int):
    """?reassign_to=ID moves the profile's users there first; without it, a profile in use is refused."""
    from cds.profiles.service import delete_profile as remove
    profile = _profile(profile_id)
    target = request.args.get("reassign_to")
    reassign = None
    if target not in (None, ""):
        if not target.isdigit() or not 1 <= int(target) <= MAX_ID:
            raise ApiError(400, "bad_request", "reassign_to must be a profile id.")
        reassign = db.session.get(DeploymentProfile, int(target))
        if reassign is None:
            raise ApiError(422, "invalid", f"Profile {target} does not exist.", {"reassign_to": "unknown"})
    remove(profile, reassign_to=reassign, actor=g.actor)  # ProfileInUse: 409, {"users": n}
    return Response(status=204)


# --- connections ------------------------------------------------------------------------

def connection_json(c: Connection) -> dict:
    from cds.connections.service import host_of
    return {"id": c.id, "name": c.name, "kind": c.kind, "url": c.url, "host": host_of(c),
            "username": c.username, "options": _public_options(c.options or {}),
            "sync_interval_minutes": c.sync_interval_minutes, "enabled": c.enabled,
            "verified": c.verified, "verified_at": iso(c.verified_at),
            "token_expires_at": iso(c.token_expires_at), "last_sync_at": iso(c.last_sync_at),
            "last_sync_ok": c.last_sync_ok, "last_sync_message": c.last_sync_message,
            "next_sync_at": iso(c.next_sync_at), "created_at": iso(c.created_at)}


def _public_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if "password" not in k.lower() and "secret" not in k.lower()}


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
    from cds.connections.service import ConnectionSettings
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
    from cds.connections.service import list_connections as rows
    items = [connection_json(c) for c in rows()]
    return {"items": items, "total": len(items), "page": 1, "per_page": max(1, len(items)), "next": None}


@bp.get("/connections/<int:connection_id>")
def get_connection(connection_id: int):
    return connection_json(_connection(connection_id))


@bp.post("/connections")
def create_connection():
    from cds.connections.service import create_connection as create
    data = body_json()
    _require_primary()
    password = data.get("password", "")
    if not isinstance(password, str):
        raise ApiError(422, "invalid", "password must be a string.", {"password": "must be a string"})
    settings = _settings_from(data, None)
    conn = create(settings, password, actor=g.actor)  # ConnectionProblem: 422 with its field errors
    return connection_json(conn), 201, {"Location": f"/api/v1/connections/{conn.id}"}


@bp.post("/connections/<int:connection_id>/authorize")
def reauthorize_connection(connection_id: int):
    """Authorize again: a new token from the source, or a new URL / credentials."""
    from cds.connections.service import reauthorize
    conn = _connection(connection_id)
    data = body_json()
    _require_primary()
    unknown = sorted(set(data) - {"url", "username", "password"})
    if unknown or not all(isinstance(data.get(k, ""), str) for k in ("url", "username", "password")):
        raise ApiError(422, "invalid", "Send url, username and password as strings.",
                       {k: "not settable" for k in unknown} or {"body": "strings expected"})
    conn = reauthorize(conn, data.get("url", conn.url), data.get("username", conn.username),
                       data.get("password") or None, actor=g.actor)
    return connection_json(conn)


@bp.patch("/connections/<int:connection_id>")
def update_connection(connection_id: int):
    from cds.connections.service import update_connection as save
    conn = _connection(connection_id)
    data = body_json()
    settings = _settings_from(data, conn)
    conn = save(conn, settings, actor=g.actor)
    return connection_json(conn)


@bp.delete("/connections/<int:connection_id>")
def delete_connection(connection_id: int):
    from cds.connections.service import delete_connection as remove
    remove(_connection(connection_id), actor=g.actor)
    return Response(status=204)


@bp.post("/connections/<int:connection_id>/sync")
def sync_connection(connection_id: int):
    """Sync now: a job when users were imported from it, else a refresh of its records."""
    from cds.api.resources import job_json
    from cds.connections.service import start_sync
    conn = _connection(connection_id)
    job, refreshed = start_sync(conn, actor=g.actor)  # SourceError: 409
    if job is not None:
        db.session.refresh(job)
        return {"job": job_json(job), "records": None}, 202
    db.session.refresh(conn)
    return {"job": None, "records": {"total": refreshed.total, "added": refreshed.added,
                                     "changed": refreshed.changed, "removed": refreshed.removed}}, 200


# --- CSV import -----------------------------------------------------------------------------

def _csv_request() -> tuple[bytes, object, str]:
    """{"csv": text | "csv_base64": …, "partial", "overwrite", "profile_id", "empty_cells"}."""
    from cds.imports.csv_import import EMPTY_POLICIES, CsvOptions
    data = body_json()
    unknown = sorted(set(data) - {"csv", "csv_base64", "file_name", "partial", "overwrite",
                                  "profile_id", "empty_cells"})
    if unknown:
        raise ApiError(422, "invalid", "Unknown fields: " + ", ".join(unknown) + ".",
                       {k: "unknown field" for k in unknown})
    if isinstance(data.get("csv"), str):
        raw = data["csv"].encode("utf-8")
    elif isinstance(data.get("csv_base64"), str):
        try:
            raw = base64.b64decode(data["csv_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid", "csv_base64 is not valid base64.", {"csv_base64": "bad base64"}) from None
    else:
        raise ApiError(422, "invalid", "Send the file as \"csv\" (text) or \"csv_base64\".",
                       {"csv": "required"})
    problems = {k: "must be true or false" for k in ("partial", "overwrite")
                if k in data and not isinstance(data[k], bool)}
    pid = data.get("profile_id")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or not 1 <= pid <= MAX_ID):
        problems["profile_id"] = "must be a profile id"
    elif pid is not None and db.session.get(DeploymentProfile, pid) is None:
        problems["profile_id"] = "no such profile"
    if "empty_cells" in data and (not isinstance(data["empty_cells"], str)
                                  or data["empty_cells"] not in EMPTY_POLICIES):
        problems["empty_cells"] = "one of: " + ", ".join(EMPTY_POLICIES)
    if problems:
        raise ApiError(422, "invalid", "Some options are not acceptable.", problems)
    options = CsvOptions.from_dict({k: data.get(k) for k in ("partial", "overwrite", "profile_id",
                                                              "empty_cells")})
    name = data.get("file_name") if isinstance(data.get("file_name"), str) else "api.csv"
    return raw, options, name[:200]


def plan_json(plan) -> dict:
    rows = [{"line": r.line, "action": r.action or None, "login_id": r.login_id, "user_id": r.user_id,
             "changed": r.changed, "errors": r.errors} for r in plan.rows if r.errors or r.action != "unchanged"]
    return {
        "columns": plan.columns, "unknown_columns": plan.unknown_columns,
        "ignored_columns": plan.ignored_columns, "missing_columns": plan.missing_columns,
        "notes": plan.notes, "rows": rows[:1000], "rows_total": len(plan.rows),
        "counts": {"create": plan.count("create"), "update": plan.count("update"),
                   "unchanged": plan.count("unchanged"), "errors": plan.error_count},
        "writable": plan.writable,
    }


@bp.post("/imports/csv/preview")
def csv_preview():
    """What an import would do, row by row; nothing is written."""
    from cds.imports.csv_import import CsvProblem, plan_import
    raw, options, _ = _csv_request()
    try:
        plan = plan_import(raw, options)
    except CsvProblem as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    return plan_json(plan)


@bp.post("/imports/csv")
def csv_commit():
    """Import: all-or-nothing (422 with the preview when any row is bad) or partial."""
    from cds.imports.csv_import import CsvProblem, CsvRejected, commit_import
    raw, options, name = _csv_request()
    try:
        result = commit_import(raw, options, actor=g.actor, file_name=name)
    except CsvRejected as exc:
        raise ApiError(422, "invalid", str(exc), plan_json(exc.plan)) from None
    except CsvProblem as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    return {"created": result.created, "updated": result.updated, "unchanged": result.unchanged,
            "skipped": [{"line": r.line, "login_id": r.login_id, "errors": r.errors} for r in result.skipped],
            "login_id_changes": result.login_changes, "message": result.describe()}, 200


# --- audit events ---------------------------------------------------------------------------

def audit_json(e) -> dict:
    return {"id": e.id, "at": iso(e.at), "actor": e.actor, "actor_type": e.actor_type,
            "action": e.action, "user_id": e.user_id, "login_id": e.login_id, "count": e.count,
            "detail": e.detail or {}, "ip": e.ip}


@bp.get("/audit-events")
def list_audit_events():
    from cds.api.resources import page_args
    from cds.audit.service import AuditFilter, list_events
    page, per_page = page_args(default_per_page=100)
    filt = AuditFilter.from_mapping(request.args)  # InvalidAuditQuery: 400
    events, total, shown = list_events(filt, page, per_page)
    items = [audit_json(e) for e in events] if shown == page else []
    return paginated(items, total, page, per_page, "api.list_audit_events", filt.to_args())
