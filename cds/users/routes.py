"""The Users tab: the table, the bulk actions, and the user page."""
from __future__ import annotations

from urllib.parse import urlencode

from flask import (Blueprint, abort, g, render_template, request, session,
                   url_for)

from cds.clients import kind_of, profile_problems
from cds.deploy.service import deploy_refusal, recipient_for
from cds.extensions import db
from cds.fragments import go_to, html_response, page_or_fragment, wants_fragment
from cds.jobs.actions import start_action
from cds.jobs.service import ACTIONS, reason_counts
from cds.mail.transport import MailSettings
from cds.outbox.service import has_messages
from cds.profiles.service import all_profiles, default_profile
from cds.users.errors import InvalidQuery, InvalidUser
from cds.users.fields import FIELDS, USER_SECRETS
from cds.users.forms import ImportedUserForm, UserForm
from cds.users.login_ids import id_change_consequences, redeploy_after_id_change
from cds.users.query import PAGE_SIZES, UserQuery, source_choices, source_label, table_page
from cds.users.selection import parse_selection
from cds.users.service import (deployment_history, get_user, revoke_device, save_user,
                               user_audit_events, user_devices, user_errors)
from cds.web import current_admin, toast, write_required

bp = Blueprint("users", __name__, url_prefix="/users")

PER_PAGE_KEY = "users_per_page"
TABLE_TARGET = "users-table"
USER_TARGET = "user-main"

# The buttons above the table, in the order administrators know; the job kind each one starts.
BULK_ACTIONS = (
    ("sync", "Sync data"),
    ("auto_deploy", "Auto deploy"),
    ("deploy", "Deploy"),
    ("force_config", "Set Force Config"),
    ("export", "Export (CSV)"),
    ("delete", "Delete"),
    ("assign_profile", "Assign profile"),
)
BULK_LABELS = dict(BULK_ACTIONS)


@bp.app_template_filter("query_string")
def query_string(args: dict) -> str:
    """args as a URL's query, encoded as url_for encodes it: the table's 20-odd sort and
    page links are one url_for and this, not 20 route builds."""
    return urlencode([(k, v) for k, v in args.items() if v is not None], safe="!$'()*,/:;?@")


# --- the table -----------------------------------------------------------------------

def _query_from_request() -> UserQuery:
    remembered = session.get(PER_PAGE_KEY, PAGE_SIZES[0])
    try:
        q = UserQuery.from_mapping(request.args, default_per_page=remembered)
    except InvalidQuery as exc:
        toast(f"{exc} Showing the first page of all users instead.", "warning")
        q = UserQuery(per_page=remembered)
    if q.per_page != remembered:
        session[PER_PAGE_KEY] = q.per_page
    return q


@bp.route("")
def index():
    q = _query_from_request()
    page = table_page(q)
    if wants_fragment(TABLE_TARGET):
        resp = html_response(render_template("users/_table.html", page=page))
        if request.htmx.trigger == "user-filters":
            # The filter form sends every field, empty ones too; the address bar gets the
            # short form of the same state.
            resp.headers["HX-Push-Url"] = url_for("users.index", **q.to_args())
        return resp
    admin = current_admin()
    profiles = all_profiles()
    return render_template(
        "users/page.html", page=page, active_tab="users", profiles=profiles,
        uses_outbox=MailSettings.load().uses_outbox,
        incomplete_default=next(((p, profile_problems(p)) for p in profiles
                                 if p.is_default and profile_problems(p)), None),
        # Said before Delete: what an app of the users' client kinds keeps after it.
        delete_notes=sorted({kind_of(p).revoke_note for p in profiles if kind_of(p).revoke_note}),
        sources=source_choices(), bulk_actions=BULK_ACTIONS, page_sizes=PAGE_SIZES,
        schedulable={kind for kind, act in ACTIONS.items() if act.schedulable},
        can_write=admin.can_write)


@bp.route("/actions/<kind>", methods=["POST"])
@write_required
def bulk_action(kind: str):
    """Every bulk button: a job over the selected users (ids, or all matching the filter).
    Refusals (no selection, a time in the past, a missing profile…) come from
    ``start_action`` and are answered as toasts, with the same status as in the API."""
    if kind not in BULK_LABELS or kind == "export":
        abort(404, f"There is no bulk action {kind!r}.")
    job = start_action(kind, parse_selection(request.form), params=request.form,
                       run_at=request.form.get("run_at"), actor=g.actor)
    return render_template("jobs/_progress.html", job=job,
                           reasons=reason_counts(job) if job.finished else [])


# --- adding and editing one user -----------------------------------------------------

def _form_for(user, formdata=None):
    form_class = ImportedUserForm if user is not None and user.is_imported else UserForm
    if user is None:
        form = form_class(formdata=formdata, data={"profile_id": default_profile().id})
    else:
        form = form_class(formdata=formdata, obj=user)
    form.set_profiles(all_profiles())
    return form


def _outbox_link(user) -> str | None:
    """Where this user's messages are when deployments went to the Outbox (no SMTP)."""
    address = recipient_for(user)
    return url_for("outbox.index", to=address) if address and has_messages() else None


def _user_context(user, form, **extra):
    return dict(user=user, form=form, secrets=USER_SECRETS, field_specs=FIELDS, source=source_label(user),
                outbox_link=_outbox_link(user),
                id_change_consequences=None if user.is_imported else id_change_consequences(user),
                history=deployment_history(user), devices=user_devices(user),
                events=user_audit_events(user), can_write=current_admin().can_write,
                kind=kind_of(user.profile), deploy_refusal=deploy_refusal(user), **extra)


def _render_user(user, form, status=200, **extra):
    return page_or_fragment("users/user.html", "users/_user.html", USER_TARGET, status,
                            active_tab="users", **_user_context(user, form, **extra))


def _load_user(user_id: int):
    return get_user(user_id)  # NotFound: 404


@bp.route("/new", methods=["GET", "POST"])
@write_required
def new():
    form = _form_for(None, request.form if request.method == "POST" else None)
    if request.method == "POST":
        if form.validate():
            try:
                result = save_user(None, form.values(), form.secret_changes(), actor=g.get("actor"))
            except InvalidUser as exc:
                form.add_errors(exc.errors)
            else:
                toast(f"User {result.user.display_name} ({result.user.login_id}) added.", "success")
                return go_to(url_for("users.index", search=result.user.login_id))
        status = 422
    else:
        status = 200
    return page_or_fragment("users/new.html", "users/_new_form.html", "user-form", status,
                            form=form, secrets=USER_SECRETS, active_tab="users")


@bp.route("/<int:user_id>", methods=["GET", "POST"])
def detail(user_id: int):
    user = _load_user(user_id)
    if request.method == "GET":
        return _render_user(user, _form_for(user))
    if not current_admin().can_write:
        abort(403, "Your account is read-only.")
    form = _form_for(user, request.form)
    if not form.validate():
        return _render_user(user, form, 422)
    new_id = None if user.is_imported else (form.login_id.data or "").strip()
    if new_id and new_id != user.login_id and request.form.get("confirm_id_change") != new_id:
        # Ask first, saying what will happen: nothing is saved until the administrator confirms.
        errors = user_errors(user, form.values(), form.secret_changes())
        if errors:
            form.add_errors(errors)
            return _render_user(user, form, 422)
        return _render_user(user, form, confirm_id_change=new_id)
    try:
        result = save_user(user, form.values(), form.secret_changes(), actor=g.get("actor"))
    except InvalidUser as exc:
        db.session.rollback()
        form.add_errors(exc.errors)
        return _render_user(user, form, 422)
    redeploy_job = None
    if result.id_changed:
        redeploy_job = redeploy_after_id_change(user, actor=g.get("actor"))
        toast(f"ID changed from {result.old_login_id} to {user.login_id}: the app must be factory "
              f"reset and redeployed.", "warning")
    elif result.changed:
        toast("Saved.", "success")
    else:
        toast("Nothing changed.", "info")
    return _render_user(user, _form_for(user), id_change=result.old_login_id,
                        redeploy_job=redeploy_job)


@bp.route("/<int:user_id>/devices/<int:device_id>/revoke", methods=["POST"])
@write_required
def revoke(user_id: int, device_id: int):
    user = _load_user(user_id)
    device = revoke_device(user, device_id, actor=g.get("actor"))  # NotFound: 404, UserError: 409
    note = kind_of(user.profile).revoke_note
    toast(f"Device {device.platform or ''} {device.device_id or ''} revoked: it can no longer "
          f"fetch this user's configuration.".replace("  ", " ") + (f" {note}" if note else ""), "success")
    return _render_user(user, _form_for(user))
