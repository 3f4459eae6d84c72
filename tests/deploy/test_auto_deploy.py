"""Auto deploy says what it will do before it sends anything, and does exactly that:
Set Force Config for activated clients, a new e-mail for the others, and no second
e-mail to a user whose link is still valid and unused (it would kill that link)."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from cds.deploy.service import LINK_STILL_OPEN, NO_ADDRESS, SKIP_DO_NOT_DEPLOY, preview_deploy
from cds.extensions import db
from cds.jobs.service import reason_counts
from cds.models import Deployment, DeploymentProfile, Job, User
from tests.mailsink import link_in, parts
from tests.deploy.test_deploy import _activate, deploy, job_items, make_users, use_smtp


def _setup(app, smtp_server, client):
    """user000 activated, user001 mailed and not yet activated, user002 never deployed,
    user003 on Do Not Deploy, user004 without an address, user005 mailed but expired."""
    use_smtp(app, smtp_server)
    ids = make_users(app, 6)
    with app.app_context():
        dnd = db.session.scalar(select(DeploymentProfile).where(DeploymentProfile.is_do_not_deploy.is_(True)))
        db.session.get(User, ids[3]).profile_id = dnd.id
        db.session.get(User, ids[4]).email = ""
        db.session.commit()
    deploy(app, {"ids": [ids[0], ids[1], ids[5]]})
    first = {m[0][0]: link_in(parts(m[1])["text"]) for m in smtp_server.messages}
    _activate(client, first["user000@example.com"])
    with app.app_context():
        db.session.execute(update(Deployment).where(Deployment.user_id == ids[5])
                           .values(expires_at=Deployment.issued_at - timedelta(hours=1)))
        db.session.commit()
    smtp_server.handler.messages.clear()
    return ids, first


def test_preview_and_job_split_the_same_way(app, smtp_server, client):
    ids, first = _setup(app, smtp_server, client)
    with app.app_context():
        p = preview_deploy("auto_deploy", {"ids": ids})
    assert (p.total, p.force_config, p.send) == (6, 1, 2)
    assert p.skipped == {LINK_STILL_OPEN: 1, SKIP_DO_NOT_DEPLOY: 1}
    assert p.failing == {NO_ADDRESS: 1}
    assert not smtp_server.messages  # the preview sends nothing

    job_id = deploy(app, {"ids": ids}, kind="auto_deploy")
    items = job_items(app, job_id)
    assert items["user000"] == ("ok", "Force config set.")
    assert items["user001"] == ("skipped", LINK_STILL_OPEN)
    assert items["user002"] == ("ok", "Sent.") and items["user005"] == ("ok", "Sent.")
    assert items["user003"] == ("skipped", SKIP_DO_NOT_DEPLOY)
    assert items["user004"] == ("failed", NO_ADDRESS)
    assert sorted(smtp_server.handler.recipients()) == ["user002@example.com", "user005@example.com"]
    # The first link of user001 still works.
    resp = client.get(first["user001@example.com"].replace("/r/", "/deploy/"))
    assert resp.status_code == 200
    with app.app_context():
        reasons = reason_counts(db.session.get(Job, job_id))
    assert ("ok", "Force config set.", 1) in reasons and ("ok", "Sent.", 2) in reasons
    assert ("skipped", LINK_STILL_OPEN, 1) in reasons


def test_deploy_still_resends_on_purpose(app, smtp_server, client):
    ids, _ = _setup(app, smtp_server, client)
    with app.app_context():
        p = preview_deploy("deploy", {"ids": ids})
    assert (p.force_config, p.send) == (0, 4)
    assert p.skipped == {SKIP_DO_NOT_DEPLOY: 1} and p.failing == {NO_ADDRESS: 1}


def test_users_tab_preview_lists_the_split(app, admin_client, smtp_server, client):
    ids, _ = _setup(app, smtp_server, client)
    resp = admin_client.post("/users/actions/auto_deploy/preview", data={"ids": [str(i) for i in ids]})
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    assert "1 get Set Force Config" in text and "2 get a new deployment e-mail" in text
    assert "2 skipped" in text and LINK_STILL_OPEN in text and "1 cannot be sent" in text
    assert admin_client.post("/users/actions/export/preview", data={"ids": "1"}).status_code == 404
    summary = admin_client.post("/users/actions/auto_deploy", data={"ids": [str(i) for i in ids]})
    html = summary.get_data(as_text=True)
    assert "Force config set." in html and "2 × Sent." in html and "still valid" in html
    assert "/jobs/" in html  # the box links to its per-user report
