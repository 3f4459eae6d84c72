"""Deploy, Auto deploy, Set Force Config: links, e-mail over a real SMTP server
(aiosmtpd on loopback), exactly-once sending, retries, the outbox, the CLI."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from cds.extensions import db
from cds.jobs.service import create_job, run_job
from cds.models import (AuditEvent, Deployment, DeploymentProfile, Job, JobItem, RedirectEntry, User,
                        utcnow)
from cds.security import token_hash
from tests.conftest import TEST_SERVERS
from tests.mailsink import MailSink, decode_qr, link_in, parts

SECRETS = {"mcs_password": "Mcs-Secret-71", "pbx_sip_password": "Pbx-Secret-72",
           "teleworker_sip_password": "Tw-Secret-73", "voicemail_pin": "918273"}


def use_smtp(app, smtp_server, **extra):
    from cds.settings.service import save_settings
    with app.app_context():
        save_settings({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp_server.port,
                       "MAIL_DEFAULT_SENDER": "IT <it@example.com>", **extra})


def make_users(app, n, *, prefix="user", profile_name=None, email=True, secrets=True, **fields):
    from cds.profiles.service import default_profile, find_profile_by_name
    with app.app_context():
        profile = find_profile_by_name(profile_name) if profile_name else default_profile()
        ids = []
        for i in range(n):
            u = User(login_id=f"{prefix}{i:03d}", profile_id=profile.id, first_name="Ann",
                     last_name=f"{prefix.title()} {i:03d}", number=f"{4000 + i}",
                     email=f"{prefix}{i:03d}@example.com" if email else "", **fields)
            if secrets:
                for k, v in SECRETS.items():
                    u.set_secret(k, v)
            db.session.add(u)
            db.session.flush()
            ids.append(u.id)
        db.session.commit()
        return ids


def make_profile(app, name, **fields):
    with app.app_context():
        p = DeploymentProfile(name=name, **{**TEST_SERVERS, **fields})
        db.session.add(p)
        db.session.commit()
        return p.id


def deploy(app, selection, kind="deploy", actor="alice"):
    with app.app_context():
        job = create_job(kind, selection, actor=actor)
        return run_job(job.id).id


def job_items(app, job_id):
    with app.app_context():
        return {i.login_id: (i.outcome, i.message) for i in
                db.session.scalars(select(JobItem).where(JobItem.job_id == job_id))}


# --- the e-mail ------------------------------------------------------------------

def test_deploy_sends_link_and_matching_qr_without_secrets(app, smtp_server):
    use_smtp(app, smtp_server)
    [uid] = make_users(app, 1)
    job_id = deploy(app, {"ids": [uid]})
    assert len(smtp_server.messages) == 1
    rcpts, raw = smtp_server.messages[0]
    assert rcpts == ["user000@example.com"]
    m = parts(raw)
    link = link_in(m["text"])
    assert link.startswith("http://cds.test/r/")
    assert link in m["html"]
    assert 'src="cid:qr-code@cds"' in m["html"]
    assert decode_qr(m["images"]["qr-code@cds"]) == link
    assert "Ann" in m["subject"]
    for secret in SECRETS.values():
        assert secret.encode() not in raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    token = link.rsplit("/", 1)[1]
    with app.app_context():
        user = db.session.get(User, uid)
        assert user.deployed_at is not None and user.send_error is None
        dep = db.session.scalar(select(Deployment).where(Deployment.user_id == uid))
        assert dep.token_hash == token_hash(token) and dep.send_state == "sent"
        assert dep.expires_at - dep.issued_at == timedelta(hours=96)
        # Only the hash is stored anywhere in the database row.
        assert token not in repr(dep.__dict__)
        assert db.session.get(RedirectEntry, token_hash(token)) is not None
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "deploy.sent"))
        assert event.user_id == uid and token not in str(event.detail)
        assert db.session.get(Job, job_id).state == "done"


def test_resend_supersedes_old_link_and_keeps_passwords(app, smtp_server):
    use_smtp(app, smtp_server)
    [uid] = make_users(app, 1)
    with app.app_context():
        before = {k: db.session.get(User, uid).get_secret(k) for k in SECRETS}
    deploy(app, {"ids": [uid]})
    deploy(app, {"ids": [uid]})
    first, second = (link_in(parts(raw)["text"]) for _, raw in smtp_server.messages)
    assert first != second
    with app.app_context():
        old = db.session.scalar(select(Deployment).where(Deployment.token_hash == token_hash(first.rsplit("/", 1)[1])))
        assert old.superseded_at is not None and old.status() == "superseded"
        assert db.session.get(RedirectEntry, old.token_hash) is None  # withdrawn
        assert {k: db.session.get(User, uid).get_secret(k) for k in SECRETS} == before


def test_do_not_deploy_skipped_and_missing_address_failed(app, smtp_server):
    use_smtp(app, smtp_server)
    from cds.models import DO_NOT_DEPLOY
    dnd = make_users(app, 2, prefix="dnd", profile_name=DO_NOT_DEPLOY)
    noaddr = make_users(app, 1, prefix="noaddr", email=False)
    ok = make_users(app, 1, prefix="ok")
    job_id = deploy(app, {"ids": dnd + noaddr + ok})
    items = job_items(app, job_id)
    assert items["dnd000"][0] == "skipped" and "Do Not Deploy" in items["dnd000"][1]
    assert items["noaddr000"][0] == "failed" and "No e-mail address" in items["noaddr000"][1]
    assert items["ok000"][0] == "ok"
    assert smtp_server.handler.recipients() == ["ok000@example.com"]
    with app.app_context():
        assert db.session.scalar(select(func.count(Deployment.id)).where(Deployment.user_id.in_(dnd))) == 0
        assert "No e-mail address" in db.session.get(User, noaddr[0]).send_error


def test_central_address_and_profile_override(app, smtp_server):
    use_smtp(app, smtp_server)
    make_profile(app, "Central", central_email="helpdesk@example.com", link_validity_hours=24,
                 email_subject="Setup for {{ name }}",
                 email_body="Hi {{ first_name }},\n\nuse {{ link }} before {{ expiry }}.")
    [uid] = make_users(app, 1, profile_name="Central")
    deploy(app, {"ids": [uid]})
    rcpts, raw = smtp_server.messages[0]
    assert rcpts == ["helpdesk@example.com"]
    m = parts(raw)
    assert m["subject"] == "Setup for Ann User 000"
    link = link_in(m["text"])
    assert m["text"].startswith("Hi Ann,")
    assert f'<a href="{link}">' in m["html"] and decode_qr(m["images"]["qr-code@cds"]) == link
    with app.app_context():
        dep = db.session.scalar(select(Deployment))
        assert dep.recipient == "helpdesk@example.com"
        assert dep.expires_at - dep.issued_at == timedelta(hours=24)


def test_one_smtp_connection_for_a_bulk_run(app, smtp_server):
    use_smtp(app, smtp_server)
    ids = make_users(app, 120)
    job_id = deploy(app, {"ids": ids})
    assert len(smtp_server.messages) == 120
    assert smtp_server.handler.connections == 1
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert (job.succeeded, job.failed) == (120, 0)
        links = {link_in(parts(raw)["text"]) for _, raw in smtp_server.messages}
        assert len(links) == 120


def test_rate_limit_paces_messages(app, smtp_server, monkeypatch):
    use_smtp(app, smtp_server, MAIL_RATE_LIMIT=120)
    import cds.mail.transport as transport
    waits = []
    clock = [1000.0]
    monkeypatch.setattr(transport.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(transport.time, "sleep", lambda s: (waits.append(round(s, 3)), clock.__setitem__(0, clock[0] + s)))
    ids = make_users(app, 3)
    deploy(app, {"ids": ids})
    assert len(smtp_server.messages) == 3
    assert waits == [0.5, 0.5]  # 120 per minute: one every half second


# --- failures, retries, exactly once -------------------------------------------

def test_refused_recipient_recorded_others_sent(app, smtp_server):
    use_smtp(app, smtp_server)
    ids = make_users(app, 3)
    smtp_server.handler.rcpt_refuse["user001@example.com"] = "550 5.1.1 No such mailbox"
    job_id = deploy(app, {"ids": ids})
    assert sorted(smtp_server.handler.recipients()) == ["user000@example.com", "user002@example.com"]
    items = job_items(app, job_id)
    assert items["user001"][0] == "failed" and "550 5.1.1 No such mailbox" in items["user001"][1]
    with app.app_context():
        u = db.session.get(User, ids[1])
        assert u.deployed_at is None and "550" in u.send_error and u.send_error_at
        dep = db.session.scalar(select(Deployment).where(Deployment.user_id == ids[1]))
        assert dep.send_state == "failed" and dep.next_attempt_at is None
        # Success clears an earlier error.
        smtp_server.handler.rcpt_refuse.clear()
    deploy(app, {"ids": [ids[1]]})
    with app.app_context():
        u = db.session.get(User, ids[1])
        assert u.deployed_at is not None and u.send_error is None


def _make_due(app):
    with app.app_context():
        db.session.execute(update(Deployment).where(Deployment.send_state == "retry")
                           .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()


def test_temporary_failure_is_retried_once_with_a_new_link(app, smtp_server):
    use_smtp(app, smtp_server)
    ids = make_users(app, 3)
    smtp_server.handler.rcpt_replies["user002@example.com"] = ["451 4.3.0 Mailbox busy, try later"]
    job_id = deploy(app, {"ids": ids})
    assert sorted(smtp_server.handler.recipients()) == ["user000@example.com", "user001@example.com"]
    assert "retried automatically" in job_items(app, job_id)["user002"][1]
    with app.app_context():
        dep = db.session.scalar(select(Deployment).where(Deployment.user_id == ids[2]))
        assert dep.send_state == "retry" and dep.next_attempt_at > utcnow()
        first_hash = dep.token_hash
        assert "451" in db.session.get(User, ids[2]).send_error
        from cds.deploy.service import resend_due
        assert resend_due() == 0  # not due yet
    _make_due(app)
    with app.app_context():
        from cds.deploy.service import resend_due
        assert resend_due() == 1
        assert resend_due() == 0
    assert sorted(smtp_server.handler.recipients()) == ["user000@example.com", "user001@example.com",
                                                 "user002@example.com"]
    link = link_in(parts(smtp_server.messages[-1][1])["text"])
    with app.app_context():
        dep = db.session.scalar(select(Deployment).where(Deployment.user_id == ids[2]))
        assert dep.send_state == "sent" and dep.token_hash == token_hash(link.rsplit("/", 1)[1])
        assert dep.token_hash != first_hash and db.session.get(RedirectEntry, first_hash) is None
        u = db.session.get(User, ids[2])
        assert u.deployed_at is not None and u.send_error is None


def test_smtp_down_then_back(app):
    from tests.conftest import free_port
    port = free_port()
    from cds.settings.service import save_settings
    with app.app_context():
        save_settings({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": port})
    ids = make_users(app, 4)
    job_id = deploy(app, {"ids": ids})
    items = job_items(app, job_id)
    assert all(o == "failed" and "Cannot reach the SMTP server" in m for o, m in items.values())
    with app.app_context():
        assert db.session.scalar(select(func.count()).where(Deployment.send_state == "retry")) == 4
        assert all(db.session.get(User, i).deployed_at is None for i in ids)
    # The server comes up on the port CDS failed to reach.
    smtp_server = MailSink(port=port).start()
    try:
        _make_due(app)
        with app.app_context():
            from cds.deploy.service import resend_due
            assert resend_due() == 4
            assert resend_due() == 0
        assert sorted(smtp_server.handler.recipients()) == [f"user{i:03d}@example.com" for i in range(4)]
        assert smtp_server.handler.connections == 1
        with app.app_context():
            assert all(db.session.get(User, i).deployed_at is not None for i in ids)
    finally:
        smtp_server.stop()


def test_gives_up_after_the_last_retry(app, smtp_server):
    use_smtp(app, smtp_server)
    [uid] = make_users(app, 1)
    from cds.deploy.service import RETRY_DELAYS, resend_due
    smtp_server.handler.rcpt_replies["user000@example.com"] = ["452 4.2.2 Over quota"] * (len(RETRY_DELAYS) + 1)
    deploy(app, {"ids": [uid]})
    for _ in range(len(RETRY_DELAYS)):
        _make_due(app)
        with app.app_context():
            resend_due()
    with app.app_context():
        dep = db.session.scalar(select(Deployment))
        assert dep.send_state == "failed" and "Gave up" in dep.send_error
        assert "Gave up" in db.session.get(User, uid).send_error
    assert smtp_server.messages == []


def test_interrupted_send_is_never_resent(app, smtp_server):
    """A run that died between "sending" and the SMTP reply: the resumed job reports the
    user as not sent and does not send again."""
    use_smtp(app, smtp_server)
    ids = make_users(app, 3)
    with app.app_context():
        job = create_job("deploy", {"ids": ids}, actor="alice")
        from cds.deploy.service import issue_deployment
        user = db.session.get(User, ids[1])
        dep, _ = issue_deployment(user, job_id=job.id)
        dep.send_state = "sending"
        db.session.commit()
        run_job(job.id)
        items = {i.login_id: i for i in db.session.scalars(select(JobItem).where(JobItem.job_id == job.id))}
        assert items["user001"].outcome == "failed" and "not resent" in items["user001"].message
        assert db.session.get(Deployment, dep.id).send_state == "unknown"
        assert "Interrupted" in db.session.get(User, ids[1]).send_error
    assert sorted(smtp_server.handler.recipients()) == ["user000@example.com", "user002@example.com"]


def test_killed_bulk_deploy_resumes_without_double_sends(app, smtp_server, database_url, instance_dir):
    """`flask cds deploy --all` killed with SIGKILL in the middle of a message, then resumed."""
    use_smtp(app, smtp_server)
    ids = make_users(app, 60)
    smtp_server.handler.hold_after = 25  # the 26th message is held until the process is dead
    env = dict(os.environ, CDS_DATABASE_URL=database_url, CDS_INSTANCE_PATH=instance_dir,
               CDS_PUBLIC_URL="http://cds.test", CDS_SCHEDULER_ENABLED="false", CDS_LOG_LEVEL="WARNING")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "cds", "deploy", "--all"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert smtp_server.handler.holding.wait(60), proc.stdout.read1(4000) if proc.poll() is not None else "no hold"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    smtp_server.handler.release.set()
    smtp_server.handler.hold_after = None
    with app.app_context():
        job = db.session.scalar(select(Job).order_by(Job.id.desc()))
        assert job.state == "running"
        # The runner is gone: once its heartbeat is stale the job is resumed.
        db.session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
        db.session.commit()
        job = run_job(job.id)
        assert job.state == "done" and job.done == 60
        states = dict(db.session.execute(select(Deployment.user_id, Deployment.send_state)
                                          .where(Deployment.superseded_at.is_(None))).all())
        items = {i.user_id: i for i in db.session.scalars(select(JobItem).where(JobItem.job_id == job.id))}
    received = smtp_server.handler.recipients()
    # Nobody received two messages.
    assert len(received) == len(set(received))
    for uid in ids:
        address = f"user{ids.index(uid):03d}@example.com"
        if states[uid] == "sent":
            assert received.count(address) == 1 and items[uid].outcome == "ok"
        else:
            # Interrupted mid-message: recorded as not sent (it may have arrived once).
            assert states[uid] == "unknown" and items[uid].outcome == "failed"
            assert received.count(address) <= 1
    assert list(states.values()).count("unknown") == 1
    assert list(states.values()).count("sent") == 59


# --- no SMTP: the outbox ---------------------------------------------------------

def test_outbox_when_no_smtp_server(app, admin_client):
    [uid] = make_users(app, 1)
    outbox = Path(app.instance_path) / "outbox"
    before = set(outbox.glob("*.eml")) if outbox.exists() else set()
    deploy(app, {"ids": [uid]})
    new = sorted(set(outbox.glob("*.eml")) - before)
    assert len(new) == 1 and oct(new[0].stat().st_mode & 0o777) == "0o600"
    m = parts(new[0].read_bytes())
    link = link_in(m["text"])
    with app.app_context():
        assert db.session.get(User, uid).deployed_at is not None
    page = admin_client.get("/outbox").get_data(as_text=True)
    assert new[0].name in page and "not sent" in page
    msg_page = admin_client.get(f"/outbox/{new[0].name}")
    assert msg_page.status_code == 200 and link in msg_page.get_data(as_text=True)
    img = admin_client.get(f"/outbox/{new[0].name}/cid/qr-code@cds")
    assert img.mimetype == "image/png" and decode_qr(img.data) == link
    frame = admin_client.get(f"/outbox/{new[0].name}/html")
    assert "sandbox" in frame.headers["Content-Security-Policy"]
    assert "script-src" not in frame.headers["Content-Security-Policy"]
    assert "data:image/png;base64," in frame.get_data(as_text=True)
    assert admin_client.get("/outbox/..%2Fcds.sqlite3").status_code == 404
    assert admin_client.get("/outbox/nothing.eml").status_code == 404


# --- force config, auto deploy -------------------------------------------------------

def _activate(client, link):
    token = link.rsplit("/", 1)[1]
    resp = client.post("/client/v1/activate", json={"token": token, "device": {"id": "dev-1", "platform": "ios",
                                                                                 "app_version": "9.1"}})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["client_key"]


def test_auto_deploy_and_force_config(app, smtp_server, client):
    use_smtp(app, smtp_server)
    ids = make_users(app, 3)
    deploy(app, {"ids": ids[:2]})
    key = _activate(client, link_in(parts(smtp_server.messages[0][1])["text"]))
    smtp_server.handler.messages.clear()
    job_id = deploy(app, {"ids": ids}, kind="auto_deploy")
    items = job_items(app, job_id)
    assert items["user000"] == ("ok", "Force config set.")
    # user001's link from the first e-mail is still valid and unused: not mailed again.
    assert items["user001"][0] == "skipped" and "still valid" in items["user001"][1]
    assert items["user002"] == ("ok", "Sent.")
    assert sorted(smtp_server.handler.recipients()) == ["user002@example.com"]
    status = client.get("/client/v1/status", headers={"Authorization": f"Bearer {key}"}).get_json()
    assert status["force_config"] is True
    job_id = deploy(app, {"ids": ids}, kind="force_config")
    items = job_items(app, job_id)
    assert items["user000"][0] == "ok"
    assert items["user001"][0] == "skipped" and "Deploy" in items["user001"][1]


# --- CLI and scheduled deployments -------------------------------------------------

def test_cli_deploy_by_login_id_and_bad_input(app, smtp_server):
    use_smtp(app, smtp_server)
    make_users(app, 3)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["cds", "deploy", "--user", "user001", "--user", "user002"])
    assert result.exit_code == 0, result.output
    assert "2 succeeded, 0 skipped, 0 failed" in result.output
    assert sorted(smtp_server.handler.recipients()) == ["user001@example.com", "user002@example.com"]
    for bad in (["cds", "deploy"], ["cds", "deploy", "--all", "--user", "user001"],
                ["cds", "deploy", "--user", "nobody"], ["cds", "deploy", "--all", "--at", "tomorrow"],
                ["cds", "deploy", "--all", "--at", "2001-01-01T00:00"]):
        result = runner.invoke(args=bad)
        assert result.exit_code != 0, bad
        assert "error:" in result.output
    assert len(smtp_server.messages) == 2
    result = runner.invoke(args=["cds", "force-config", "--all"])
    assert result.exit_code == 0 and "3 skipped" in result.output


def test_scheduled_deploy_survives_restart(app, smtp_server, make_app):
    use_smtp(app, smtp_server)
    make_users(app, 2)
    when = (utcnow() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    result = app.test_cli_runner().invoke(args=["cds", "deploy", "--all", "--at", when])
    assert result.exit_code == 0 and "scheduled" in result.output
    assert smtp_server.messages == []
    # A new process: nothing in memory, only the database.
    restarted = make_app()
    with restarted.app_context():
        job = db.session.scalar(select(Job))
        assert job.state == "scheduled" and job.kind == "deploy"
        job_id = job.id
        db.session.execute(update(Job).values(run_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        from cds.jobs.service import run_due
        run_due(restarted)
    smtp_server.wait_for(2)
    deadline = time.monotonic() + 20
    with restarted.app_context():
        while db.session.get(Job, job_id).state != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
            db.session.expire_all()
    assert sorted(smtp_server.handler.recipients()) == ["user000@example.com", "user001@example.com"]


def test_tokens_absent_from_logs(app, smtp_server, client):
    use_smtp(app, smtp_server)
    [uid] = make_users(app, 1)
    deploy(app, {"ids": [uid]})
    link = link_in(parts(smtp_server.messages[0][1])["text"])
    token = link.rsplit("/", 1)[1]
    assert client.get(f"/r/{token}").status_code == 302
    assert client.get(f"/deploy/{token}").status_code == 200
    assert client.get(f"/deploy/{token}/qr.png").status_code == 200
    key = _activate(client, link)
    client.get("/client/v1/config", headers={"Authorization": f"Bearer {key}"})
    for handler in __import__("logging").getLogger("cds").handlers:
        handler.flush()
    log_text = (Path(app.instance_path) / "logs" / "cds.log").read_text()
    assert "/deploy/tok:" in log_text
    assert token not in log_text and key not in log_text
    with app.app_context():
        for event in db.session.scalars(select(AuditEvent)):
            assert token not in str(event.detail) and key not in str(event.detail)


def test_issued_links_are_written_whole_and_loaded_as_written(app):
    """A batch's deployments are written in one statement: every column as a new
    Deployment object gets it (defaults included), the objects in the session are the
    rows as stored, in the users' order, and each link is in the redirect store."""
    from cds.deploy.service import issue_deployments
    from cds.models import Deployment as Dep, RedirectEntry
    from cds.security import token_hash
    ids = make_users(app, 3)
    with app.app_context():
        users = [db.session.get(User, i) for i in reversed(ids)]
        issued = issue_deployments(users, actor="alice", job_id=None)
        db.session.commit()
        assert [u.id for u, _, _ in issued] == list(reversed(ids))
        for user, dep, token in issued:
            assert dep in db.session and dep.user_id == user.id and dep.token_hash == token_hash(token)
            row = db.session.execute(select(Dep.__table__).where(Dep.id == dep.id)).mappings().one()
            assert {k: v for k, v in row.items() if k not in ("id", "issued_at", "expires_at")} == {
                "user_id": user.id, "token_hash": token_hash(token), "issued_by": "alice",
                "recipient": user.email, "send_state": "pending", "send_attempts": 0, "next_attempt_at": None,
                "send_error": None, "sent_at": None, "used_at": None, "used_device_id": None, "used_ip": None,
                "superseded_at": None, "revoked_at": None, "job_id": None}
            assert row["expires_at"] - row["issued_at"] == timedelta(hours=user.profile.link_validity_hours)
            assert {c: getattr(dep, c) for c in row.keys()} == dict(row)
            entry = db.session.get(RedirectEntry, dep.token_hash)
            assert entry.expires_at == dep.expires_at and entry.cds_url == "http://cds.test"
        assert issue_deployments([]) == []
