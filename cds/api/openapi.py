"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

Written out here so it says exactly what the API promises (the user properties
come from the field table, cds/users/fields.py, as the API's own checks do); the test suite
validates every API response it receives against it, and schemathesis fuzzes
the API from it in CI.
"""
from __future__ import annotations

from cds.clients import KINDS as CLIENT_KINDS
from cds.users.fields import FIELDS, MAX_SECRET_LENGTH, REQUIRED_FIELDS, USER_SECRETS
from cds.users.query import SORTS
from cds.version import __version__

TS = {"type": ["string", "null"], "format": "date-time"}
STR = {"type": "string"}
NSTR = {"type": ["string", "null"]}
# A user's profile by name, as GET returns it ("profile"), or by id ("profile_id"); both must agree.
PROFILE_NAME = {"type": "string", "description": "The profile's name (case-insensitive); "
                                                 "an alternative to profile_id."}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: dict, required: list[str] | None = None, extra: bool = False) -> dict:
    out = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        out["required"] = required
    return out


def page_of(item: str) -> dict:
    return obj({"items": {"type": "array", "items": ref(item)}, "total": INT, "page": INT,
                "per_page": INT, "next": NSTR}, ["items", "total", "page", "per_page", "next"])


ERROR_STATUSES = {
    "400": "The request is malformed (bad parameters or body).",
    "401": "No valid API token.",
    "403": "The token may not do this (read-only).",
    "404": "No such resource.",
    "409": "Conflicts with the current state.",
    "410": "Gone.",
    "413": "The upload is too large.",
    "415": "The body is not JSON.",
    "422": "The values are not acceptable; details name each field.",
    "429": "Too many requests.",
}


def error(status: str) -> dict:
    return {"description": ERROR_STATUSES[status],
            "content": {"application/json": {"schema": ref("Error")}}}


def ok(schema: dict | None, description: str = "OK", media: str = "application/json") -> dict:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {media: {"schema": schema}}}


def op(summary: str, responses: dict, *, tag: str, params: list | None = None, body: dict | None = None,
       write: bool = False, body_required: bool = True, operation_id: str | None = None) -> dict:
    """One operation. Every operation may answer 401 and 429; writes also 403 and 415."""
    codes = dict(responses)
    codes.setdefault("401", error("401"))
    codes.setdefault("429", error("429"))
    if write:
        codes.setdefault("403", error("403"))
    if body is not None:
        codes.setdefault("400", error("400"))
        codes.setdefault("415", error("415"))
        codes.setdefault("422", error("422"))
    out = {"summary": summary, "tags": [tag], "responses": codes}
    if operation_id:
        out["operationId"] = operation_id
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = {"required": body_required,
                              "content": {"application/json": {"schema": body}}}
    return out


def path_id(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}}


def query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


PAGE_PARAMS = [
    query("page", {"type": "integer", "minimum": 1, "maximum": 100000}, "Page number, from 1."),
    query("per_page", {"type": "integer", "minimum": 1, "maximum": 500}, "Items per page."),
]

SCHEMAS: dict = {
    "Error": obj({"error": STR, "message": STR, "details": {}}, ["error", "message", "details"]),
    "JobProgress": obj({"total": INT, "done": INT, "succeeded": INT, "skipped": INT, "failed": INT,
                        "percent": INT}, ["total", "done", "succeeded", "skipped", "failed", "percent"]),
    "JobProblem": obj({"user_id": {"type": ["integer", "null"]}, "login_id": STR,
                       "outcome": {"enum": ["skipped", "failed"]}, "message": STR}),
    "Job": obj({
        "id": INT, "kind": STR,
        "state": {"enum": ["scheduled", "queued", "running", "done", "failed", "cancelled"]},
        "description": STR, "created_by": NSTR, "created_at": TS, "run_at": TS, "started_at": TS,
        "finished_at": TS, "progress": ref("JobProgress"), "message": NSTR,
        "problems": {"type": "array", "items": ref("JobProblem")},
    }, ["id", "kind", "state", "progress"]),
    "UserFilter": obj({
        "search": STR, "profile": {"type": ["integer", "string"]},
        "source": {"type": "string", "pattern": "^(|manual|csv|c[0-9]+)$"},
        "deployed": {"enum": ["", "yes", "no"]}, "downloaded": {"enum": ["", "yes", "no"]},
        "force": BOOL, "redeploy": BOOL, "send_failed": BOOL, "not_in_source": BOOL,
    }),
    "ActionRequest": {
        "type": "object",
        "description": "Which users (`ids`, or `filter` — `{}` means all users), an optional "
                       "`at` to schedule the action, and action options: `profile_id` for "
                       "assign-profile, `confirm` (\"all\") for deleting more than 100 users.",
        "properties": {
            "ids": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
            "filter": ref("UserFilter"),
            "at": {"type": "string", "description": "ISO 8601; with an offset or Z that instant, "
                   "without one UTC. Only deploy, auto-deploy and force-config can be scheduled; "
                   "the time must be in the future."},
            "profile_id": INT,
            "confirm": STR,
        },
    },
}

# From the field table (cds/users/fields.py): one property per user field.
USER_FIELD_PROPS = {f.name: {"type": "string", "maxLength": f.size, "description": f.label} for f in FIELDS}
SECRET_NAMES = tuple(USER_SECRETS)
PROFILE_PROPS = {
    "name": STR, "description": STR, "client_types": {"type": "string", "description": "Comma-separated: mobile, desktop, web."},
    "mbg_sip_host": STR, "mbg_sip_port": INT, "mbg_sip_transport": {"enum": ["UDP", "TCP", "TLS"]},
    "pbx_sip_host": STR, "pbx_sip_port": INT, "pbx_sip_transport": {"enum": ["UDP", "TCP", "TLS"]},
    "mcs_host": STR, "mcs_port": INT, "voicemail_number": STR, "link_validity_hours": INT,
    "central_email": STR, "email_subject": STR, "email_body": STR,
    "client": {"enum": list(CLIENT_KINDS), "description": "The client the profile's users run."},
    "sip_account": {"enum": ["pbx", "teleworker"],
                    "description": "Which account a SIP client registers with (PBX, or Teleworker via the MBG)."},
    "sip_domain": {"type": "string", "description": "Domain of the SIP address sip:<user>@<domain>."},
    "sip_realm": {"type": "string", "description": "Digest realm of the registrar."},
    "sip_algorithm": {"enum": ["MD5", "SHA-256"], "description": "Digest algorithm of the registrar."},
    "sip_credential": {"enum": ["ha1", "password"],
                       "description": "What the client gets: ha1 (needs the realm) or the password."},
}
SCHEMAS.update({
    "User": obj({
        "id": INT, **USER_FIELD_PROPS, "profile_id": INT, "profile": NSTR,
        "source": {"enum": ["manual", "csv", "connection"]}, "connection_id": {"type": ["integer", "null"]},
        "source_key": NSTR, "deployed_at": TS, "downloaded_at": TS, "force_config": BOOL,
        "redeploy_required": BOOL, "not_in_source": BOOL, "send_error": NSTR, "config_version": INT,
        "secrets": obj({k: BOOL for k in SECRET_NAMES}, list(SECRET_NAMES)),
        "created_at": TS, "updated_at": TS,
    }, ["id", "login_id", "profile_id", "email", "source", "secrets"]),
    "Secrets": {"type": "object", "description": "Write-only: a string sets a secret, null or \"\" clears it, "
                "absent keeps it. Never returned.",
                "properties": {k: {**NSTR, "maxLength": MAX_SECRET_LENGTH} for k in SECRET_NAMES},
                "additionalProperties": False},
    "UserCreate": obj({**USER_FIELD_PROPS, "profile_id": INT, "profile": PROFILE_NAME,
                       "secrets": ref("Secrets")}, list(REQUIRED_FIELDS)),
    "UserUpdate": obj({**USER_FIELD_PROPS, "profile_id": INT, "profile": PROFILE_NAME,
                       "secrets": ref("Secrets")}),
    "Profile": obj({"id": INT, **PROFILE_PROPS, "is_default": BOOL, "is_do_not_deploy": BOOL,
                    "missing": {"type": "array", "items": STR, "description": "What the profile lacks for its "
                                "client kind; Deploy skips its users while this is not empty."},
                    "users": INT, "created_at": TS, "updated_at": TS}, ["id", "name", "is_default"]),
    "ProfileInput": obj({**PROFILE_PROPS, "is_default": BOOL}),
    "DeployPlan": obj({"total": INT, "to_send": INT, "not_sent": {"type": "array", "items": obj(
        {"reason": STR, "count": INT}, ["reason", "count"])}}, ["total", "to_send", "not_sent"]),
    "Connection": obj({
        "id": INT, "name": STR, "kind": {"enum": ["mbg", "mcs", "usa", "ldap"]}, "url": STR, "host": STR,
        "username": STR, "options": {"type": "object"}, "sync_interval_minutes": INT, "enabled": BOOL,
        "verified": BOOL, "verified_at": TS, "token_expires_at": TS, "last_sync_at": TS,
        "last_sync_ok": {"type": ["boolean", "null"]}, "last_sync_message": NSTR, "next_sync_at": TS,
        "created_at": TS}, ["id", "name", "kind", "url"]),
    "ConnectionCreate": obj({"name": STR, "kind": {"enum": ["mbg", "mcs", "usa", "ldap"]}, "url": STR,
                             "username": STR, "password": STR, "sync_interval_minutes": INT,
                             "enabled": BOOL, "options": {"type": "object"}},
                            ["name", "kind", "url", "password"]),
    "ConnectionUpdate": obj({"name": STR, "sync_interval_minutes": INT, "enabled": BOOL,
                             "options": {"type": "object"}}),
    "ConnectionAuthorize": obj({"url": STR, "username": STR, "password": STR}),
    "SyncStarted": obj({"job": {"oneOf": [ref("Job"), {"type": "null"}]},
                        "records": {"oneOf": [obj({"total": INT, "added": INT, "changed": INT, "removed": INT}),
                                              {"type": "null"}]}}, ["job", "records"]),
    "CsvImportRequest": obj({
        "csv": {"type": "string", "description": "The file's text (CSV format of the export)."},
        "csv_base64": {"type": "string", "description": "Or the file's bytes, base64."},
        "file_name": STR, "partial": BOOL, "overwrite": BOOL, "profile_id": {"type": ["integer", "null"]},
        "empty_cells": {"enum": ["keep", "clear"]}}),
    "CsvPreview": obj({
        "columns": {"type": "array", "items": STR}, "unknown_columns": {"type": "array", "items": STR},
        "ignored_columns": {"type": "array", "items": STR}, "missing_columns": {"type": "array", "items": STR},
        "notes": {"type": "array", "items": STR},
        "rows": {"type": "array", "items": obj({"line": INT, "action": NSTR, "login_id": STR,
                                                "user_id": {"type": ["integer", "null"]},
                                                "changed": {"type": "array", "items": STR},
                                                "errors": {"type": "array", "items": STR}})},
        "rows_total": INT,
        "counts": obj({"create": INT, "update": INT, "unchanged": INT, "errors": INT}),
        "writable": BOOL}, ["counts", "rows", "writable"]),
    "CsvResult": obj({"created": INT, "updated": INT, "unchanged": INT,
                      "skipped": {"type": "array", "items": obj({"line": INT, "login_id": STR,
                                                                 "errors": {"type": "array", "items": STR}})},
                      "login_id_changes": {"type": "array", "items": STR}, "message": STR},
                     ["created", "updated", "unchanged", "skipped"]),
    "AuditEvent": obj({"id": INT, "at": TS, "actor": STR, "actor_type": STR, "action": STR,
                       "user_id": {"type": ["integer", "null"]}, "login_id": NSTR,
                       "count": {"type": ["integer", "null"]}, "detail": {"type": "object"}, "ip": NSTR},
                      ["id", "at", "actor", "action"]),
})

USER_FILTER_PARAMS = [
    query("search", STR, "Words that must all appear in a name, number, e-mail, user name, account or login id."),
    query("profile", {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}, "Profile id."),
    query("source", {"type": "string", "pattern": "^(manual|csv|c[0-9]{1,9})$"}, "manual, csv or c<connection id>."),
    query("deployed", {"enum": ["yes", "no"]}, "Sent a deployment e-mail or not."),
    query("downloaded", {"enum": ["yes", "no"]}, "Client downloaded its configuration or not."),
    query("force", {"enum": ["1"]}, "Force config pending."),
    query("redeploy", {"enum": ["1"]}, "Redeploy required (after an ID change)."),
    query("send_failed", {"enum": ["1"]}, "Last send failed."),
    query("not_in_source", {"enum": ["1"]}, "No longer in its source."),
]
SORT_PARAM = query("sort", {"enum": [p + c for c in SORTS for p in ("", "-")]}, "Column, - for descending.")
AUDIT_PARAMS = [
    query("q", STR, "Words in actor, action, login id or address."),
    query("actor", STR, "Exactly this actor."),
    query("action", STR, "An action (user.delete) or a group ending with a dot (user.)."),
    query("user", STR, "A login id or user id."),
    query("since", {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2})?$"}, "From (UTC)."),
    query("until", {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2})?$"}, "To (UTC)."),
]

TAGS = [
    {"name": "users", "description": "The Users table: search, read, create, update, delete."},
    {"name": "actions", "description": "Bulk actions on users; each runs as a job."},
    {"name": "jobs", "description": "Progress and results of bulk actions; cancel scheduled ones."},
    {"name": "profiles", "description": "Deployment profiles."},
    {"name": "connections", "description": "Sources of users (MBG, MiCollab Client Service, Users and Services, LDAP)."},
    {"name": "imports", "description": "CSV import: preview, then import."},
    {"name": "audit", "description": "The audit log."},
]

UID = [path_id("user_id", "User id.")]
PID = [path_id("profile_id", "Profile id.")]
CID = [path_id("connection_id", "Connection id.")]

PATHS: dict = {
    "/users": {
        "get": op("List users (search, filters, sort, pages)", {"200": ok(page_of("User")), "400": error("400")},
                  tag="users", params=USER_FILTER_PARAMS + [SORT_PARAM] + PAGE_PARAMS),
        "post": op("Add a user", {"201": ok(ref("User"), "Created.")}, tag="users", write=True,
                   body=ref("UserCreate")),
    },
    "/users/{user_id}": {
        "get": op("A user (secrets only as set / not set)", {"200": ok(ref("User")), "404": error("404")},
                  tag="users", params=UID),
        "patch": op("Change a user (fields present change; an imported user: only profile_id)", {
            "200": ok(ref("User")), "404": error("404"), "409": error("409")},
            tag="users", write=True, params=UID, body=ref("UserUpdate")),
        "delete": op("Delete a user: links and devices stop working", {
            "204": ok(None, "Deleted."), "404": error("404"), "409": error("409")},
            tag="users", write=True, params=UID),
    },
    "/users/export.csv": {
        "get": op("Export (CSV) of the users matching the filter — never a secret", {
            "200": ok({"type": "string"}, "UTF-8 CSV with BOM.", media="text/csv"), "400": error("400")},
            tag="users", params=USER_FILTER_PARAMS),
    },
    "/profiles": {
        "get": op("List deployment profiles with their user counts", {"200": ok(page_of("Profile"))},
                  tag="profiles"),
        "post": op("Create a profile", {"201": ok(ref("Profile"), "Created.")}, tag="profiles", write=True,
                   body=ref("ProfileInput")),
    },
    "/profiles/{profile_id}": {
        "get": op("A profile", {"200": ok(ref("Profile")), "404": error("404")}, tag="profiles", params=PID),
        "patch": op("Change a profile", {"200": ok(ref("Profile")), "404": error("404")},
                    tag="profiles", write=True, params=PID, body=ref("ProfileInput")),
        "delete": op("Delete a profile (refused while in use unless reassign_to is given)", {
            "204": ok(None, "Deleted."), "400": error("400"), "404": error("404"), "409": error("409"),
            "422": error("422")}, tag="profiles", write=True,
            params=PID + [query("reassign_to", {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                                "Move the profile's users to this profile first.")]),
    },
    "/connections": {
        "get": op("List connections", {"200": ok(page_of("Connection"))}, tag="connections"),
        "post": op("Create a connection (primary token): CDS authorizes with the source first", {
            "201": ok(ref("Connection"), "Created.")}, tag="connections", write=True,
            body=ref("ConnectionCreate")),
    },
    "/connections/{connection_id}": {
        "get": op("A connection (never its credentials)", {"200": ok(ref("Connection")), "404": error("404")},
                  tag="connections", params=CID),
        "patch": op("Change name, interval, enabled, options", {"200": ok(ref("Connection")), "404": error("404")},
                    tag="connections", write=True, params=CID, body=ref("ConnectionUpdate")),
        "delete": op("Delete a connection (its users become manual users)", {
            "204": ok(None, "Deleted."), "404": error("404")}, tag="connections", write=True, params=CID),
    },
    "/connections/{connection_id}/authorize": {
        "post": op("Authorize again (primary token): new token, URL or credentials", {
            "200": ok(ref("Connection")), "404": error("404")}, tag="connections", write=True, params=CID,
            body=ref("ConnectionAuthorize")),
    },
    "/connections/{connection_id}/sync": {
        "post": op("Sync now: a job for its imported users, or a refresh of its records", {
            "200": ok(ref("SyncStarted"), "Records refreshed (no imported users)."),
            "202": ok(ref("SyncStarted"), "A sync job was started."),
            "404": error("404"), "409": error("409")}, tag="connections", write=True, params=CID),
    },
    "/imports/csv/preview": {
        "post": op("Preview a CSV import: every row's action and errors; nothing is written", {
            "200": ok(ref("CsvPreview"))}, tag="imports", write=True, body=ref("CsvImportRequest")),
    },
    "/imports/csv": {
        "post": op("Import a CSV file (all-or-nothing unless partial)", {
            "200": ok(ref("CsvResult"))}, tag="imports", write=True, body=ref("CsvImportRequest")),
    },
    "/audit-events": {
        "get": op("Audit events, newest first", {"200": ok(page_of("AuditEvent")), "400": error("400")},
                  tag="audit", params=AUDIT_PARAMS + PAGE_PARAMS),
    },
    "/users/actions/{action}": {
        "post": op("Run a bulk action on users (as a job)", {
            "202": ok(ref("Job"), "The job was created (queued, or scheduled with `at`)."),
            "404": error("404"),
        }, tag="actions", write=True, body=ref("ActionRequest"), params=[
            {"name": "action", "in": "path", "required": True,
             "schema": {"enum": ["deploy", "auto-deploy", "force-config", "sync", "delete",
                                 "assign-profile"]}}]),
    },
    "/users/actions/deploy/plan": {
        "post": op("What Deploy would do with a selection, before anything is sent", {
            "200": ok(ref("DeployPlan"), "How many users would be sent an e-mail, and how many not and why."),
        }, tag="actions", write=True, body=ref("ActionRequest")),
    },
    "/jobs": {
        "get": op("List jobs, newest first", {"200": ok(page_of("Job")), "400": error("400")},
                  tag="jobs", params=PAGE_PARAMS + [query(
                      "state", {"enum": ["scheduled", "queued", "running", "done", "failed", "cancelled"]},
                      "Only jobs in this state.")]),
    },
    "/jobs/{job_id}": {
        "get": op("A job with its progress and per-user problems", {
            "200": ok(ref("Job")), "404": error("404")}, tag="jobs", params=[path_id("job_id", "Job id.")]),
        "delete": op("Cancel a scheduled or queued job (or stop a running one after its batch)", {
            "200": ok(ref("Job")), "404": error("404"), "409": error("409")},
            tag="jobs", write=True, params=[path_id("job_id", "Job id.")]),
    },
}


def build_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CDS — Client Deployment Service API",
            "version": __version__,
            "description": "Every action of the console, for scripts. Authenticate with "
                           "`Authorization: Bearer <token>` (create one with "
                           "`flask --app app cds create-api-token NAME`). Errors always have the "
                           "shape `{\"error\", \"message\", \"details\"}`.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "tags": TAGS,
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API token (cds_…)."}},
        },
    }
