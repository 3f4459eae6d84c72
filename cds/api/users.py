"""/api/v1/users: the Users table without a browser — the users, their export
(users/export.csv) and the bulk actions on a selection (users/actions/…)."""
from __future__ import annotations

from flask import Response, g, request

from cds.api.blueprint import ApiError, body_json, bp, page_args, paginated, refuse_unknown_fields
from cds.api.schema import USER_FIELDS, job_json, user_json
from cds.deploy.service import plan_deploy
from cds.export.service import export_filename, start_export
from cds.extensions import db
from cds.http import csv_download
from cds.jobs.actions import start_action
from cds.models import User, utcnow
from cds.profiles.service import default_profile, find_profile_by_name
from cds.users import service as users
from cds.users.errors import InvalidQuery
from cds.users.fields import SOURCE_OWNED_FIELDS, USER_SECRETS
from cds.users.login_ids import redeploy_after_id_change
from cds.users.query import UserFilter, UserQuery
from cds.users.query import list_users as list_users_page
from cds.users.selection import parse_selection

# URL names of the bulk actions -> job kinds.
ACTION_KINDS = {"deploy": "deploy", "auto-deploy": "auto_deploy", "force-config": "force_config",
                "sync": "sync", "delete": "delete", "assign-profile": "assign_profile"}
# Options an action may take besides the selection and the time (each action reads its own).
ACTION_OPTIONS = {"profile_id", "confirm"}

def _split_body(data: dict, user: User | None) -> tuple[dict, dict]:
    """JSON body -> (values for save_user, secrets). Unknown keys are refused, not ignored."""
    refuse_unknown_fields(data, set(USER_FIELDS) | {"profile_id", "profile", "secrets"})
    bad_types = {k: "must be a string" for k in USER_FIELDS
                 if k in data and not isinstance(data[k], str)}
    if "profile_id" in data and (not isinstance(data["profile_id"], int) or isinstance(data["profile_id"], bool)
                                 or not 1 <= data["profile_id"] <= 2**31 - 1):
        bad_types["profile_id"] = "must be a profile id (integer)"
    if "profile" in data:
        # GET says "profile" (the name): it is accepted back, alone or agreeing with profile_id.
        named = find_profile_by_name(data["profile"]) if isinstance(data["profile"], str) else None
        if not isinstance(data["profile"], str):
            bad_types["profile"] = "must be a profile name (string)"
        elif named is None:
            raise ApiError(422, "invalid", f"There is no profile named {data['profile']!r}.",
                           {"profile": "no such profile"})
        elif "profile_id" in data and data["profile_id"] != named.id:
            raise ApiError(422, "invalid", "profile and profile_id name different profiles.",
                           {"profile": "does not match profile_id"})
        else:
            data = {**data, "profile_id": named.id}
    secrets = data.get("secrets", {})
    if not isinstance(secrets, dict):
        bad_types["secrets"] = "must be an object"
        secrets = {}
    for name, value in secrets.items():
        if name not in USER_SECRETS:
            bad_types[f"secrets.{name}"] = "unknown secret"
        elif value is not None and not isinstance(value, str):
            bad_types[f"secrets.{name}"] = "must be a string, or null to clear it"
    if bad_types:
        raise ApiError(422, "invalid", "Some values have the wrong type.", bad_types)
    # A partial update keeps what it does not name.
    values = {name: data[name] for name in USER_FIELDS if name in data}
    if "profile_id" in data:
        values["profile_id"] = data["profile_id"]
    else:
        values["profile_id"] = user.profile_id if user else default_profile().id
    # "" clears a secret as null does.
    return values, {k: (v or None) for k, v in secrets.items()}


def _get(user_id: int) -> User:
    return users.get_user(user_id)  # NotFound: 404


@bp.get("/users")
def list_users():
    page, per_page = page_args()
    args = request.args.to_dict()
    try:
        UserFilter.from_mapping(args, other_keys=("sort", "page", "per_page"))
        q = UserQuery.from_mapping({**args, "per_page": 50}, default_per_page=50)
    except InvalidQuery as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    q.page, q.per_page = page, per_page
    result = list_users_page(q)
    if result.query.page != page:  # past the last page: an empty page, not the last one again
        return paginated([], result.total, page, per_page, "api.list_users", _args_without_page(args))
    return paginated([user_json(u) for u in result.users], result.total, page, per_page,
                     "api.list_users", _args_without_page(args))


def _args_without_page(args: dict) -> dict:
    return {k: v for k, v in args.items() if k not in ("page", "per_page")}


@bp.get("/users/<int:user_id>")
def get_user(user_id: int):
    return user_json(_get(user_id))


@bp.post("/users")
def create_user():
    values, secrets = _split_body(body_json(), None)
    result = users.save_user(None, values, secrets, actor=g.actor)  # InvalidUser: 422
    return user_json(result.user), 201, {"Location": f"/api/v1/users/{result.user.id}"}


@bp.patch("/users/<int:user_id>")
def update_user(user_id: int):
    user = _get(user_id)
    data = body_json()
    if user.is_imported:
        owned = sorted(set(data) & set(SOURCE_OWNED_FIELDS))
        if owned:
            raise ApiError(409, "conflict", "This user is imported: its source owns these fields "
                           "(only the profile and secrets can change here; Sync updates the rest).",
                           {k: "owned by the source" for k in owned})
    values, secrets = _split_body(data, user)
    result = users.save_user(user, values, secrets, actor=g.actor)  # InvalidUser: 422
    body = user_json(result.user)
    if result.id_changed:
        redeploy_after_id_change(result.user, actor=g.actor)
        body = user_json(db.session.get(User, user_id))
    return body


@bp.delete("/users/<int:user_id>")
def delete_user(user_id: int):
    """Delete one user: the same Delete action as the console, run at once."""
    _get(user_id)
    job = start_action("delete", {"ids": [user_id]}, actor=g.actor, inline=True)
    if job.failed:
        raise ApiError(409, "conflict", "The user could not be deleted.", job_json(job, with_items=True))
    return Response(status=204)


@bp.get("/users/export.csv")
def export_users():
    """The Export (CSV) of the console: same columns, never a secret. Filter by query."""
    try:
        filt = UserFilter.from_mapping(request.args, other_keys=())
    except InvalidQuery as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    _, chunks = start_export({"filter": filt.to_dict()}, actor=g.actor, via="api")
    return csv_download(chunks, export_filename(utcnow()))


# --- bulk actions on a selection ---------------------------------------------------------

@bp.post("/users/actions/<action>")
def user_action(action: str):
    """Start a bulk action; ``start_action`` checks it (its refusals answer 404/422)."""
    kind = ACTION_KINDS.get(action)
    if kind is None:
        raise ApiError(404, "not_found", f"Unknown action {action!r}; one of: {', '.join(ACTION_KINDS)}.")
    data = body_json()
    refuse_unknown_fields(data, {"ids", "filter", "at"} | ACTION_OPTIONS)
    job = start_action(kind, parse_selection(data), params=data, run_at=data.get("at"), actor=g.actor)
    return job_json(job), 202, {"Location": f"/api/v1/jobs/{job.id}"}


@bp.post("/users/actions/deploy/plan")
def deploy_plan():
    """What Deploy would do with the selection: who would be sent an e-mail, who not and
    why (an incomplete profile, Do Not Deploy, no address). Nothing is changed."""
    data = body_json()
    refuse_unknown_fields(data, {"ids", "filter", "at"})
    return plan_deploy(parse_selection(data)).as_dict()
