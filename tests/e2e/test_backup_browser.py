"""Settings › Backup in a real browser: the warning, a passphrase mismatch shown inline,
and a protected archive downloaded and readable with its passphrase."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_download_a_protected_backup(signed_in_page, live_server, tmp_path):
    page = signed_in_page
    page.goto(live_server.url + "/settings/backup")
    assert "Without a passphrase the archive holds the key" in page.inner_text(".backup-warning")
    page.screenshot(path="/tmp/cds-backup-page.png", full_page=True)

    page.fill("input[name=passphrase]", "long enough words")
    page.fill("input[name=passphrase_confirm]", "something else")
    page.click("text=Download backup")
    assert "The two passphrases differ." in page.inner_text("#confirm-error")

    page.fill("input[name=passphrase]", "long enough words")
    page.fill("input[name=passphrase_confirm]", "long enough words")
    with page.expect_download() as info:
        page.click("text=Download backup")
    download = info.value
    assert download.suggested_filename.endswith(".cdsbackup")
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    from cds.backup.archive import inspect_backup
    with live_server.app.app_context():
        manifest = inspect_backup(target, "long enough words")
    assert manifest["tables"]["admin_account"]["rows"] == 1
    page.goto(live_server.url + "/settings/backup")
    assert "passphrase" in page.inner_text("table.data")
    assert page.js_errors == []

    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path="/tmp/cds-backup-phone.png", full_page=True)
