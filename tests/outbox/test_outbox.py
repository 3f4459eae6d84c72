"""The Outbox as the console shows it: a deploy that only wrote to the Outbox says so,
the Users tab says where e-mails go, each user's messages are linked from the user
page, and the Outbox is searched by recipient."""
from __future__ import annotations

import re

from tests.deploy.test_deploy import make_users


def test_outbox_deploys_say_so_and_are_found_from_the_user_page(app, admin_client):
    ids = make_users(app, 3, prefix="obx")
    page = admin_client.get("/users").get_data(as_text=True)
    assert 'id="outbox-notice"' in page and "not sent to the users" in page
    preview = admin_client.post("/users/actions/auto_deploy/preview", data={"ids": [str(i) for i in ids]})
    assert "written to the Outbox: no SMTP configured" in preview.get_data(as_text=True)
    summary = admin_client.post("/users/actions/deploy", data={"ids": [str(i) for i in ids]}).get_data(as_text=True)
    assert "3 × Written to the Outbox (no SMTP configured): not sent to the user." in summary
    user_page = admin_client.get(f"/users/{ids[1]}").get_data(as_text=True)
    link = re.search(r'id="user-outbox-link" href="([^"]+)"', user_page).group(1).replace("&amp;", "&")
    assert link.endswith("to=obx001@example.com")
    listing = admin_client.get(link).get_data(as_text=True)
    assert "1 message to “obx001@example.com”" in listing
    assert listing.count("/outbox/") >= 1 and "obx000@example.com" not in listing
    # By the name in To: too, ignoring case.
    by_name = admin_client.get("/outbox?to=ANN+OBX+002").get_data(as_text=True)
    assert "obx002@example.com" in by_name and "obx001@example.com" not in by_name
    assert "No message to “nobody@x”" in admin_client.get("/outbox?to=nobody@x").get_data(as_text=True)
