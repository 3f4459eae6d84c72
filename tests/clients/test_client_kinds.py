"""What a profile must have for its client kind, and Deploy skipping users whose profile
lacks it: the job report, the profile pages, the Users tab, the API, the CLI and the
count the Deploy confirmation shows before anything is sent."""
from __future__ import annotations

from sqlalchemy import select

from cds.clients import KINDS, kind_of, profile_problems
from cds.extensions import db
from cds.models import DeploymentProfile, JobItem, User



def fresh_default(app) -> int:
    """The built-in Default profile as a fresh install has it: no servers."""
    from cds.profiles.service import default_profile
    with app.app_context():
        p = default_profile()
        p.pbx_sip_host = p.mbg_sip_host = p.mcs_host = ""
        db.session.commit()
        return p.id


def add_users(app, profile_id, n, prefix="u", email=True):
    with app.app_context():
        ids = []
        for i in range(n):
            u = User(login_id=f"{prefix}{i}", profile_id=profile_id, last_name=f"L{i}",
                     email=f"{prefix}{i}@example.com" if email else "")
            db.session.add(u)
            db.session.flush()
            ids.append(u.id)
        db.session.commit()
        return ids


def test_every_kind_is_one_module_with_the_interface():
    assert set(KINDS) == {"cds-v1", "linphone"}
    for kind in KINDS.values():
        assert kind.label and kind.app_name and kind.instructions and kind.install_links
        link = kind.link.__func__  # each forms its own link
        assert callable(link)
    assert KINDS["linphone"].app_link("https://cds.example/p/T") == "linphone-config:https://cds.example/p/T"
    assert KINDS["cds-v1"].app_link("https://r.example/r/T") == \
        "cds-client://activate?link=https%3A%2F%2Fr.example%2Fr%2FT"


def test_fresh_default_profile_is_incomplete_and_deploy_skips_its_users(app, smtp_server):
    from cds.settings.service import save_settings
    from tests.deploy.test_deploy import deploy
    pid = fresh_default(app)
    with app.app_context():
        save_settings({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp_server.port})
        missing = profile_problems(db.session.get(DeploymentProfile, pid))
        assert any("SIP host" in m for m in missing) and any("MiCollab Client Service" in m for m in missing)
    [uid] = add_users(app, pid, 1)
    job_id = deploy(app, {"ids": [uid]})
    assert smtp_server.messages == []  # nothing sent that the client could not use
    with app.app_context():
        [item] = db.session.scalars(select(JobItem).where(JobItem.job_id == job_id)).all()
        assert item.outcome == "skipped"
        assert "Profile 'Default' is incomplete for CDS client protocol v1" in item.message
        assert "no SIP host" in item.message
        user = db.session.get(User, uid)
        assert user.deployed_at is None and user.send_error is None


def test_linphone_user_without_sip_account_is_skipped_with_the_reason(app, smtp_server):
    from cds.profiles.service import save_profile
    from cds.settings.service import save_settings
    from tests.deploy.test_deploy import deploy
    with app.app_context():
        save_settings({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp_server.port})
        pid = save_profile(None, {"name": "Phones", "client": "linphone", "sip_domain": "example.com",
                                  "sip_realm": "example.com", "pbx_sip_host": "pbx.example.com"}).id
    [uid] = add_users(app, pid, 1)
    job_id = deploy(app, {"ids": [uid]})
    with app.app_context():
        [item] = db.session.scalars(select(JobItem).where(JobItem.job_id == job_id)).all()
    assert item.outcome == "skipped"
    assert item.message == "The user has no PBX SIP user name; has no PBX SIP password (Linphone needs it)."
    assert smtp_server.messages == []


def test_deploy_plan_counts_who_would_be_skipped_and_why(app, admin_client):
    from cds.deploy.service import plan_deploy
    pid = fresh_default(app)
    with app.app_context():
        ready = DeploymentProfile(name="Ready", pbx_sip_host="pbx.example.com", mcs_host="mcs.example.com")
        dnd = db.session.scalar(select(DeploymentProfile).where(DeploymentProfile.is_do_not_deploy))
        db.session.add(ready)
        db.session.commit()
        ready_id, dnd_id = ready.id, dnd.id
    from cds.profiles.service import save_profile
    with app.app_context():
        phones = save_profile(None, {"name": "Phones", "client": "linphone", "sip_domain": "example.com",
                                     "sip_realm": "example.com", "pbx_sip_host": "pbx.example.com"}).id
    ids = add_users(app, pid, 3, "d") + add_users(app, ready_id, 2, "r") + add_users(app, dnd_id, 1, "n") \
        + add_users(app, ready_id, 1, "x", email=False)
    [ok, bare] = add_users(app, phones, 2, "p")
    with app.app_context():
        user = db.session.get(User, ok)
        user.pbx_sip_username = "2001"
        user.set_secret("pbx_sip_password", "S3cret")
        db.session.commit()
        linphone_plan = plan_deploy({"ids": [ok, bare]})
        plan = plan_deploy({"ids": ids})
    assert linphone_plan.total == 2 and linphone_plan.to_send == 1
    assert list(linphone_plan.not_sent.values()) == [1] and "PBX SIP user name" in next(iter(linphone_plan.not_sent))
    assert plan.total == 7 and plan.to_send == 2
    reasons = {r: n for r, n in plan.not_sent.items()}
    assert reasons[next(r for r in reasons if r.startswith("Profile 'Default' is incomplete"))] == 3
    assert reasons['Profile is "Do Not Deploy".'] == 1
    assert reasons[next(r for r in reasons if r.startswith("No e-mail address"))] == 1
    # The page asks the same, for the selection as the Users tab sends it; nothing is written.
    resp = admin_client.get("/users/actions/deploy/plan", query_string={"ids": ids})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["total"] == 7 and body["to_send"] == 2 and sum(r["count"] for r in body["not_sent"]) == 5
    resp = admin_client.get("/users/actions/deploy/plan", query_string={"all_matching": "1", "profile": pid})
    assert resp.get_json()["total"] == 3 and resp.get_json()["to_send"] == 0
    resp = admin_client.get("/users/actions/deploy/plan", query_string={"all_matching": "1", "search": "r"})
    assert resp.status_code == 200  # a search joins the search index: the count still works
    with app.app_context():
        assert all(u.deployed_at is None for u in db.session.scalars(select(User)))


def test_profile_pages_users_tab_api_and_cli_say_what_is_missing(app, admin_client, runner):
    pid = fresh_default(app)
    page = admin_client.get("/profiles").get_data(as_text=True)
    assert 'id="profiles-incomplete"' in page and "incomplete" in page
    assert "Deploy skips its users: no SIP host" in page
    form = admin_client.get(f"/profiles/{pid}").get_data(as_text=True)
    assert 'id="profile-missing"' in form and "no MiCollab Client Service host" in form
    users = admin_client.get("/users").get_data(as_text=True)
    assert 'id="default-profile-incomplete"' in users and "Complete the profile" in users
    api = admin_client.get(f"/api/v1/profiles/{pid}")
    if api.status_code == 200:  # the console session may not open the API: the CLI shows the same
        assert api.get_json()["missing"]
    result = runner.invoke(args=["cds", "profiles", "show", "Default", "--json"])
    assert "no SIP host" in result.output
    listing = runner.invoke(args=["cds", "profiles", "list"]).output
    assert "CDS client protocol v1  INCOMPLETE: no SIP host" in listing
    add_users(app, pid, 2)
    dry = runner.invoke(args=["cds", "deploy", "--all", "--dry-run"])
    assert dry.exit_code == 0 and "0 of 2 users would be sent an e-mail" in dry.output
    assert "not sent: 2 × Profile 'Default' is incomplete" in dry.output

    # Filled in: nothing is missing any more, and the notices go away.
    from cds.profiles.service import save_profile
    with app.app_context():
        save_profile(db.session.get(DeploymentProfile, pid),
                     {"pbx_sip_host": "pbx.example.com", "mcs_host": "mcs.example.com"})
        assert kind_of(db.session.get(DeploymentProfile, pid)).missing(db.session.get(DeploymentProfile, pid)) == {}
    assert 'id="profiles-incomplete"' not in admin_client.get("/profiles").get_data(as_text=True)
    assert 'id="default-profile-incomplete"' not in admin_client.get("/users").get_data(as_text=True)


def test_users_tab_delete_warns_that_linphone_keeps_its_cached_account(app, admin_client):
    assert 'data-delete-note=""' in admin_client.get("/users").get_data(as_text=True)
    from cds.profiles.service import save_profile
    with app.app_context():
        save_profile(None, {"name": "Phones", "client": "linphone", "sip_domain": "example.com",
                            "sip_realm": "example.com", "pbx_sip_host": "pbx.example.com"})
    page = admin_client.get("/users").get_data(as_text=True)
    assert "Linphone keeps the SIP account it has cached" in page


def test_api_deploy_plan(app, client):
    from tests.api_support import ApiClient
    from tests.conftest import make_token
    pid = fresh_default(app)
    ids = add_users(app, pid, 2)
    api = ApiClient(client, make_token(app))
    resp = api.post("/api/v1/users/actions/deploy/plan", json={"ids": ids})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["total"] == 2 and body["to_send"] == 0
    assert body["not_sent"][0]["count"] == 2 and "incomplete" in body["not_sent"][0]["reason"]
    assert api.post("/api/v1/users/actions/deploy/plan", json={"ids": ids, "x": 1}).status_code == 422
    with app.app_context():
        assert all(u.deployed_at is None for u in db.session.scalars(select(User)))


def test_user_page_says_why_deploy_would_not_send(app, admin_client):
    pid = fresh_default(app)
    [uid] = add_users(app, pid, 1)
    page = admin_client.get(f"/users/{uid}").get_data(as_text=True)
    assert 'id="deploy-refusal"' in page and "incomplete for CDS client protocol v1" in page
    from cds.profiles.service import save_profile
    with app.app_context():
        save_profile(db.session.get(DeploymentProfile, pid), {"pbx_sip_host": "pbx.example.com",
                                                              "mcs_host": "mcs.example.com"})
    assert 'id="deploy-refusal"' not in admin_client.get(f"/users/{uid}").get_data(as_text=True)
