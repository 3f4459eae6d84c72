"""Users >> Import Users: records from the connections, and CSV upload."""
from flask import (Blueprint, Response, current_app, g, redirect, render_template, request,
                   session, url_for)
from werkzeug.exceptions import RequestEntityTooLarge

from cds.extensions import db
from cds.fragments import wants_fragment
from cds.imports.csv_import import (EMPTY_POLICIES, MAX_LISTED_ERRORS, CsvOptions, CsvProblem,
                                    CsvRejected, commit_import, plan_import, rejected_rows_csv,
                                    template_csv)
from cds.imports.service import (PAGE_SIZES, ImportProblem, RecordFilter, connection_choices,
                                 discard_upload, import_and_deploy,
                                 import_records, list_records, parse_record_selection,
                                 read_upload, store_upload)
from cds.jobs.service import JobError
from cds.models import Job
from cds.profiles.service import all_profiles, default_profile
from cds.http import page_number, row_id
from cds.web import toast, write_required

bp = Blueprint("imports", __name__, url_prefix="/import")

SESSION_KEY = "csv_import"
REJECTED_KEY = "csv_rejected"


def _int_arg(name: str, default: int) -> int:
    value = request.args.get(name, "")
    if name == "page":
        return page_number(value, default)
    return int(value) if value.isdigit() and len(value) < 10 else default


@bp.route("")
def index():
    try:
        filt = RecordFilter.from_mapping(request.args)
    except ImportProblem:
        filt = RecordFilter()
    page = list_records(filt, _int_arg("page", 1), _int_arg("per_page", PAGE_SIZES[0]))
    if wants_fragment("records-table"):
        return render_template("imports/_records.html", page=page)
    job = None
    if row_id(request.args.get("job")):
        job = db.session.get(Job, row_id(request.args.get("job")))
    return render_template("imports/page.html", page=page, connections=connection_choices(),
                           profiles=all_profiles(), default_profile=default_profile(),
                           page_sizes=PAGE_SIZES, job=job,
                           view="records", active_tab="import")


@bp.route("/records", methods=["POST"])
@write_required
def import_selected():
    form = request.form
    back = _filter_args(form)
    try:
        selection = parse_record_selection(form)
        deploy = form.get("deploy") == "1"
        run = import_and_deploy if deploy else import_records
        result = run(selection, form.get("profile_id") or None, actor=g.get("actor"))
    except (ImportProblem, JobError) as exc:  # shown on the page it returns to
        db.session.rollback()
        toast(str(exc), "error")
        return redirect(url_for("imports.index", **back))
    message = result.describe()
    if result.skipped:
        shown = "; ".join(f"{who}: {why}" for who, why in result.skipped[:5])
        more = f" (and {len(result.skipped) - 5} more)" if len(result.skipped) > 5 else ""
        message += f" Skipped: {shown}{more}."
    if result.job_id:
        message += " Deployment started for the new users."
    toast(message, "warning" if result.skipped else "success")
    if result.job_id:
        back["job"] = result.job_id
    return redirect(url_for("imports.index", **back))


def _filter_args(form) -> dict:
    """The filter the page showed, to return to it after the import."""
    try:
        return RecordFilter.from_mapping(form).to_dict()
    except ImportProblem:
        return {}


# --- CSV -------------------------------------------------------------------------------

def _csv_page(status: int = 200, **context):
    pending = session.get(SESSION_KEY)
    return render_template("imports/csv.html", profiles=all_profiles(), policies=EMPTY_POLICIES,
                           limit_mb=current_app.config["MAX_UPLOAD_MB"], pending=pending,
                           max_listed=MAX_LISTED_ERRORS, view="csv", active_tab="import",
                           **context), status


@bp.route("/csv")
def csv_page():
    return _csv_page()


@bp.route("/csv/template")
def csv_template():
    return Response(template_csv(), mimetype="text/csv", headers={
        "Content-Disposition": 'attachment; filename="cds-users-template.csv"'})


def _options_from(form) -> CsvOptions:
    pid = form.get("profile_id", "")
    return CsvOptions(partial=form.get("partial") == "1", overwrite=form.get("overwrite") == "1",
                      profile_id=row_id(pid),
                      empty_cells=form.get("empty_cells") if form.get("empty_cells") in EMPTY_POLICIES
                      else "keep")


@bp.route("/csv/preview", methods=["POST"])
@write_required
def csv_preview():
    upload = request.files.get("file")
    options = _options_from(request.form)
    pending = session.get(SESSION_KEY)
    if (upload is None or not upload.filename) and pending:
        # No new file: preview the one already uploaded again, with the options now chosen
        # (e.g. "allow partial import" ticked after seeing the errors).
        try:
            data = read_upload(pending.get("file"))
            plan = plan_import(data, options)
        except ImportProblem as exc:
            session.pop(SESSION_KEY, None)
            return _csv_page(422, problem=str(exc), options=options)
        except CsvProblem as exc:
            return _csv_page(422, problem=f"{pending.get('name')}: {exc}", options=options)
        session[SESSION_KEY] = {**pending, "options": options.to_dict()}
        return _csv_page(200, plan=plan, file_name=pending.get("name"), options=options)
    if upload is None or not upload.filename:
        return _csv_page(422, problem="Choose a CSV file to upload.", options=options)
    data = upload.read()
    if not data:
        return _csv_page(422, problem=f"{upload.filename} is empty.", options=options)
    try:
        plan = plan_import(data, options)
    except CsvProblem as exc:
        return _csv_page(422, problem=f"{upload.filename}: {exc}", options=options)
    old = session.pop(SESSION_KEY, None)
    discard_upload(old and old.get("file"))
    # The file waits in instance/uploads/ (owner-only); the session holds only its name.
    session[SESSION_KEY] = {"file": store_upload(data), "name": upload.filename[:200],
                            "options": options.to_dict()}
    return _csv_page(200, plan=plan, file_name=upload.filename, options=options)


def _rejected_name(file_name: str) -> str:
    stem = (file_name or "users.csv").rsplit(".", 1)[0]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)[:80] or "users"
    return f"{safe}-rejected-rows.csv"


@bp.route("/csv/rejected.csv")
@write_required
def csv_rejected():
    """The rows with errors, with the reason: of the previewed file (``?of=preview``) or
    of the last import, to fix and import again."""
    if request.args.get("of") == "preview":
        pending = session.get(SESSION_KEY)
        try:
            data = read_upload(pending.get("file")) if pending else b""
            if not data:
                raise ImportProblem("There is no previewed file any more; upload it again.")
            options = CsvOptions.from_dict(pending.get("options") or {})
            text = rejected_rows_csv(data, plan_import(data, options).rows)
        except (ImportProblem, CsvProblem) as exc:
            toast(str(exc), "error")
            return redirect(url_for("imports.csv_page"))
        name = pending.get("name", "")
    else:
        rejected = session.get(REJECTED_KEY)
        try:
            text = read_upload(rejected.get("file")).decode("utf-8") if rejected else None
        except ImportProblem:
            text = None
        if text is None:
            toast("The rejected rows of the last import are no longer available.", "error")
            return redirect(url_for("imports.csv_page"))
        name = rejected.get("name", "")
    return Response("\ufeff" + text, mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{_rejected_name(name)}"',
        "Cache-Control": "no-store"})


@bp.route("/csv/commit", methods=["POST"])
@write_required
def csv_commit():
    pending = session.get(SESSION_KEY)
    if not pending:
        toast("There is no previewed file to import; upload it again.", "error")
        return redirect(url_for("imports.csv_page"))
    options = CsvOptions.from_dict(pending.get("options") or {})
    try:
        data = read_upload(pending.get("file"))
        result = commit_import(data, options, actor=g.get("actor"), file_name=pending.get("name", ""))
    except ImportProblem as exc:
        session.pop(SESSION_KEY, None)
        toast(str(exc), "error")
        return redirect(url_for("imports.csv_page"))
    except CsvProblem as exc:
        return _csv_page(422, problem=str(exc), options=options)
    except CsvRejected as exc:
        # Something changed since the preview (e.g. a login id was taken meanwhile).
        return _csv_page(422, problem=str(exc), plan=exc.plan, file_name=pending.get("name"),
                         options=options)
    discard_upload(pending.get("file"))
    session.pop(SESSION_KEY, None)
    old = session.pop(REJECTED_KEY, None)
    discard_upload(old and old.get("file"))
    if result.skipped:
        # Kept (owner-only, pruned after a day) so the skipped rows can be downloaded and fixed.
        session[REJECTED_KEY] = {"file": store_upload(rejected_rows_csv(data, result.skipped).encode("utf-8")),
                                 "name": pending.get("name", "")}
    toast(result.describe(), "warning" if result.skipped else "success")
    return _csv_page(200, result=result, file_name=pending.get("name"), options=options)


@bp.route("/csv/cancel", methods=["POST"])
@write_required
def csv_cancel():
    pending = session.pop(SESSION_KEY, None)
    discard_upload(pending and pending.get("file"))
    toast("CSV import cancelled; nothing was written.", "info")
    return redirect(url_for("imports.csv_page"))


@bp.errorhandler(RequestEntityTooLarge)
def upload_too_large(exc):
    limit = current_app.config["MAX_UPLOAD_MB"]
    size = request.content_length or 0
    got = f" ({size / 2**20:.1f} MB)" if size else ""
    return _csv_page(413, problem=f"The file{got} is larger than the upload limit of {limit} MB. "
                                  f"Split it into smaller files, or raise CDS_MAX_UPLOAD_MB.")
