"""JSON API v1: tokens, authentication, the error shape, actions and jobs."""
from datetime import timedelta


from cds.extensions import db
from cds.models import ApiToken, Job, User, utcnow
from tests.api_support import ApiClient
from tests.conftest import make_token


def add_users(app, n, **fields):
    from cds.profiles.service import default_profile
    with app.app_context():
        prof = default_profile()
        users = [User(login_id=f"u{i:04d}", last_name=f"Last{i}", first_name="F", email=f"u{i}@example.com",
                      profile_id=prof.id, **fields) for i in range(n)]
        db.session.add_all(users)
        db.session.commit()
        return [u.id for u in users]


def test_create_api_token_cli_prints_it_once_and_stores_only_a_hash(app, runner):
    result = runner.invoke(args=["cds", "create-api-token", "nightly", "--role", "read-only",
                                 "--expires", "30"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[0]
    assert token.startswith("cds_") and len(token) > 40
    with app.app_context():
        row = db.session.scalar(db.select(ApiToken))
        assert row.name == "nightly" and row.role == "readonly"
        assert token not in row.token_hash and row.expires_at > utcnow() + timedelta(days=29)
    listed = runner.invoke(args=["cds", "list-api-tokens", "--json"])
    assert '"nightly"' in listed.output and token not in listed.output
    revoked = runner.invoke(args=["cds", "revoke-api-token", str(row.id)])
    assert revoked.exit_code == 0
    bad = runner.invoke(args=["cds", "revoke-api-token", "999"])
    assert bad.exit_code == 1 and "does not exist" in bad.output


def test_requests_without_a_valid_token_get_401_in_the_error_shape(app, client):
    anon = ApiClient(client, None)
    resp = anon.get("/api/v1/jobs")
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "unauthorized"
    assert ApiClient(client, "cds_not-a-real-token").get("/api/v1/jobs").status_code == 401
    expired = make_token(app, name="old")
    with app.app_context():
        row = db.session.scalar(db.select(ApiToken).where(ApiToken.name == "old"))
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    assert ApiClient(client, expired).get("/api/v1/jobs").status_code == 401


def test_revoked_token_stops_working(app, client, api):
    assert api.get("/api/v1/jobs").status_code == 200
    from cds.settings.tokens import revoke_api_token
    with app.app_context():
        revoke_api_token(db.session.scalar(db.select(ApiToken.id)))
    assert api.get("/api/v1/jobs").status_code == 401


def test_session_cookie_is_not_accepted(admin_client):
    """A signed-in browser session does not authenticate API calls (so no CSRF exposure)."""
    resp = admin_client.get("/api/v1/jobs")
    assert resp.status_code == 401


def test_read_only_token_is_refused_on_writes(app, ro_api):
    ids = add_users(app, 2)
    assert ro_api.get("/api/v1/jobs").status_code == 200
    resp = ro_api.post("/api/v1/users/actions/assign-profile", json={"ids": ids, "profile_id": 1})
    assert resp.status_code == 403 and resp.get_json()["error"] == "forbidden"
    assert ro_api.delete("/api/v1/jobs/1").status_code == 403


def test_unknown_endpoint_and_wrong_body(api):
    resp = api.client.get("/api/v1/nope", headers={"Authorization": f"Bearer {api.token}"})
    assert resp.status_code == 404 and resp.get_json()["error"] == "not_found"
    resp = api.post("/api/v1/users/actions/deploy", data="ids=1")
    assert resp.status_code in (404, 415)
    resp = api.post("/api/v1/users/actions/assign-profile", data="x", content_type="text/plain")
    assert resp.status_code == 415
    resp = api.post("/api/v1/users/actions/assign-profile", json={"ids": "all"})
    assert resp.status_code == 422 and "ids" in resp.get_json()["details"]
    resp = api.post("/api/v1/users/actions/assign-profile", json={"ids": [999999], "profile_id": 1})
    assert resp.status_code == 422 and "No users" in resp.get_json()["message"]
    resp = api.post("/api/v1/users/actions/bogus", json={"ids": [1]})
    assert resp.status_code == 404


def test_action_runs_as_a_job_and_job_reports_progress(app, api):
    ids = add_users(app, 3)
    from cds.models import DeploymentProfile
    with app.app_context():
        target = DeploymentProfile(name="Sales")
        db.session.add(target)
        db.session.commit()
        target_id = target.id
    resp = api.post("/api/v1/users/actions/assign-profile", json={"ids": ids[:2], "profile_id": target_id})
    assert resp.status_code == 202
    job = resp.get_json()
    assert resp.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    got = api.get(f"/api/v1/jobs/{job['id']}").get_json()
    assert got["state"] == "done" and got["progress"]["succeeded"] == 2
    with app.app_context():
        assert [u.profile_id for u in db.session.scalars(db.select(User).order_by(User.id))] \
            [:2] == [target_id, target_id]
    listed = api.get("/api/v1/jobs?per_page=1").get_json()
    assert listed["total"] == 1 and listed["next"] is None


def test_scheduled_action_can_be_cancelled_and_never_runs(app, api):
    ids = add_users(app, 2)
    at = (utcnow() + timedelta(hours=1)).isoformat() + "Z"
    resp = api.post("/api/v1/users/actions/force-config", json={"filter": {}, "at": at})
    assert resp.status_code == 202
    job = resp.get_json()
    assert job["state"] == "scheduled" and job["progress"]["total"] == len(ids)
    assert api.delete(f"/api/v1/jobs/{job['id']}").get_json()["state"] == "cancelled"
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 409
    assert api.get("/api/v1/jobs/424242").status_code == 404
    with app.app_context():
        from cds.jobs.service import run_due
        db.session.get(Job, job["id"]).run_at = utcnow() - timedelta(minutes=1)
        db.session.commit()
        run_due(app)
        assert db.session.get(Job, job["id"]).state == "cancelled"


def test_bad_time_and_filter_are_422(app, api):
    add_users(app, 1)
    resp = api.post("/api/v1/users/actions/deploy", json={"filter": {}, "at": "tomorrow"})
    assert resp.status_code == 422 and "at" in resp.get_json()["details"]
    resp = api.post("/api/v1/users/actions/assign-profile", json={"filter": {"deployed": "maybe"}})
    assert resp.status_code == 422


def test_rate_limit_answers_429_in_the_error_shape(make_app, app):
    limited = make_app(API_RATE_LIMIT="3/minute")
    token = make_token(limited)
    api = ApiClient(limited.test_client(), token)
    codes = [api.get("/api/v1/jobs").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    resp = api.get("/api/v1/jobs")
    assert resp.get_json()["error"] == "rate_limited"


def test_openapi_document_is_served(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    assert "/users/actions/{action}" in doc["paths"]


def test_settings_page_creates_shows_once_and_revokes_tokens(app, admin_client, readonly_client):
    page = admin_client.get("/settings/api-tokens")
    assert page.status_code == 200 and "No API tokens yet" in page.get_data(as_text=True)
    created = admin_client.post("/settings/api-tokens", data={"name": "nightly", "role": "read-only",
                                                              "expires_days": "30"})
    body = created.get_data(as_text=True)
    import re
    token = re.search(r'<code class="token">(cds_[^<]+)</code>', body).group(1)
    assert ApiClient(admin_client, token).get("/api/v1/jobs").status_code == 200
    assert token not in admin_client.get("/settings/api-tokens").get_data(as_text=True)
    assert admin_client.post("/settings/api-tokens", data={"name": ""}).status_code == 422
    assert readonly_client.post("/settings/api-tokens", data={"name": "x"}).status_code == 403
    with app.app_context():
        token_id = db.session.scalar(db.select(ApiToken.id))
    admin_client.post(f"/settings/api-tokens/{token_id}/revoke")
    assert ApiClient(admin_client, token).get("/api/v1/jobs").status_code == 401
