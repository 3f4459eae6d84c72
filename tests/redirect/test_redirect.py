"""The redirect server: /r/<token>, the store (hashes, URLs, times, nothing else), and
registration with a redirect server running on its own, over real HTTP."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, update

from cds.extensions import db
from cds.models import RedirectEntry, RedirectOutbox, User, utcnow
from cds.security import token_hash
from tests.conftest import free_port
from tests.deploy.test_deploy import make_users

SECRET = "redirect-shared-secret-0123456789"


def issue(app, uid):
    """A new link whose message was handed over: the user's older links stop working."""
    from cds.deploy.service import issue_deployment, supersede_other_links
    with app.app_context():
        dep, token = issue_deployment(db.session.get(User, uid))
        supersede_other_links(dep, utcnow())
        db.session.commit()
        return token


def test_redirect_to_landing_page_and_json(app, client):
    [uid] = make_users(app, 1)
    token = issue(app, uid)
    resp = client.get(f"/r/{token}")
    assert resp.status_code == 302
    assert resp.headers["Location"] == f"http://cds.test/deploy/{token}"
    assert resp.headers["Cache-Control"] == "no-store"
    resp = client.get(f"/r/{token}", headers={"Accept": "application/json"})
    assert resp.status_code == 200 and resp.get_json() == {"cds_url": "http://cds.test"}
    landing = client.get(f"/deploy/{token}")
    assert landing.status_code == 200
    page = landing.get_data(as_text=True)
    assert "Ann" not in page and "user000" not in page  # no user data
    assert f"/deploy/{token}/qr.png" in page
    # Opening the page does not use the link up.
    assert client.get(f"/deploy/{token}").status_code == 200


def test_unknown_and_expired_look_the_same(app, client):
    [uid] = make_users(app, 1)
    token = issue(app, uid)
    with app.app_context():
        db.session.execute(update(RedirectEntry).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    expired = client.get(f"/r/{token}")
    unknown = client.get(f"/r/{'Z' * 43}")
    assert expired.status_code == unknown.status_code == 404
    assert expired.get_data() == unknown.get_data()
    assert "administrator" in unknown.get_data(as_text=True)
    j1 = client.get(f"/r/{token}", headers={"Accept": "application/json"})
    j2 = client.get(f"/r/{'Z' * 43}", headers={"Accept": "application/json"})
    assert j1.status_code == j2.status_code == 404 and j1.get_json() == j2.get_json()


def test_landing_page_states(app, client):
    [uid] = make_users(app, 1)
    old = issue(app, uid)
    new = issue(app, uid)
    page = client.get(f"/deploy/{old}")
    assert page.status_code == 410 and "replaced by a newer e-mail" in page.get_data(as_text=True)
    assert client.get(f"/deploy/{old}/qr.png").status_code == 404
    resp = client.post("/client/v1/activate", json={"token": new, "device": {"id": "x"}})
    assert resp.status_code == 200
    page = client.get(f"/deploy/{new}").get_data(as_text=True)
    assert "already been used" in page and "ask your administrator" in page.lower()
    assert client.get(f"/deploy/{'Q' * 43}").status_code == 404


def test_store_holds_only_hashes_urls_and_times(app):
    assert {c.name for c in RedirectEntry.__table__.columns} == {"token_hash", "cds_url", "expires_at"}
    ids = make_users(app, 5)
    tokens = [issue(app, uid) for uid in ids]
    with app.app_context():
        rows = db.session.scalars(select(RedirectEntry)).all()
        assert {r.token_hash for r in rows} == {token_hash(t) for t in tokens}
        for r in rows:
            assert r.cds_url == "http://cds.test"
            assert len(r.token_hash) == 64 and all(ch in "0123456789abcdef" for ch in r.token_hash)


# --- a redirect server on its own ----------------------------------------------------

class Served:
    def __init__(self, app, port=None):
        from cds.serving import create_server
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = create_server(app, host="127.0.0.1", port=self.port, threads=2)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self):
        # Empty the socket map so the loop ends by itself, then close (no EBADF in the loop).
        socket_map = dict(self.server._map)
        self.server._map.clear()
        self.thread.join(5)
        for channel in socket_map.values():
            channel.close()
        self.server.task_dispatcher.shutdown()


@pytest.fixture
def redirect_app(tmp_path):
    from cds.redirect.standalone import create_redirect_app
    return create_redirect_app({"REDIRECT_API_SECRET": SECRET, "LOG_LEVEL": "WARNING",
                                "REDIRECT_DATABASE_URL": f"sqlite:///{tmp_path}/redirect.sqlite3"},
                               instance_path=str(tmp_path))


def test_standalone_api_needs_the_secret(redirect_app):
    server = Served(redirect_app)
    try:
        h = "a" * 64
        body = {"cds_url": "https://cds.example.com", "expires_at": "2099-01-01T00:00:00Z"}
        assert requests.put(f"{server.url}/r-api/v1/links/{h}", json=body).status_code == 401
        assert requests.put(f"{server.url}/r-api/v1/links/{h}", json=body,
                            headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": f"Bearer {SECRET}"}
        assert requests.put(f"{server.url}/r-api/v1/links/{h}", json=body, headers=auth).status_code == 200
        bad = requests.put(f"{server.url}/r-api/v1/links/{'b' * 64}", json={"cds_url": "ftp://x"}, headers=auth)
        assert bad.status_code == 422 and "cds_url" in bad.json()["message"]
        assert requests.delete(f"{server.url}/r-api/v1/links/{h}", headers=auth).status_code == 200
        assert requests.put(f"{server.url}/r-api/v1/links/NOTHEX", json=body, headers=auth).status_code == 422
    finally:
        server.stop()


def test_remote_mode_registers_withdraws_and_retries(make_app, app, redirect_app):
    port = free_port()
    cds = make_app(REDIRECT_MODE="remote", REDIRECT_URL=f"http://127.0.0.1:{port}",
                   REDIRECT_API_SECRET=SECRET)
    ids = make_users(app, 2)
    from cds.redirect.service import push_outbox
    # The redirect server is down: nothing is lost, the registrations wait.
    t1 = issue(cds, ids[0])
    with cds.app_context():
        assert push_outbox() == 0
        row = db.session.scalar(select(RedirectOutbox))
        assert row.attempts == 1 and "cannot reach" in row.last_error and row.next_attempt_at > utcnow()
        assert push_outbox() == 0  # backing off
        assert db.session.scalar(select(RedirectEntry)) is None  # this CDS keeps no local entry
    server = Served(redirect_app, port)
    try:
        with cds.app_context():
            db.session.execute(update(RedirectOutbox).values(next_attempt_at=utcnow()))
            db.session.commit()
            assert push_outbox() == 1
        r = requests.get(f"{server.url}/r/{t1}", allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"] == f"http://cds.test/deploy/{t1}"
        assert requests.get(f"{server.url}/r/{t1}", headers={"Accept": "application/json"}).json() == \
            {"cds_url": "http://cds.test"}
        # A new link supersedes t1: registering it withdraws t1 on the remote server.
        t2 = issue(cds, ids[0])
        with cds.app_context():
            assert push_outbox() == 2
            assert db.session.scalar(select(RedirectOutbox)) is None
        assert requests.get(f"{server.url}/r/{t1}", allow_redirects=False).status_code == 404
        assert requests.get(f"{server.url}/r/{t2}", allow_redirects=False).status_code == 302
        with redirect_app.app_context():
            rows = db.session.scalars(select(RedirectEntry)).all()
            assert [r.token_hash for r in rows] == [token_hash(t2)]
            assert db.inspect(db.engine).get_table_names() == ["redirect_entry"]
    finally:
        server.stop()
