"""The Deployment Profiles tab: list, create, edit, delete (with reassignment), default."""
from __future__ import annotations

from flask import Blueprint, abort, g, redirect, render_template, request, url_for

from cds.clients import kind_of, profile_problems
from cds.extensions import db
from cds.fragments import go_to, page_or_fragment, wants_fragment
from cds.models import DeploymentProfile
from cds.profiles.forms import DeleteProfileForm, ProfileForm
from cds.profiles.service import (PROFILE_FIELDS, InvalidProfile, ProfileInUse,
                                  all_profiles, delete_profile, get_profile,
                                  save_profile, set_default, user_counts, validate_profile_fields)
from cds.web import current_admin, toast, write_required

bp = Blueprint("profiles", __name__, url_prefix="/profiles")


def _list_context(**extra):
    profiles = all_profiles()
    return dict(profiles=profiles, counts=user_counts(), active_tab="profiles",
                problems={p.id: profile_problems(p) for p in profiles},
                kinds={p.id: kind_of(p) for p in profiles},
                can_write=current_admin().can_write, **extra)


@bp.route("")
def index():
    return render_template("profiles/page.html", **_list_context())


def _load(profile_id: int) -> DeploymentProfile:
    return get_profile(profile_id)  # ProfileNotFound: 404


def _form_data(profile: DeploymentProfile) -> dict:
    data = {name: getattr(profile, name) for name in PROFILE_FIELDS}
    data["client_types"] = profile.client_type_list()
    data["make_default"] = profile.is_default
    return data


def _render_form(form, profile, status=200):
    ctx = dict(form=form, profile=profile, count=user_counts().get(profile.id, 0) if profile else 0,
               can_write=current_admin().can_write, active_tab="profiles",
               # What the saved profile lacks (the form may hold unsaved changes).
               profile_missing=profile_problems(profile) if profile else [],
               kind_label=kind_of(profile).label if profile else "")
    return page_or_fragment("profiles/edit.html", "profiles/_form.html", "profile-form", status, **ctx)


def _save(form, profile, values: dict, make_default: bool, message: str):
    """Save and return to the list, or show the form again with the service's own
    refusals beside the fields (422)."""
    try:
        saved = save_profile(profile, values, actor=g.get("actor"), make_default=make_default)
    except InvalidProfile as exc:
        db.session.rollback()
        form.add_errors(exc.errors)
        return _render_form(form, profile, 422)
    toast(message.format(name=saved.name), "success")
    return go_to(url_for("profiles.index"))


@bp.route("/new", methods=["GET", "POST"])
@write_required
def new():
    form = ProfileForm(request.form if request.method == "POST" else None)
    if request.method == "GET":
        return _render_form(form, None)
    if not form.validate():
        form.add_errors(validate_profile_fields(form.values()))
        return _render_form(form, None, 422)
    return _save(form, None, form.values(), form.make_default.data, "Profile {name} created.")


@bp.route("/<int:profile_id>", methods=["GET", "POST"])
def edit(profile_id: int):
    profile = _load(profile_id)
    if request.method == "GET":
        return _render_form(ProfileForm(data=_form_data(profile)), profile)
    if not current_admin().can_write:
        abort(403, "Your account is read-only.")
    form = ProfileForm(request.form)
    if profile.is_do_not_deploy:
        # The built-in profile: only its name and description.
        values = {"name": form.name.data or profile.name, "description": form.description.data or ""}
        return _save(form, profile, values, False, "Profile {name} saved.")
    if not form.validate():
        form.add_errors(validate_profile_fields(form.values(), profile))
        return _render_form(form, profile, 422)
    return _save(form, profile, form.values(), bool(form.make_default.data), "Profile {name} saved.")


@bp.route("/<int:profile_id>/default", methods=["POST"])
@write_required
def make_default(profile_id: int):
    profile = _load(profile_id)
    set_default(profile, actor=g.get("actor"))  # ProfileError: 409
    toast(f"New users now get the profile {profile.name}.", "success")
    return _list_fragment_or_page()


def _list_fragment_or_page(**extra):
    """The list (its buttons target it, ``profile-list``), or after a plain form the page."""
    if extra or wants_fragment():
        return page_or_fragment("profiles/page.html", "profiles/_list.html", None,
                                **_list_context(**extra))
    return redirect(url_for("profiles.index"))


@bp.route("/<int:profile_id>/delete", methods=["POST"])
@write_required
def delete(profile_id: int):
    """Refused while users are on the profile, with an offer to move them first."""
    profile = _load(profile_id)
    form = DeleteProfileForm(request.form)
    reassign_to = None
    if form.reassign_to.data:
        reassign_to = _load(form.reassign_to.data)
    try:
        moved = delete_profile(profile, reassign_to=reassign_to, actor=g.get("actor"))
    except ProfileInUse as exc:
        db.session.rollback()
        toast(str(exc), "warning")
        others = [p for p in all_profiles() if p.id != profile.id]
        return _list_fragment_or_page(reassign=profile, reassign_count=exc.count, others=others)
    # Any other ProfileError (built-in or default profile): 409, rolled back by the renderer.
    name = profile.name
    if moved:
        toast(f"{moved} user{'s' if moved != 1 else ''} moved to {reassign_to.name}; "
              f"profile {name} deleted.", "success")
    else:
        toast(f"Profile {name} deleted.", "success")
    return _list_fragment_or_page()
