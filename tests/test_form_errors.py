"""Every form that comes back with errors says so in a banner above it, listing each
problem with a link to its field, as well as beside the field."""
from __future__ import annotations

import re

from tests.mail.test_mail import GOOD, csrf

HTMX = {"HX-Request": "true"}


def banner(html: str) -> list[str]:
    match = re.search(r'<div class="form-error form-errors" role="alert">(.*?)</div>', html, re.S)
    assert match, "no error banner"
    return [" ".join(re.sub(r"<[^>]+>", "", li).split()) for li in re.findall(r"<li>(.*?)</li>", match.group(1), re.S)]


def test_error_banners_on_every_form(app, admin_client):
    resp = admin_client.post("/settings/mail", data={**GOOD, "port": "70000", "sender": "nobody",
                                                      **csrf(admin_client)})
    items = banner(resp.get_data(as_text=True))
    assert any(i.startswith("Sender:") for i in items) and any("65535" in i for i in items), items
    assert 'href="#sender"' in resp.get_data(as_text=True)

    resp = admin_client.post("/users/new", headers={**HTMX, "HX-Target": "user-form"}, data={"login_id": "x"})
    items = banner(resp.get_data(as_text=True))
    assert "Lastname is required." in items and any("Login ID must be" in i for i in items)

    resp = admin_client.post("/profiles/new", data={"name": ""})
    assert resp.status_code == 422 and banner(resp.get_data(as_text=True))

    resp = admin_client.post("/settings", headers={**HTMX, "HX-Target": "general-form"},
                             data={"PUBLIC_URL": "nope", "REDIRECT_URL": "http://cds.test", "JOB_RETENTION_DAYS": "30"})
    items = banner(resp.get_data(as_text=True))
    assert items and items[0].startswith("CDS public URL:")

    resp = admin_client.post("/connections/new", data={"kind": "usa", "sync_interval_minutes": "60"})
    items = banner(resp.get_data(as_text=True))
    assert any("name is required" in i for i in items) and any(i.startswith("Password:") for i in items)

    resp = admin_client.post("/settings/template", data={"subject": "{{ nope", "text": "x", "html": "x",
                                                          **csrf(admin_client)})
    assert resp.status_code == 422 and any("Subject template" in i for i in banner(resp.get_data(as_text=True)))
