"""Client protocol v1 (docs/client-protocol.md): activation, status, configuration, and the
states that end a device's access."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from cds.extensions import db
from cds.models import AuditEvent, ClientDevice, Deployment, User, utcnow
from tests.deploy.test_deploy import SECRETS, make_profile, make_users

DEVICE = {"id": "A1B2-C3", "platform": "android", "app_version": "9.8.1"}


def issue(app, uid):
    """A fresh link for a user, as Deploy makes it (without e-mail); returns the token.
    Its message counts as handed over: the user's older links stop working."""
    from cds.deploy.service import issue_deployment, supersede_other_links
    with app.app_context():
        dep, token = issue_deployment(db.session.get(User, uid), actor="alice")
        supersede_other_links(dep, utcnow())
        db.session.commit()
        return token


@pytest.fixture
def user_id(app):
    make_profile(app, "Berlin", pbx_sip_host="pbx.example.com", pbx_sip_port=5062, pbx_sip_transport="TCP",
                 mbg_sip_host="mbg.example.com", mbg_sip_port=5061, mbg_sip_transport="TLS",
                 mcs_host="mcs.example.com", mcs_port=8443, voicemail_number="8000",
                 client_types="mobile,desktop")
    [uid] = make_users(app, 1, profile_name="Berlin", pbx_sip_username="sip4000", mbg_sip_username="mbg4000",
                       mcs_account="ann.user", pbx_number="4000")
    return uid


def activate(client, token, device=DEVICE):
    return client.post("/client/v1/activate", json={"token": token, "device": device})


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_activation_returns_the_configuration_document(app, client, user_id):
    token = issue(app, user_id)
    resp = activate(client, token)
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    doc = resp.get_json()
    assert doc["schema"] == "cds-client-config/1"
    assert doc["client_key"] and len(doc["client_key"]) == 43
    assert doc["user"] == {"login_id": "user000", "first_name": "Ann", "last_name": "User 000",
                           "number": "4000", "email": "user000@example.com"}
    assert doc["pbx_sip"] == {"username": "sip4000", "password": SECRETS["pbx_sip_password"], "pbx_number": "4000",
                              "host": "pbx.example.com", "port": 5062, "transport": "TCP"}
    assert doc["mbg_sip"] == {"username": "mbg4000", "password": SECRETS["teleworker_sip_password"],
                              "host": "mbg.example.com", "port": 5061, "transport": "TLS"}
    assert doc["micollab_client_service"] == {"host": "mcs.example.com", "port": 8443, "account": "ann.user",
                                              "password": SECRETS["mcs_password"]}
    assert doc["voicemail"] == {"number": "8000", "pin": SECRETS["voicemail_pin"]}
    assert doc["profile"] == {"name": "Berlin", "client_types": ["mobile", "desktop"]}
    assert doc["config_version"] == 1 and doc["issued_at"].endswith("Z")
    with app.app_context():
        user = db.session.get(User, user_id)
        assert user.downloaded_at is not None
        dep = db.session.scalar(select(Deployment))
        assert dep.used_at and dep.used_device_id == "A1B2-C3" and dep.used_ip == "127.0.0.1"
        device = db.session.scalar(select(ClientDevice))
        assert (device.platform, device.app_version, device.last_ip) == ("android", "9.8.1", "127.0.0.1")
        assert device.key_hash != doc["client_key"]
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "client.activate"))
        assert event.user_id == user_id and event.actor_type == "client"
        text = str(event.detail)
        assert token not in text and doc["client_key"] not in text
        assert not any(s in text for s in SECRETS.values())


def test_single_use_unknown_expired_superseded(app, client, user_id):
    token = issue(app, user_id)
    assert activate(client, token).status_code == 200
    again = activate(client, token)
    assert again.status_code == 410 and again.get_json()["error"] == "link_used"
    unknown = activate(client, "x" * 43)
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "unknown_token"
    old = issue(app, user_id)
    new = issue(app, user_id)
    resp = activate(client, old)
    assert resp.status_code == 410 and resp.get_json()["error"] == "link_superseded"
    with app.app_context():
        db.session.execute(update(Deployment).values(expires_at=utcnow() - timedelta(minutes=1)))
        db.session.commit()
    resp = activate(client, new)
    assert resp.status_code == 410 and resp.get_json()["error"] == "link_expired"
    assert "administrator" in resp.get_json()["message"]


def test_bad_requests(app, client, user_id):
    assert client.post("/client/v1/activate", data="nope").status_code == 400
    resp = client.post("/client/v1/activate", json={"device": DEVICE})
    assert resp.status_code == 400 and resp.get_json()["error"] == "bad_request"
    resp = client.post("/client/v1/activate", json={"token": issue(app, user_id), "device": "phone"})
    assert resp.status_code == 400
    resp = client.get("/client/v1/status")
    assert resp.status_code == 401 and resp.get_json()["error"] == "unauthorized"
    assert "Bearer" in resp.headers["WWW-Authenticate"]


def test_concurrent_activations_exactly_one_wins(app, user_id):
    token = issue(app, user_id)
    results = []
    barrier = threading.Barrier(6)

    def attempt():
        c = app.test_client()
        barrier.wait()
        results.append(activate(c, token).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [410] * 5
    with app.app_context():
        assert len(db.session.scalars(select(ClientDevice)).all()) == 1


def test_status_force_config_and_config_download(app, client, user_id):
    key = activate(client, issue(app, user_id)).get_json()["client_key"]
    status = client.get("/client/v1/status", headers=bearer(key))
    assert status.get_json() == {"force_config": False, "config_version": 1}
    from cds.deploy.service import force_config_users
    with app.app_context():
        force_config_users(None, [db.session.get(User, user_id)], actor="alice")
        db.session.execute(update(User).values(downloaded_at=utcnow() - timedelta(days=1)))
        db.session.commit()
    status = client.get("/client/v1/status", headers=bearer(key)).get_json()
    assert status == {"force_config": True, "config_version": 2}
    doc = client.get("/client/v1/config", headers=bearer(key)).get_json()
    assert doc["config_version"] == 2 and doc["voicemail"]["pin"] == SECRETS["voicemail_pin"]
    assert "client_key" not in doc
    assert client.get("/client/v1/status", headers=bearer(key)).get_json()["force_config"] is False
    with app.app_context():
        user = db.session.get(User, user_id)
        assert user.downloaded_at > utcnow() - timedelta(minutes=1)
        assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "client.config_download"))


def test_unreadable_secrets_answer_503_and_write_nothing(app, client, user_id):
    """A configuration that cannot be decrypted is not handed out, and nothing of the
    request is written: the link stays usable, no device, no audit row, Downloaded and
    Force Config as they were; a request in the same batch goes through."""
    from cds.deploy.service import force_config_users
    [other] = make_users(app, 1, profile_name="Berlin", prefix="other")
    key = activate(client, issue(app, user_id)).get_json()["client_key"]
    token = issue(app, user_id)
    with app.app_context():
        force_config_users(None, [db.session.get(User, user_id)], actor="alice")
        db.session.execute(update(User).where(User.id == user_id)
                           .values(secrets_enc="not-a-ciphertext", downloaded_at=None))
        db.session.commit()
    other_token = issue(app, other)
    results = {}
    barrier = threading.Barrier(3)

    def attempt(name, request):
        c = app.test_client()
        barrier.wait()
        results[name] = request(c)

    threads = [threading.Thread(target=attempt, args=args) for args in (
        ("activate", lambda c: activate(c, token)),
        ("config", lambda c: c.get("/client/v1/config", headers=bearer(key))),
        ("other", lambda c: activate(c, other_token)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("activate", "config"):
        assert results[name].status_code == 503
        assert results[name].get_json()["error"] == "config_unavailable"
    assert results["other"].status_code == 200
    with app.app_context():
        user = db.session.get(User, user_id)
        assert user.downloaded_at is None and user.force_config is True
        assert len(db.session.scalars(select(ClientDevice).where(ClientDevice.user_id == user_id)).all()) == 1
        events = db.session.scalars(select(AuditEvent).where(AuditEvent.action.like("client.%"))).all()
        assert sorted((e.action, e.user_id) for e in events) == sorted([("client.activate", other),
                                                                        ("client.activate", user_id)])
        assert db.session.scalar(select(Deployment.used_at).where(Deployment.user_id == other)) is not None
    # The link was not used up: once the secrets can be read again, it works.
    with app.app_context():
        db.session.execute(update(User).where(User.id == user_id).values(secrets_enc=None))
        db.session.commit()
    assert activate(client, token).status_code == 200


def test_redeploy_required_after_id_change_revoke_and_delete(app, client, user_id):
    key = activate(client, issue(app, user_id)).get_json()["client_key"]
    assert client.get("/client/v1/status", headers=bearer(key)).status_code == 200
    assert client.get("/client/v1/status", headers=bearer("not-a-key")).get_json()["error"] == "redeploy_required"
    from cds.users.login_ids import apply_login_id_change, revoke_client_access
    with app.app_context():
        apply_login_id_change(db.session.get(User, user_id), "user000-new")
        db.session.commit()
    for path in ("/client/v1/status", "/client/v1/config"):
        resp = client.get(path, headers=bearer(key))
        assert resp.status_code == 401 and resp.get_json()["error"] == "redeploy_required"
    # A new deployment gives a working key again; revoking it ends it.
    key2 = activate(client, issue(app, user_id)).get_json()["client_key"]
    assert client.get("/client/v1/status", headers=bearer(key2)).status_code == 200
    with app.app_context():
        revoke_client_access(db.session.get(User, user_id), "lost phone")
        db.session.commit()
    assert client.get("/client/v1/status", headers=bearer(key2)).status_code == 401
    key3 = activate(client, issue(app, user_id)).get_json()["client_key"]
    with app.app_context():
        db.session.delete(db.session.get(User, user_id))
        db.session.commit()
    resp = client.get("/client/v1/config", headers=bearer(key3))
    assert resp.status_code == 401 and resp.get_json()["error"] == "redeploy_required"


def test_rate_limited_per_address(make_app, app):
    limited = make_app(CLIENT_LIMIT_PER_ADDRESS="3/minute")
    c = limited.test_client()
    responses = [c.post("/client/v1/activate", json={"token": "t" * 43}, environ_base={"REMOTE_ADDR": "192.0.2.7"})
                 for _ in range(4)]
    assert [r.status_code for r in responses] == [404, 404, 404, 429]
    assert responses[-1].get_json()["error"] == "rate_limited"
    assert 1 <= int(responses[-1].headers["Retry-After"]) <= 60
    # Each endpoint has its own budget: polling status does not use up activation.
    codes = [c.get("/client/v1/status", environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    other = c.post("/client/v1/activate", json={"token": "t" * 43}, environ_base={"REMOTE_ADDR": "192.0.2.8"})
    assert other.status_code == 404


def test_no_csrf_or_session_needed(app, user_id):
    c = app.test_client()
    assert activate(c, issue(app, user_id)).status_code == 200


def test_simultaneous_activations_of_many_users_each_written_once(app, user_id):
    """Writes of simultaneous requests are committed together; each lands exactly once."""
    uids = make_users(app, 12, profile_name="Berlin", prefix="many")
    tokens = [issue(app, uid) for uid in uids]
    barrier = threading.Barrier(len(tokens))
    results = {}

    def attempt(token):
        c = app.test_client()
        barrier.wait()
        resp = activate(c, token)
        results[token] = (resp.status_code, resp.get_json())

    threads = [threading.Thread(target=attempt, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {code for code, _ in results.values()} == {200}
    with app.app_context():
        devices = db.session.scalars(select(ClientDevice)).all()
        assert sorted(d.user_id for d in devices) == sorted(uids)
        events = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "client.activate")).all()
        assert sorted(e.user_id for e in events) == sorted(uids)
        assert all(u.downloaded_at is not None for u in db.session.scalars(select(User).where(User.id.in_(uids))))
        logins = {u.login_id for u in db.session.scalars(select(User).where(User.id.in_(uids)))}
    # Each answer carries its own user's configuration.
    assert sorted(doc["user"]["login_id"] for _, doc in results.values()) == sorted(logins)


def test_one_failing_unit_does_not_take_its_batch_down(app, user_id):
    """Units of one batch share a transaction; a refusal or a failure in one leaves the others."""
    from cds.client.service import NEW_DEVICE, USER_DOWNLOADED, ClientError
    from cds.client.statements import GroupCommit, _Unit

    now = utcnow()

    def add_device(key_hash):
        def work(cur):
            NEW_DEVICE.execute(cur, {"user_id": user_id, "deployment_id": None, "key_hash": key_hash,
                                      "device_id": "d", "platform": "ios", "app_version": "1",
                                      "activated_at": now, "last_seen_at": None, "last_ip": None})
            USER_DOWNLOADED.execute(cur, {"u_id": user_id, "now": now})
            return key_hash
        return work

    def refuse(cur):
        raise ClientError(410, "link_used", "used")

    with app.app_context():
        good, duplicate, refused = _Unit(add_device("a" * 64)), _Unit(add_device("a" * 64)), _Unit(refuse)
        GroupCommit(refusals=(ClientError,))._commit([good, duplicate, refused])
        assert all(u.finished and not u.signals.empty() for u in (good, duplicate, refused))
        assert good.result == "a" * 64 and good.error is None
        assert "unique" in str(duplicate.error).lower()  # the same key twice
        assert isinstance(refused.error, ClientError)
        assert [d.key_hash for d in db.session.scalars(select(ClientDevice))] == ["a" * 64]
        assert db.session.get(User, user_id).downloaded_at == now


def test_in_process_limit_storage_needs_no_timer_threads_and_forgets_old_counters(monkeypatch):
    import time as time_module

    from limits import parse
    from limits.storage import storage_from_string
    from limits.strategies import FixedWindowRateLimiter

    from cds.extensions import InProcessLimitStorage, limiter_storage_uri

    storage = storage_from_string(limiter_storage_uri("memory://"))
    assert isinstance(storage, InProcessLimitStorage)
    limiter_ = FixedWindowRateLimiter(storage)
    one_second = parse("1000/second")
    before = {t.ident for t in threading.enumerate()}
    assert all(limiter_.hit(one_second, "client", str(i % 50)) for i in range(2000))
    assert not {t for t in threading.enumerate() if t.ident not in before and t.is_alive()}
    assert len(storage.storage) == 50
    # Once their window has passed, the next update sweeps the stale counters away.
    later = time_module.time() + 5
    monkeypatch.setattr("limits.storage.memory.time.time", lambda: later)
    storage._next_sweep = 0.0  # the sweep is due
    limiter_.hit(one_second, "client", "fresh")
    assert [key.split("/")[2] for key in storage.storage] == ["fresh"]


def test_the_group_commit_hands_on_every_lead_it_was_given(app):
    """Two lanes finishing back to back must not both hand their lead to the same waiting
    request: the second lead would be lost, and once every lane's lead was lost no
    request would ever be run again (every client request would hang)."""
    import random
    import threading
    import time

    from cds.client.statements import GroupCommit

    class TwoLanes(GroupCommit):
        LANES = {}  # two batches at once on any database (the work here writes nothing)
        DEFAULT_LANES = 2

    group = TwoLanes()
    done, failed = [], []

    def request(k):
        try:
            with app.app_context():
                for i in range(150):
                    def work(cur, n=k * 1000 + i):
                        time.sleep(random.random() / 2000)
                        return n
                    assert group.run(work) == k * 1000 + i
            done.append(k)
        except Exception as exc:  # reported below
            failed.append(exc)
    threads = [threading.Thread(target=request, args=(k,), daemon=True) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failed
    assert sorted(done) == list(range(12)), "requests hung in the group commit"
    assert group._leaders == 0 and not group._queue
