"""The Users tab through the Flask test client: finding, selecting, adding, editing."""
from __future__ import annotations

import re
from datetime import timedelta


from cds.extensions import db
from cds.models import (AuditEvent, ClientDevice, Connection, Deployment, DeploymentProfile, Job,
                        RedirectEntry, User, utcnow)
from cds.profiles.service import default_profile

HTMX_TABLE = {"HX-Request": "true", "HX-Target": "users-table"}
HTMX = {"HX-Request": "true"}


def add_users(app, specs):
    """specs: dicts of User fields; login_id defaults to u<n>. Returns the ids."""
    with app.app_context():
        profile = default_profile()
        ids = []
        for n, spec in enumerate(specs):
            values = {"login_id": f"u{n:03d}", "last_name": f"Last{n:03d}",
                      "email": f"u{n}@example.com", **spec}
            if "profile" not in values and "profile_id" not in values:
                values["profile"] = profile
            user = User(**values)
            db.session.add(user)
            db.session.flush()
            ids.append(user.id)
        db.session.commit()
        return ids


def logins(resp) -> list[str]:
    """The rows shown, in order, by their e-mail cell."""
    html = resp.get_data(as_text=True)
    return re.findall(r'<td class="email" title="[^"]*">([^<]*)</td>', html)


def table(client, query=""):
    resp = client.get("/users" + query, headers=HTMX_TABLE)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp


# --- finding users --------------------------------------------------------------------

def test_full_page_and_table_fragment_share_the_table(app, admin_client):
    add_users(app, [{}] * 3)
    page = admin_client.get("/users").get_data(as_text=True)
    fragment = table(admin_client).get_data(as_text=True)
    assert "<html" in page and "<html" not in fragment
    assert 'id="users-table"' in page and 'id="users-table"' not in fragment
    for header in ("Profile", "Firstname", "Lastname", "Number", "MBG SIP User name",
                   "MiCollab Client Service Account", "Email address", "Deployed", "Downloaded"):
        assert f">{header}" in fragment
    assert "<strong>3</strong> users" in fragment


def test_search_matches_every_searched_field_case_insensitively(app, admin_client):
    add_users(app, [
        {"first_name": "Anna", "last_name": "Müller", "email": "anna@example.com"},
        {"first_name": "Ben", "last_name": "Schmidt", "number": "+44 20 7946 0001", "email": "ben@example.com"},
        {"first_name": "Carla", "last_name": "Weber", "mbg_sip_username": "tw-carla", "email": "c@example.com"},
        {"first_name": "David", "last_name": "Koch", "mcs_account": "dkoch@MCS.local", "email": "d@example.com"},
        {"first_name": "Emma", "last_name": "Wolf", "pbx_sip_username": "dev-4711", "email": "e@example.com"},
        {"first_name": "Felix", "last_name": "Klein", "login_id": "fklein-ID", "email": "felix@sales.example.org"},
    ])
    assert logins(table(admin_client, "?search=MÜLLER")) == ["anna@example.com"]
    assert logins(table(admin_client, "?search=müll")) == ["anna@example.com"]
    assert logins(table(admin_client, "?search=SCHMI")) == ["ben@example.com"]
    assert logins(table(admin_client, "?search=7946")) == ["ben@example.com"]
    assert logins(table(admin_client, "?search=TW-car")) == ["c@example.com"]
    assert logins(table(admin_client, "?search=mcs.LOCAL")) == ["d@example.com"]
    assert logins(table(admin_client, "?search=4711")) == ["e@example.com"]
    assert logins(table(admin_client, "?search=fklein-i")) == ["felix@sales.example.org"]
    assert logins(table(admin_client, "?search=sales.example")) == ["felix@sales.example.org"]
    # Every word must match (in any field); short words work too.
    assert logins(table(admin_client, "?search=anna+example")) == ["anna@example.com"]
    assert logins(table(admin_client, "?search=em+wo")) == ["e@example.com"]
    assert logins(table(admin_client, "?search=nobody-like-this")) == []
    # LIKE wildcards are plain characters in a search.
    assert logins(table(admin_client, "?search=%25")) == []
    assert logins(table(admin_client, "?search=_")) == []


def test_search_index_follows_changes_and_deletes(app, admin_client):
    ids = add_users(app, [{"last_name": "Oldname", "email": "x@example.com"}])
    assert logins(table(admin_client, "?search=oldname")) == ["x@example.com"]
    with app.app_context():
        db.session.get(User, ids[0]).last_name = "Newname"
        db.session.commit()
    assert logins(table(admin_client, "?search=oldname")) == []
    assert logins(table(admin_client, "?search=newname")) == ["x@example.com"]
    with app.app_context():
        db.session.delete(db.session.get(User, ids[0]))
        db.session.commit()
    assert logins(table(admin_client, "?search=newname")) == []


def test_each_filter(app, admin_client):
    now = utcnow()
    with app.app_context():
        sales = DeploymentProfile(name="Sales")
        conn = Connection(name="MBG Berlin", kind="mbg", url="https://mbg.example.com")
        db.session.add_all([sales, conn])
        db.session.commit()
        sales_id, conn_id = sales.id, conn.id
    add_users(app, [
        {"email": "plain@x.com"},
        {"email": "sales@x.com", "profile_id": sales_id},
        {"email": "csv@x.com", "source": "csv"},
        {"email": "conn@x.com", "source": "connection", "connection_id": conn_id, "source_key": "k1"},
        {"email": "deployed@x.com", "deployed_at": now},
        {"email": "downloaded@x.com", "deployed_at": now, "downloaded_at": now},
        {"email": "force@x.com", "force_config": True},
        {"email": "redeploy@x.com", "redeploy_required": True},
        {"email": "failed@x.com", "send_error": "550 no such mailbox"},
        {"email": "gone@x.com", "not_in_source": True},
    ])
    everyone = set(logins(table(admin_client)))
    assert len(everyone) == 10

    def shown(query):
        return set(logins(table(admin_client, query)))

    assert shown(f"?profile={sales_id}") == {"sales@x.com"}
    assert shown("?source=csv") == {"csv@x.com"}
    assert shown(f"?source=c{conn_id}") == {"conn@x.com"}
    assert shown("?source=manual") == everyone - {"csv@x.com", "conn@x.com"}
    assert shown("?deployed=yes") == {"deployed@x.com", "downloaded@x.com"}
    assert shown("?deployed=no") == everyone - {"deployed@x.com", "downloaded@x.com"}
    assert shown("?downloaded=yes") == {"downloaded@x.com"}
    assert shown("?downloaded=no") == everyone - {"downloaded@x.com"}
    assert shown("?force=1") == {"force@x.com"}
    assert shown("?redeploy=1") == {"redeploy@x.com"}
    assert shown("?send_failed=1") == {"failed@x.com"}
    assert shown("?not_in_source=1") == {"gone@x.com"}
    assert shown("?deployed=yes&downloaded=no") == {"deployed@x.com"}
    # The row shows its state as badges and its source compactly.
    html = table(admin_client, "?send_failed=1").get_data(as_text=True)
    assert "send failed" in html and "550 no such mailbox" in html
    assert ">MBG Berlin<" in table(admin_client, f"?source=c{conn_id}").get_data(as_text=True)


def test_a_bad_filter_is_reported_not_a_crash(admin_client):
    resp = admin_client.get("/users?deployed=maybe")
    assert resp.status_code == 200
    assert "deployed must be yes or no" in resp.get_data(as_text=True)


def test_sort_by_every_column_is_stable(app, admin_client):
    with app.app_context():
        other = DeploymentProfile(name="Alpha")
        db.session.add(other)
        db.session.commit()
        alpha = other.id
    now = utcnow()
    add_users(app, [
        {"email": "c@x.com", "first_name": "Zoe", "last_name": "Same", "number": "300",
         "mbg_sip_username": "b", "mcs_account": "c", "deployed_at": now - timedelta(days=1)},
        {"email": "a@x.com", "first_name": "Adam", "last_name": "Same", "number": "100",
         "mbg_sip_username": "c", "mcs_account": "a", "profile_id": alpha, "downloaded_at": now},
        {"email": "b@x.com", "first_name": "Mia", "last_name": "Same", "number": "200",
         "mbg_sip_username": "a", "mcs_account": "b", "deployed_at": now},
    ])
    assert logins(table(admin_client, "?sort=last_name")) == ["c@x.com", "a@x.com", "b@x.com"]  # ties: by id
    assert logins(table(admin_client, "?sort=-last_name")) == ["b@x.com", "a@x.com", "c@x.com"]
    assert logins(table(admin_client, "?sort=first_name")) == ["a@x.com", "b@x.com", "c@x.com"]
    assert logins(table(admin_client, "?sort=number")) == ["a@x.com", "b@x.com", "c@x.com"]
    assert logins(table(admin_client, "?sort=-number")) == ["c@x.com", "b@x.com", "a@x.com"]
    assert logins(table(admin_client, "?sort=mbg_sip_username")) == ["b@x.com", "c@x.com", "a@x.com"]
    assert logins(table(admin_client, "?sort=mcs_account")) == ["a@x.com", "b@x.com", "c@x.com"]
    assert logins(table(admin_client, "?sort=email")) == ["a@x.com", "b@x.com", "c@x.com"]
    assert logins(table(admin_client, "?sort=profile")) == ["a@x.com", "c@x.com", "b@x.com"]
    assert logins(table(admin_client, "?sort=deployed&deployed=yes")) == ["c@x.com", "b@x.com"]
    assert logins(table(admin_client, "?sort=-deployed&deployed=yes")) == ["b@x.com", "c@x.com"]
    assert logins(table(admin_client, "?sort=downloaded&downloaded=yes")) == ["a@x.com"]
    # The sorted header says so, and links to the other direction.
    html = table(admin_client, "?sort=first_name").get_data(as_text=True)
    assert 'aria-sort="ascending"' in html and "sort=-first_name" in html
    assert admin_client.get("/users?sort=password").status_code == 200  # refused politely


def test_pagination_and_remembered_page_size(app, admin_client):
    add_users(app, [{"email": f"p{n:03d}@x.com", "last_name": f"L{n:03d}"} for n in range(120)])
    first = logins(table(admin_client, "?per_page=50"))
    second = logins(table(admin_client, "?per_page=50&page=2"))
    third = logins(table(admin_client, "?per_page=50&page=3"))
    assert len(first) == 50 and len(second) == 50 and len(third) == 20
    assert first + second + third == [f"p{n:03d}@x.com" for n in range(120)]
    html = table(admin_client, "?per_page=50&page=2").get_data(as_text=True)
    assert "51–100 of 120" in html and "Page 2 of 3" in html
    # A page past the end shows the last page.
    assert logins(table(admin_client, "?page=99")) == third
    # The page size is remembered for the next visit.
    assert len(logins(table(admin_client, "?per_page=100"))) == 100
    assert len(logins(table(admin_client))) == 100
    assert 'value="100" selected' in admin_client.get("/users").get_data(as_text=True)
    assert admin_client.get("/users?per_page=7").status_code == 200  # not a choice: refused politely


def test_filter_form_requests_push_the_short_url(app, admin_client):
    resp = admin_client.get("/users?search=ann&profile=&source=&deployed=&sort=last_name&per_page=50",
                            headers={**HTMX_TABLE, "HX-Trigger": "user-filters"})
    assert resp.headers["HX-Push-Url"] == "/users?search=ann&per_page=50"


# --- selecting and bulk actions ---------------------------------------------------------

def test_select_all_matching_resolves_to_the_filter_server_side(app, admin_client):
    from cds.users.selection import parse_selection, selection_query
    now = utcnow()
    ids = add_users(app, [{"deployed_at": now if n % 2 else None, "first_name": "Ann" if n < 60 else "Bob"}
                          for n in range(130)])
    with app.app_context():
        profile = DeploymentProfile(name="Sales")
        db.session.add(profile)
        db.session.commit()
        sales = profile.id
    # The browser sends the filter and all_matching=1 (and the ids it happens to show).
    resp = admin_client.post("/users/actions/assign_profile", headers=HTMX, data={
        "all_matching": "1", "deployed": "no", "search": "ann", "profile_id": str(sales),
        "ids": [str(i) for i in ids[:5]]})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    html = resp.get_data(as_text=True)
    assert 'class="job-progress"' in html and "30 succeeded" in html
    expected = {ids[n] for n in range(60) if n % 2 == 0}
    with app.app_context():
        on_sales = set(db.session.scalars(db.select(User.id).where(User.profile_id == sales)))
        job = db.session.scalar(db.select(Job))
        assert job.params["selection"] == {"filter": {"search": "ann", "deployed": "no"}}
        assert set(db.session.scalars(selection_query(job.params["selection"]).with_only_columns(User.id))) \
            == expected
        assert db.session.scalar(db.select(AuditEvent).where(AuditEvent.action == "user.assign_profile")).count == 30
        from werkzeug.datastructures import MultiDict
        assert parse_selection(MultiDict({"ids": ["3", "1", "3"]})) == {"ids": [1, 3]}
    assert on_sales == expected


def test_assign_profile_to_selected_ids_bumps_config_version(app, admin_client):
    ids = add_users(app, [{}, {}, {}])
    with app.app_context():
        profile = DeploymentProfile(name="Support")
        db.session.add(profile)
        db.session.commit()
        support = profile.id
    resp = admin_client.post("/users/actions/assign_profile", headers=HTMX,
                             data={"ids": [str(ids[0]), str(ids[2])], "profile_id": str(support)})
    assert "2 succeeded" in resp.get_data(as_text=True)
    with app.app_context():
        users = {u.id: u for u in db.session.scalars(db.select(User))}
        assert users[ids[0]].profile_id == support and users[ids[0]].config_version == 2
        assert users[ids[1]].profile_id != support and users[ids[1]].config_version == 1
    # Again: already there, reported as skipped with the reason.
    again = admin_client.post("/users/actions/assign_profile", headers=HTMX,
                              data={"ids": [str(ids[0])], "profile_id": str(support)}).get_data(as_text=True)
    assert "1 skipped" in again and "Already on Support" in again


def test_bulk_action_errors_are_shown(app, admin_client):
    # Refused input is 422 here as in the API (the same refusal, the same status).
    ids = add_users(app, [{}])
    resp = admin_client.post("/users/actions/assign_profile", headers=HTMX, data={"profile_id": "1"})
    assert resp.status_code == 422 and "No users are selected" in resp.get_data(as_text=True)
    assert resp.headers["HX-Retarget"] == "#toasts"
    resp = admin_client.post("/users/actions/assign_profile", headers=HTMX,
                             data={"ids": [str(ids[0])], "profile_id": "99999"})
    assert resp.status_code == 422 and "Choose the profile" in resp.get_data(as_text=True)
    assert admin_client.post("/users/actions/launch_rockets", headers=HTMX,
                             data={"ids": [str(ids[0])]}).status_code == 404
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(Job.id))) == 0


def test_every_bulk_button_has_its_action_registered(app, admin_client):
    from cds.jobs.service import ACTIONS
    from cds.users.routes import BULK_ACTIONS
    assert {kind for kind, _ in BULK_ACTIONS} - {"export"} <= set(ACTIONS)


def test_deploy_at_schedules_the_job(app, admin_client):
    ids = add_users(app, [{}])
    when = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    resp = admin_client.post("/users/actions/deploy", headers=HTMX,
                             data={"ids": [str(ids[0])], "run_at": when})
    assert resp.status_code == 200 and "scheduled" in resp.get_data(as_text=True)
    with app.app_context():
        job = db.session.scalar(db.select(Job))
        assert job.state == "scheduled" and job.run_at.strftime("%Y-%m-%dT%H:%M:%S.000Z") == when
    past = admin_client.post("/users/actions/deploy", headers=HTMX,
                             data={"ids": [str(ids[0])], "run_at": "2001-01-01T00:00:00Z"})
    assert past.status_code == 422 and "in the future" in past.get_data(as_text=True)


def test_bulk_buttons_are_hidden_for_read_only(app, readonly_client):
    add_users(app, [{}])
    html = readonly_client.get("/users").get_data(as_text=True)
    assert 'data-bulk="export"' in html
    for kind in ("sync", "auto_deploy", "deploy", "force_config", "delete", "assign_profile"):
        assert f'data-bulk="{kind}"' not in html
    assert "Add user" not in html
    assert readonly_client.post("/users/actions/assign_profile", data={"ids": ["1"]}).status_code == 403


def test_bulk_buttons_start_disabled_for_writers(app, admin_client):
    html = admin_client.get("/users").get_data(as_text=True)
    for kind in ("sync", "auto_deploy", "deploy", "force_config", "export", "delete", "assign_profile"):
        assert re.search(rf'data-bulk="{kind}"[^>]*disabled', html), kind


# --- adding and editing ------------------------------------------------------------------

def form_data(**values):
    data = {"login_id": "jdoe", "profile_id": "", "first_name": "Jane", "last_name": "Doe",
            "number": "+44 20 7946 0000", "pbx_number": "4711", "pbx_sip_username": "4711",
            "mbg_sip_username": "jdoe-tw", "mcs_account": "jdoe@mcs", "email": "jane@example.com"}
    data.update(values)
    return data


def test_add_user_validation_errors_keep_what_was_typed(app, admin_client):
    add_users(app, [{"login_id": "taken"}])
    with app.app_context():
        profile_id = str(default_profile().id)
    resp = admin_client.post("/users/new", headers={**HTMX, "HX-Target": "user-form"}, data=form_data(
        login_id="x", profile_id=profile_id, last_name="", email="jane-at-example", number="12ab",
        voicemail_pin="482913"))
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    assert "<html" not in html and 'id="user-form"' in html
    assert "Login ID must be 2 to 113 characters" in html
    assert "Lastname is required." in html
    assert "not a valid e-mail address" in html
    assert "Number may hold only digits" in html
    assert 'value="jane-at-example"' in html and 'value="Jane"' in html  # kept
    assert "482913" not in html  # a typed secret is not echoed back
    resp = admin_client.post("/users/new", headers=HTMX, data=form_data(login_id="taken", profile_id=profile_id))
    assert resp.status_code == 422 and "is already used by" in resp.get_data(as_text=True)
    # Another case is the same ID; the message names who has it.
    resp = admin_client.post("/users/new", headers=HTMX, data=form_data(login_id="TAKEN", profile_id=profile_id))
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422 and "(taken)" in html and "differ only in upper/lower case" in html
    resp = admin_client.post("/users/new", headers=HTMX, data=form_data(profile_id="99999"))
    assert resp.status_code == 422 and "Not a valid choice" in resp.get_data(as_text=True)
    resp = admin_client.post("/users/new", headers=HTMX, data=form_data(login_id="y" * 114, profile_id=profile_id))
    assert resp.status_code == 422 and "Login ID is longer than 113 characters" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(User.id))) == 1  # nothing written


def test_add_user_then_see_the_row(app, admin_client):
    with app.app_context():
        profile_id = str(default_profile().id)
    resp = admin_client.post("/users/new", headers=HTMX, data=form_data(
        profile_id=profile_id, voicemail_pin="482913", mcs_password="Secret-MCS-pw"))
    assert resp.status_code == 204 and resp.headers["HX-Redirect"] == "/users?search=jdoe"
    page = admin_client.get("/users?search=jdoe").get_data(as_text=True)
    assert "jane@example.com" in page and "added" in page
    with app.app_context():
        user = db.session.scalar(db.select(User).where(User.login_id == "jdoe"))
        assert user.number == "+44 20 7946 0000" and user.source == "manual"
        assert user.get_secret("voicemail_pin") == "482913" and user.get_secret("mcs_password") == "Secret-MCS-pw"
        assert not user.has_secret("pbx_sip_password")
        event = db.session.scalar(db.select(AuditEvent).where(AuditEvent.action == "user.create"))
        assert event.actor == "alice" and event.login_id == "jdoe"
        assert "482913" not in str(event.detail) and "Secret-MCS-pw" not in str(event.detail)


def test_secrets_are_write_only(app, admin_client):
    ids = add_users(app, [{"login_id": "jdoe"}])
    with app.app_context():
        user = db.session.get(User, ids[0])
        user.set_secret("voicemail_pin", "482913")
        user.set_secret("teleworker_sip_password", "Tw-Secret-99")
        db.session.commit()
        profile_id = str(user.profile_id)
    html = admin_client.get(f"/users/{ids[0]}").get_data(as_text=True)
    assert "482913" not in html and "Tw-Secret-99" not in html
    assert html.count(">set</span>") == 2 and html.count(">not set</span>") == 2
    # Saving without touching the secrets keeps them; "Clear" clears one; a new value replaces.
    data = form_data(login_id="jdoe", profile_id=profile_id, email="u0@example.com", last_name="Last000")
    admin_client.post(f"/users/{ids[0]}", headers=HTMX, data=data)
    with app.app_context():
        user = db.session.get(User, ids[0])
        assert user.get_secret("voicemail_pin") == "482913"
    resp = admin_client.post(f"/users/{ids[0]}", headers=HTMX,
                             data={**data, "voicemail_pin_clear": "y", "teleworker_sip_password": "New-Tw-1"})
    assert resp.status_code == 200
    assert "New-Tw-1" not in resp.get_data(as_text=True)
    with app.app_context():
        user = db.session.get(User, ids[0])
        assert not user.has_secret("voicemail_pin")
        assert user.get_secret("teleworker_sip_password") == "New-Tw-1"
        details = [e.detail for e in db.session.scalars(db.select(AuditEvent))]
        assert "New-Tw-1" not in str(details) and "482913" not in str(details)
    both = admin_client.post(f"/users/{ids[0]}", headers=HTMX,
                             data={**data, "mcs_password": "x", "mcs_password_clear": "y"})
    assert both.status_code == 422 and "not both" in both.get_data(as_text=True)


def test_edit_user_validation_and_save(app, admin_client):
    ids = add_users(app, [{"login_id": "jdoe"}, {"login_id": "other"}])
    with app.app_context():
        profile_id = str(default_profile().id)
    resp = admin_client.post(f"/users/{ids[0]}", headers={**HTMX, "HX-Target": "user-main"},
                             data=form_data(login_id="other", profile_id=profile_id, email="bad@"))
    assert resp.status_code == 422
    assert "not a valid e-mail address" in resp.get_data(as_text=True)
    resp = admin_client.post(f"/users/{ids[0]}", headers={**HTMX, "HX-Target": "user-main"},
                             data=form_data(login_id="other", profile_id=profile_id))
    assert resp.status_code == 422 and "is already used by" in resp.get_data(as_text=True)
    resp = admin_client.post(f"/users/{ids[0]}", headers={**HTMX, "HX-Target": "user-main"},
                             data=form_data(login_id="jdoe", profile_id=profile_id, first_name="Janet"))
    assert resp.status_code == 200 and "Saved." in resp.get_data(as_text=True)
    with app.app_context():
        user = db.session.get(User, ids[0])
        assert user.first_name == "Janet" and user.config_version == 2 and not user.redeploy_required
        assert db.session.scalar(db.select(AuditEvent).where(AuditEvent.action == "user.update")) is not None


def test_imported_user_is_read_only_except_the_profile(app, admin_client):
    with app.app_context():
        conn = Connection(name="MBG Berlin", kind="mbg", url="https://mbg.example.com")
        other = DeploymentProfile(name="Teleworkers")
        db.session.add_all([conn, other])
        db.session.commit()
        conn_id, other_id = conn.id, other.id
    ids = add_users(app, [{"login_id": "imp", "first_name": "Ivo", "source": "connection",
                           "connection_id": conn_id, "source_key": "42"}])
    html = admin_client.get(f"/users/{ids[0]}").get_data(as_text=True)
    assert "imported from MBG Berlin" in html
    assert 'name="first_name"' not in html and 'name="profile_id"' in html
    resp = admin_client.post(f"/users/{ids[0]}", headers=HTMX, data={
        "profile_id": str(other_id), "first_name": "Hacked", "login_id": "changed", "voicemail_pin": "1"})
    assert resp.status_code == 200
    with app.app_context():
        user = db.session.get(User, ids[0])
        assert user.profile_id == other_id and user.first_name == "Ivo" and user.login_id == "imp"
        assert not user.has_secret("voicemail_pin")


def test_id_change_revokes_access_and_tells_the_admin(app, admin_client):
    ids = add_users(app, [{"login_id": "jdoe"}])
    now = utcnow()
    with app.app_context():
        db.session.add(Deployment(user_id=ids[0], token_hash="a" * 64, expires_at=now + timedelta(days=2)))
        db.session.add(RedirectEntry(token_hash="a" * 64, cds_url="http://cds.test", expires_at=now + timedelta(days=2)))
        db.session.add(ClientDevice(user_id=ids[0], key_hash="b" * 64, platform="android", app_version="9.1"))
        db.session.commit()
        profile_id = str(default_profile().id)
    # Asked first, saying what will happen; nothing changes until confirmed.
    resp = admin_client.post(f"/users/{ids[0]}", headers={**HTMX, "HX-Target": "user-main"},
                             data=form_data(login_id="jdoe2", profile_id=profile_id))
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'id="id-change-confirm"' in html
    assert "Change the ID from jdoe to jdoe2?" in html and "1 device stops working" in html
    assert "1 unused deployment link stops working" in html
    with app.app_context():
        assert db.session.get(User, ids[0]).login_id == "jdoe"
        assert db.session.scalar(db.select(ClientDevice)).revoked_at is None
    resp = admin_client.post(f"/users/{ids[0]}", headers={**HTMX, "HX-Target": "user-main"},
                             data=form_data(login_id="jdoe2", profile_id=profile_id, confirm_id_change="jdoe2"))
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert 'id="id-change-notice"' in html and "factory reset" in html and "new deployment e-mail" in html
    assert "from jdoe to jdoe2" in html
    assert "Deploy now" in html and "/users/actions/deploy" in html
    with app.app_context():
        user = db.session.get(User, ids[0])
        assert user.login_id == "jdoe2" and user.redeploy_required
        assert db.session.scalar(db.select(ClientDevice)).revoked_at is not None
        assert db.session.scalar(db.select(Deployment)).revoked_at is not None
        assert db.session.get(RedirectEntry, "a" * 64) is None
        event = db.session.scalar(db.select(AuditEvent).where(AuditEvent.action == "user.update"))
        assert event.detail["old_login_id"] == "jdoe"


def test_id_change_redeploys_automatically_when_set(app, admin_client):
    from cds.settings.service import save_settings
    ids = add_users(app, [{"login_id": "jdoe"}])
    with app.app_context():
        save_settings({"AUTO_REDEPLOY_ON_ID_CHANGE": True})
        profile_id = str(default_profile().id)
    html = admin_client.post(f"/users/{ids[0]}", headers={**HTMX, "HX-Target": "user-main"},
                             data=form_data(login_id="jdoe2", profile_id=profile_id)).get_data(as_text=True)
    assert "a new deployment e-mail is sent at once" in html  # the question says so
    html = admin_client.post(f"/users/{ids[0]}", headers={**HTMX, "HX-Target": "user-main"},
                             data=form_data(login_id="jdoe2", profile_id=profile_id,
                                            confirm_id_change="jdoe2")).get_data(as_text=True)
    assert "being sent automatically" in html
    with app.app_context():
        job = db.session.scalar(db.select(Job).where(Job.kind == "deploy"))
        assert job is not None and job.params["selection"] == {"ids": [ids[0]]}


# --- the user page ---------------------------------------------------------------------

def test_user_page_shows_history_devices_and_audit_and_revokes_a_device(app, admin_client):
    ids = add_users(app, [{"login_id": "jdoe"}])
    now = utcnow()
    with app.app_context():
        db.session.add(Deployment(user_id=ids[0], token_hash="c" * 64, issued_by="alice", recipient="j@x.com",
                                  issued_at=now - timedelta(days=1), expires_at=now + timedelta(days=3),
                                  send_state="sent", sent_at=now - timedelta(days=1), used_at=now,
                                  used_device_id="pixel-8-abc", used_ip="198.51.100.7"))
        db.session.add(Deployment(user_id=ids[0], token_hash="d" * 64, expires_at=now + timedelta(days=3),
                                  issued_at=now))
        phone = ClientDevice(user_id=ids[0], key_hash="e" * 64, device_id="pixel-8-abc", platform="android",
                             app_version="9.1.0", last_seen_at=now, last_ip="198.51.100.7")
        laptop = ClientDevice(user_id=ids[0], key_hash="f" * 64, device_id="lap-1", platform="windows",
                              app_version="9.0.2")
        db.session.add_all([phone, laptop])
        db.session.commit()
        phone_id, laptop_id = phone.id, laptop.id
    html = admin_client.get(f"/users/{ids[0]}").get_data(as_text=True)
    assert "Deployment history" in html and "pixel-8-abc" in html and "198.51.100.7" in html
    assert ">used<" in html and ">valid<" in html
    assert "android" in html and "9.1.0" in html and "windows" in html
    resp = admin_client.post(f"/users/{ids[0]}/devices/{phone_id}/revoke",
                             headers={**HTMX, "HX-Target": "user-main"})
    assert resp.status_code == 200 and "revoked" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(ClientDevice, phone_id).revoked_at is not None
        assert db.session.get(ClientDevice, laptop_id).revoked_at is None  # the other device keeps working
        event = db.session.scalar(db.select(AuditEvent).where(AuditEvent.action == "device.revoke"))
        assert event.user_id == ids[0]
    again = admin_client.post(f"/users/{ids[0]}/devices/{phone_id}/revoke", headers=HTMX)
    assert again.status_code == 409
    assert admin_client.post(f"/users/{ids[0]}/devices/999999/revoke", headers=HTMX).status_code == 404
    page = admin_client.get(f"/users/{ids[0]}").get_data(as_text=True)
    assert "device.revoke" in page  # the user's audit events
    assert admin_client.get("/users/999999").status_code == 404


def test_read_only_sees_the_user_but_cannot_save(app, readonly_client):
    ids = add_users(app, [{"login_id": "jdoe"}])
    html = readonly_client.get(f"/users/{ids[0]}").get_data(as_text=True)
    assert "jdoe" in html and "<fieldset disabled" in html
    assert readonly_client.post(f"/users/{ids[0]}", data=form_data()).status_code == 403
    assert readonly_client.get("/users/new").status_code == 403


def test_search_results_sort_the_same_whichever_way_they_are_found(app, admin_client, monkeypatch):
    from cds.users import query as service
    add_users(app, [{"email": f"s{n}@x.com", "first_name": name, "last_name": "Smith"}
                    for n, name in enumerate(["Cleo", "Abe", "Bea", "Abe"])] + [{"last_name": "Other"}])
    expected = ["s0@x.com", "s2@x.com", "s3@x.com", "s1@x.com"]  # Cleo, Bea, Abe, Abe (ties: id, reversed)
    assert logins(table(admin_client, "?search=smith&sort=-first_name")) == expected
    monkeypatch.setattr(service, "SORT_HITS_UP_TO", 0)  # walk the sort index instead
    assert logins(table(admin_client, "?search=smith&sort=-first_name")) == expected
    assert logins(table(admin_client, "?search=sm&sort=-first_name")) == expected


def test_export_button_carries_the_selection_to_the_export(app, admin_client):
    html = admin_client.get("/users").get_data(as_text=True)
    assert 'data-export-url="/users/export.csv"' in html
    assert "data-unavailable" not in html


def test_user_page_deploys_that_one_user(app, admin_client):
    """The user page's Deploy button runs the same Deploy action for this user only."""
    from cds.extensions import db
    from cds.models import Job, User
    from cds.profiles.service import default_profile
    with app.app_context():
        users = [User(login_id=f"one{i}", last_name="One", email=f"one{i}@example.com",
                      profile_id=default_profile().id) for i in range(2)]
        db.session.add_all(users)
        db.session.commit()
        uid = users[0].id
    page = admin_client.get(f"/users/{uid}").get_data(as_text=True)
    assert "Set Force Config" in page and ">Deploy<" in page
    resp = admin_client.post("/users/actions/deploy", data={"ids": str(uid)}, headers={"HX-Request": "true"})
    assert resp.status_code == 200
    with app.app_context():
        job = db.session.scalar(db.select(Job))
        assert job.total == 1 and job.succeeded == 1
        assert db.session.get(User, uid).deployed_at is not None
        assert db.session.scalar(db.select(User).where(User.login_id == "one1")).deployed_at is None
