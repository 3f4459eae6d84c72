"""/api/v1/profiles: deployment profiles."""
from __future__ import annotations

from flask import Response, g, request

from cds.api.blueprint import ApiError, body_json, bp
from cds.api.schema import PROFILE_INT_FIELDS, profile_json
from cds.extensions import db
from cds.http import MAX_ID
from cds.models import DeploymentProfile
from cds.profiles.service import PROFILE_FIELDS, all_profiles, save_profile, user_counts
from cds.profiles.service import delete_profile as remove_profile


def _profile(profile_id: int) -> DeploymentProfile:
    profile = db.session.get(DeploymentProfile, profile_id)
    if profile is None:
        raise ApiError(404, "not_found", f"Deployment profile {profile_id} does not exist.")
    return profile


def _profile_body(data: dict) -> tuple[dict, bool]:
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
    counts = user_counts()
    items = [profile_json(p, counts.get(p.id, 0)) for p in all_profiles()]
    return {"items": items, "total": len(items), "page": 1, "per_page": max(1, len(items)), "next": None}


@bp.get("/profiles/<int:profile_id>")
def get_profile(profile_id: int):
    return profile_json(_profile(profile_id), user_counts().get(profile_id, 0))


@bp.post("/profiles")
def create_profile():
    data, make_default = _profile_body(body_json())
    if "name" not in data:
        raise ApiError(422, "invalid", "A profile needs a name.", {"name": "required"})
    profile = save_profile(None, data, actor=g.actor, make_default=make_default)  # InvalidProfile: 422
    return profile_json(profile, 0), 201, {"Location": f"/api/v1/profiles/{profile.id}"}


@bp.patch("/profiles/<int:profile_id>")
def update_profile(profile_id: int):
    profile = _profile(profile_id)
    data, make_default = _profile_body(body_json())
    profile = save_profile(profile, data, actor=g.actor, make_default=make_default)  # InvalidProfile: 422
    return profile_json(profile, user_counts().get(profile.id, 0))


@bp.delete("/profiles/<int:profile_id>")
def delete_profile(profile_id: int):
    """?reassign_to=ID moves the profile's users there first; without it, a profile in use is refused."""
    profile = _profile(profile_id)
    target = request.args.get("reassign_to")
    reassign = None
    if target not in (None, ""):
        if not target.isdigit() or not 1 <= int(target) <= MAX_ID:
            raise ApiError(400, "bad_request", "reassign_to must be a profile id.")
        reassign = db.session.get(DeploymentProfile, int(target))
        if reassign is None:
            raise ApiError(422, "invalid", f"Profile {target} does not exist.", {"reassign_to": "unknown"})
    remove_profile(profile, reassign_to=reassign, actor=g.actor)  # ProfileInUse: 409, {"users": n}
    return Response(status=204)
