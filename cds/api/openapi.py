"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

Written out by hand so it says exactly what the API promises; the test suite
validates every API response it receives against it, and schemathesis fuzzes
the API from it in CI.
"""
from __future__ import annotations

from cds import __version__

TS = {"type": ["string", "null"], "format": "date-time"}
STR = {"type": "string"}
NSTR = {"type": ["string", "null"]}
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
            "at": {"type": "string", "format": "date-time"},
            "profile_id": INT,
            "confirm": STR,
        },
    },
}

TAGS = [
    {"name": "users", "description": "The Users table: search, read, create, update, delete."},
    {"name": "actions", "description": "Bulk actions on users; each runs as a job."},
    {"name": "jobs", "description": "Progress and results of bulk actions; cancel scheduled ones."},
]

PATHS: dict = {
    "/users/actions/{action}": {
        "post": op("Run a bulk action on users (as a job)", {
            "202": ok(ref("Job"), "The job was created (queued, or scheduled with `at`)."),
            "404": error("404"),
        }, tag="actions", write=True, body=ref("ActionRequest"), params=[
            {"name": "action", "in": "path", "required": True,
             "schema": {"enum": ["deploy", "auto-deploy", "force-config", "sync", "delete",
                                 "assign-profile"]}}]),
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
