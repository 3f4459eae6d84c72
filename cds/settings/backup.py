"""Settings › Backup: the primary administrator downloads a backup archive."""
from __future__ import annotations

from flask import Blueprint, render_template, request, send_file

from cds.backup.create import download_name, last_backups, temporary_backup
from cds.backup.format import BackupError, check_passphrase
from cds.web import primary_required

bp = Blueprint("backup", __name__, url_prefix="/settings/backup")


def _page(errors: dict | None = None, status: int = 200):
    return render_template("settings/backup.html", active_tab="settings", section="backup", errors=errors or {},
                           history=last_backups()), status


@bp.get("")
@primary_required
def index():
    return _page()


@bp.post("")
@primary_required
def download():
    passphrase = request.form.get("passphrase", "")
    errors = {}
    try:
        check_passphrase(passphrase)
    except BackupError as exc:
        errors["passphrase"] = str(exc)
    if passphrase and passphrase != request.form.get("passphrase_confirm", ""):
        errors["passphrase_confirm"] = "The two passphrases differ."
    if errors:
        return _page(errors, 422)
    try:
        with temporary_backup(passphrase or None) as result:
            # Opened before the temporary folder goes; the open file outlives its name.
            archive = open(result.path, "rb")
    except BackupError as exc:
        return _page({"form": str(exc)}, 422)
    return send_file(archive, as_attachment=True, download_name=download_name(result.encrypted),
                     mimetype="application/octet-stream", max_age=0)
