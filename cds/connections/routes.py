"""Configuration >> Connections: the sources users are imported from and synced with."""
from flask import Blueprint, abort, g, redirect, render_template, request, url_for

from cds.connections.forms import (MAPPING_LABELS, AuthorizeForm, ConnectionCreateForm,
                                   ConnectionEditForm, create_defaults, form_data, ldap_defaults)
from cds.connections.service import (ConnectionProblem, ConnectionSettings,
                                     create_connection, delete_connection, get_connection,
                                     host_of, imported_counts, list_connections, reauthorize,
                                     record_counts, start_sync, update_connection,
                                     verify_connection)
from cds.extensions import db
from cds.jobs.service import JobError
from cds.models import CONNECTION_KINDS, Job
from cds.sources import LIMIT_DEFAULTS, SourceError
from cds.http import row_id
from cds.web import primary_required, toast, write_required

bp = Blueprint("connections", __name__, url_prefix="/connections")


def _load(connection_id: int):
    return get_connection(connection_id)  # ConnectionNotFound: 404


@bp.route("")
def index():
    job = None
    if row_id(request.args.get("job")):
        job = db.session.get(Job, row_id(request.args.get("job")))
    return render_template("connections/page.html", connections=list_connections(),
                           kinds=CONNECTION_KINDS, host_of=host_of, imported=imported_counts(),
                           records=record_counts(), job=job, active_tab="connections")


def _render_form(template: str, form, conn=None, status: int = 200, **extra):
    return render_template(template, form=form, conn=conn, kinds=CONNECTION_KINDS,
                           limit_defaults=LIMIT_DEFAULTS, placeholders=ldap_defaults(), mapping_labels=MAPPING_LABELS,
                           active_tab="connections", **extra), status


@bp.route("/new", methods=["GET", "POST"])
@primary_required
def new():
    if request.method == "GET":
        defaults = create_defaults()
        if request.args.get("kind") in CONNECTION_KINDS:
            defaults["kind"] = request.args["kind"]
        return _render_form("connections/form.html", ConnectionCreateForm(data=defaults))
    form = ConnectionCreateForm(request.form)
    if form.validate():
        settings = ConnectionSettings(
            name=form.name.data or "", kind=form.kind.data, url=form.url.data or "",
            username=form.username.data or "",
            sync_interval_minutes=form.sync_interval_minutes.data,
            enabled=form.enabled.data, options=form.options(form.kind.data))
        try:
            conn = create_connection(settings, form.typed_password(), actor=g.get("actor"))
        except ConnectionProblem as exc:
            db.session.rollback()
            form.add_errors(exc.errors)
            form.keep_password()
            return _render_form("connections/form.html", form, status=422, problem=str(exc))
        if not conn.verified:
            toast(f"Connection {conn.name} saved. {conn.last_sync_message} Press Test once the "
                  f"source can be reached.", "warning")
            return redirect(url_for("connections.index"))
        message = f"Connection {conn.name} created and authorized."
        try:
            result = verify_connection(conn)
            toast(f"{message} {result.describe()} They are listed in Import Users.", "success")
        except SourceError as exc:
            toast(f"{message} Reading its users failed: {exc}", "warning")
        return redirect(url_for("connections.index"))
    form.keep_password()
    return _render_form("connections/form.html", form, status=422)


@bp.route("/<int:connection_id>", methods=["GET", "POST"])
def edit(connection_id: int):
    conn = _load(connection_id)
    if request.method == "GET":
        return _render_form("connections/form.html", ConnectionEditForm(data=form_data(conn)), conn)
    if not g.admin.can_write:
        abort(403, "Your account is read-only.")
    form = ConnectionEditForm(request.form)
    if form.validate():
        settings = ConnectionSettings(name=form.name.data or "", kind=conn.kind, url=conn.url,
                                      username=conn.username,
                                      sync_interval_minutes=form.sync_interval_minutes.data,
                                      enabled=form.enabled.data, options=form.options(conn.kind))
        try:
            update_connection(conn, settings, actor=g.get("actor"))
        except ConnectionProblem as exc:
            db.session.rollback()
            form.add_errors(exc.errors)
            return _render_form("connections/form.html", form, conn, 422, problem=str(exc))
        toast(f"Connection {conn.name} saved.", "success")
        return redirect(url_for("connections.index"))
    return _render_form("connections/form.html", form, conn, 422)


@bp.route("/<int:connection_id>/authorize", methods=["GET", "POST"])
@primary_required
def authorize(connection_id: int):
    conn = _load(connection_id)
    if request.method == "GET":
        form = AuthorizeForm(data={"url": conn.url, "username": conn.username})
        return _render_form("connections/authorize.html", form, conn)
    form = AuthorizeForm(request.form)
    try:
        reauthorize(conn, form.url.data or "", form.username.data or "", form.typed_password() or None,
                    actor=g.get("actor"))
    except ConnectionProblem as exc:
        db.session.rollback()
        form.add_errors(exc.errors)
        form.keep_password()
        return _render_form("connections/authorize.html", form, conn, 422, problem=str(exc))
    toast(f"Connection {conn.name} re-authorized.", "success")
    return redirect(url_for("connections.index"))


def _back_to_list(message: str, category: str, **args):
    """The list again, with what happened as a toast (these buttons are plain forms)."""
    toast(message, category)
    return redirect(url_for("connections.index", **args))


@bp.route("/<int:connection_id>/test", methods=["POST"])
@write_required
def test(connection_id: int):
    conn = _load(connection_id)
    name = conn.name
    try:
        result = verify_connection(conn)
    except SourceError as exc:
        return _back_to_list(f"{name}: the test failed. {exc}", "error")
    return _back_to_list(f"{name}: connection works. {result.describe()}", "success")


@bp.route("/<int:connection_id>/sync", methods=["POST"])
@write_required
def sync(connection_id: int):
    conn = _load(connection_id)
    name = conn.name
    try:
        job, result = start_sync(conn, actor=g.get("actor"))
    except SourceError as exc:
        return _back_to_list(f"{name}: reading the source failed; nothing was changed. {exc}", "error")
    except JobError as exc:
        return _back_to_list(str(exc), "error")
    if job is None:
        return _back_to_list(f"{name}: {result.describe()} No users are imported from it yet; import "
                             f"them in Import Users.", "success")
    return _back_to_list(f"{name}: sync started for its imported users.", "info", job=job.id)


@bp.route("/<int:connection_id>/delete", methods=["POST"])
@write_required
def delete(connection_id: int):
    conn = _load(connection_id)
    name = conn.name
    released = delete_connection(conn, actor=g.get("actor"))
    text = f"Connection {name} deleted."
    if released:
        text += (f" The {released:,} user{'s' if released != 1 else ''} imported from it stay, "
                 f"now as manual users.")
    return _back_to_list(text, "success")
