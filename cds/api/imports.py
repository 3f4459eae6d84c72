"""/api/v1/imports/csv: the CSV import — a preview of every row, then the import."""
from __future__ import annotations

import base64
import binascii

from flask import g

from cds.api.blueprint import ApiError, body_json, bp, refuse_unknown_fields
from cds.api.schema import import_plan_json
from cds.extensions import db
from cds.http import MAX_ID
from cds.imports.csv_import import EMPTY_POLICIES, CsvOptions, CsvProblem, CsvRejected, commit_import, plan_import
from cds.models import DeploymentProfile


def _csv_request() -> tuple[bytes, object, str]:
    """{"csv": text | "csv_base64": …, "partial", "overwrite", "profile_id", "empty_cells"}."""
    data = body_json()
    refuse_unknown_fields(data, {"csv", "csv_base64", "file_name", "partial", "overwrite", "profile_id",
                                 "empty_cells"})
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


@bp.post("/imports/csv/preview")
def csv_preview():
    """What an import would do, row by row; nothing is written."""
    raw, options, _ = _csv_request()
    try:
        plan = plan_import(raw, options)
    except CsvProblem as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    return import_plan_json(plan)


@bp.post("/imports/csv")
def csv_commit():
    """Import: all-or-nothing (422 with the preview when any row is bad) or partial."""
    raw, options, name = _csv_request()
    try:
        result = commit_import(raw, options, actor=g.actor, file_name=name)
    except CsvRejected as exc:
        raise ApiError(422, "invalid", str(exc), import_plan_json(exc.plan)) from None
    except CsvProblem as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    return {"created": result.created, "updated": result.updated, "unchanged": result.unchanged,
            "skipped": [{"line": r.line, "login_id": r.login_id, "errors": r.errors} for r in result.skipped],
            "login_id_changes": result.login_changes, "message": result.describe()}, 200
