"""Sign-in, roles, throttling, CSRF and session cookies."""
from tests.conftest import TEST_PASSWORD, make_admin, sign_in


def test_every_admin_page_requires_sign_in(client):
    for path in ("/users", "/profiles", "/jobs", "/settings", "/audit", "/import", "/connections"):
        resp = client.get(path)
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], path


def test_sign_in_and_out(app, client):
    make_admin(app, "alice", "primary")
    resp = sign_in(client, "alice")
    assert resp.status_code == 302
    page = client.get("/users").get_data(as_text=True)
    assert "alice" in page and "Sign out" in page
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.post("/logout").status_code == 302
    assert client.get("/users").status_code == 302


def test_wrong_password_is_refused(app, client):
    make_admin(app, "alice", "primary")
    resp = sign_in(client, "alice", "wrong password!")
    assert resp.status_code == 401
    assert "Wrong user name or password" in resp.get_data(as_text=True)
    assert client.get("/users").status_code == 302


def test_disabled_account_cannot_sign_in(app, client):
    from cds.extensions import db
    from cds.models import AdminAccount
    admin_id = make_admin(app, "bob", "admin")
    with app.app_context():
        db.session.get(AdminAccount, admin_id).disabled = True
        db.session.commit()
    assert sign_in(client, "bob").status_code == 401


def test_failed_sign_ins_are_throttled_per_account(app, client):
    make_admin(app, "alice", "primary")
    codes = [sign_in(client, "alice", "nope-nope-nope").status_code for _ in range(5)]
    assert codes == [401] * 5
    # From the address that failed, even the right password waits now (another address
    # with no failures still gets in: test_security.py, no lockout of the owner).
    resp = sign_in(client, "alice", TEST_PASSWORD)
    assert resp.status_code == 429
    assert "Too many failed sign-ins for this account" in resp.get_data(as_text=True)
    # Another account from the same address is not locked by it.
    make_admin(app, "bob", "admin")
    assert sign_in(client, "bob").status_code == 302


def test_failed_sign_ins_are_throttled_per_address(make_app):
    app = make_app(LOGIN_LIMIT_PER_ADDRESS="3/minute", LOGIN_LIMIT_PER_ACCOUNT="100/minute")
    client = app.test_client()
    for i in range(3):
        assert sign_in(client, f"nobody{i}", "x" * 12).status_code == 401
    resp = sign_in(client, "someone-else", "x" * 12)
    assert resp.status_code == 429
    assert "from this address" in resp.get_data(as_text=True)


def test_post_without_csrf_token_is_refused(app):
    make_admin(app, "alice", "primary")
    client = app.test_client()
    sign_in(client, "alice")
    client.csrf_token = None
    resp = client.post("/logout")
    assert resp.status_code == 400
    assert "security token" in resp.get_data(as_text=True)
    # An htmx request without the header gets the same refusal, as a toast fragment.
    resp = client.post("/logout", headers={"HX-Request": "true"})
    assert resp.status_code == 400
    assert resp.headers["HX-Retarget"] == "#toasts"
    assert "security token" in resp.get_data(as_text=True)
    assert client.get("/users").status_code == 200  # still signed in


def test_login_form_needs_csrf_too(app):
    make_admin(app, "alice", "primary")
    client = app.test_client()
    resp = client.post("/login", data={"username": "alice", "password": TEST_PASSWORD})
    assert resp.status_code == 400


def test_read_only_role_sees_but_cannot_change(readonly_client):
    assert readonly_client.get("/users").status_code == 200
    assert readonly_client.get("/profiles").status_code == 200
    resp = readonly_client.post("/profiles/new", data={"name": "X"})
    assert resp.status_code == 403
    assert "read-only" in resp.get_data(as_text=True)
    assert readonly_client.post("/logout").status_code == 302  # signing out is allowed


def test_next_parameter_is_not_an_open_redirect(app, client):
    make_admin(app, "alice", "primary")
    client.refresh_csrf()
    resp = client.post("/login?next=//evil.example/x", data={
        "username": "alice", "password": TEST_PASSWORD, "csrf_token": client.csrf_token})
    assert resp.headers["Location"].endswith("/users")


def test_security_headers(client):
    resp = client.get("/login")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in resp.get_data(as_text=True)


def test_create_admin_cli_reads_password_from_stdin(app, runner, client):
    result = runner.invoke(args=["cds", "create-admin", "carol", "--role", "readonly"],
                           input="a long enough password\n")
    assert result.exit_code == 0, result.output
    assert sign_in(client, "carol", "a long enough password").status_code == 302
    short = runner.invoke(args=["cds", "create-admin", "dave"], input="short\n")
    assert short.exit_code == 1 and "at least 10 characters" in short.output


def test_public_areas_answer_404_and_405_not_a_sign_in_page(client):
    resp = client.get("/client/v1/activate")
    assert resp.status_code == 405 and resp.get_json()["error"] == "method_not_allowed"
    assert client.get("/client/v1/nope").status_code == 404
    assert client.post("/healthz").status_code == 405


def test_a_one_time_password_is_followed_by_the_prompt_to_choose_ones_own(app, client):
    from cds.auth.service import ensure_first_admin
    with app.app_context():
        printed = ensure_first_admin()
    resp = sign_in(client, "admin", printed)
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/settings/account")
    page = client.get("/settings/account").get_data(as_text=True)
    assert 'id="one-time-password"' in page and "Choose your own" in page
    assert 'id="password-change-due"' in client.get("/users").get_data(as_text=True)
    resp = client.post("/settings/account", data={"current": printed, "new": "my own long passphrase",
                                                   "repeat": "my own long passphrase"})
    assert resp.status_code in (200, 302)
    assert 'id="password-change-due"' not in client.get("/users").get_data(as_text=True)
    client.post("/logout")
    resp = sign_in(client, "admin", "my own long passphrase")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/users")
