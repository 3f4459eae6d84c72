"""Never twice, never lost: every fault injected for real, outcomes counted per user.

Each test runs a bulk action under one fault and then checks, from the database and
from the receiving side's own record (the SMTP server's list of messages, or the
outbox folder): nobody received a message twice, every user ended sent or recorded
as not sent with its reason, the job's counters equal the number of users, and the
scheduler still runs jobs afterwards.

The claim times are scaled down (heartbeat 0.2 s, stale after 1 s) so that a batch
outlasts the claim by several times, as a 150-user batch on a 1-message-a-second
relay outlasts the default 30 s: a runner that did not renew its claim would be
taken over during these tests, in seconds instead of minutes.
"""
from __future__ import annotations

import email
import email.policy
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select, update

from cds.extensions import db
from cds.models import Deployment, Job, JobItem, SourceRecord, User, utcnow
from tests.conftest import configure_default_profile, free_port
from tests.fixtures.source_server import PASSWORD, USERNAME, SourceServer, usa_user
from tests.mailsink import MailSink, link_in, parts
from tests.deploy.test_deploy import make_users, use_smtp

FAST_CLAIMS = {"JOB_HEARTBEAT_SECONDS": 0.2, "JOB_STALE_SECONDS": 1}
SCHEDULED = {"SCHEDULER_ENABLED": True, "JOB_EXECUTION": "thread", "SCHEDULER_TICK_SECONDS": 0.2,
             **FAST_CLAIMS}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sink():
    s = MailSink().start()
    yield s
    s.stop()


@pytest.fixture
def claims(monkeypatch):
    """Counts every successful claim of a job (a start or a take-over)."""
    from cds.jobs import service
    counts: Counter = Counter()
    original = service._claim

    def counting(job_id):
        claim = original(job_id)
        if claim is not None:
            counts[job_id] += 1
        return claim

    monkeypatch.setattr(service, "_claim", counting)
    return counts


def wait_until(predicate, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def job_state(app, job_id) -> str:
    with app.app_context():
        return db.session.get(Job, job_id).state


def wait_for_job(app, job_id, timeout: float = 120.0) -> None:
    wait_until(lambda: job_state(app, job_id) in ("done", "failed", "cancelled"), timeout,
               f"job {job_id} to finish")


def assert_every_user_accounted_for(app, job_id, user_ids, received: Counter) -> dict:
    """The promise, checked per user. ``received``: messages per recipient address as the
    receiving side recorded them. Returns {user id: (outcome, reason)}."""
    with app.app_context():
        job = db.session.get(Job, job_id)
        items = list(db.session.scalars(select(JobItem).where(JobItem.job_id == job_id)))
        users = {u.id: u for u in db.session.scalars(select(User).where(User.id.in_(user_ids)))}
        deps = list(db.session.scalars(select(Deployment).where(Deployment.job_id == job_id)))
        # Job counters count users, not attempts.
        assert sorted(i.user_id for i in items) == sorted(user_ids), "one item per user"
        assert job.done == job.total == len(user_ids)
        assert job.succeeded + job.skipped + job.failed == len(user_ids)
        outcomes = {}
        for item in items:
            # A final state, or a recorded reason.
            assert item.outcome in ("ok", "skipped", "failed")
            assert item.outcome == "ok" or item.message.strip(), f"no reason for {item.login_id}"
            outcomes[item.user_id] = (item.outcome, item.message)
        for dep in deps:
            assert dep.send_state != "sending", f"deployment {dep.id} left 'sending'"
            assert dep.send_state == "sent" or dep.send_error, f"deployment {dep.id} has no reason"
        sent = Counter(d.user_id for d in deps if d.send_state == "sent")
        for uid, user in users.items():
            # Never twice: at most one message per user, by the receiving side's record.
            assert received[user.email] <= 1, f"{user.email} received {received[user.email]} messages"
            assert sent[uid] <= 1
            if sent[uid]:
                assert received[user.email] == 1, f"{user.email} recorded as sent but not received"
            if outcomes[uid][0] == "ok":
                assert sent[uid] == 1
        return outcomes


def assert_scheduler_runs_jobs(app, user_ids) -> None:
    """A new job, left to the scheduler of ``app``, runs to its end."""
    from cds.jobs.service import create_job
    with app.app_context():
        job_id = create_job("force_config", {"ids": user_ids}, run_at=utcnow() + timedelta(seconds=0.5),
                            actor="alice").id
    wait_for_job(app, job_id, 60)
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job.state == "done" and job.done == len(user_ids)


def sink_received(sink) -> Counter:
    return Counter(sink.handler.recipients())


def outbox_received(folder: Path) -> Counter:
    out: Counter = Counter()
    for path in folder.glob("*.eml"):
        # By address: To: carries the user's name too ("Ann User <user000@example.com>").
        to = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["To"]
        out[to.addresses[0].addr_spec] += 1
    return out


# --- slow SMTP and a throttled relay --------------------------------------------------

@pytest.mark.parametrize("fault", ["throttled-relay", "slow-smtp"])
def test_batches_longer_than_the_claim_are_never_taken_over(app, make_app, sink, claims, monkeypatch, fault):
    """A relay that takes one message a second (CDS paces at MAIL_RATE_LIMIT=60), or an
    SMTP server taking 0.7 s a message: every batch outlasts the claim's stale time
    several times over, while the scheduler looks for stale jobs every 0.2 s."""
    from cds.jobs.service import ACTIONS, create_job, submit
    monkeypatch.setattr(ACTIONS["deploy"], "batch_size", 4)
    if fault == "throttled-relay":
        sink.handler.per_minute = 60
        use_smtp(app, sink, MAIL_RATE_LIMIT=60)
    else:
        sink.handler.delay = 0.7
        use_smtp(app, sink)
    ids = make_users(app, 8)
    worker = make_app(**SCHEDULED)
    with worker.app_context():
        job = create_job("deploy", {"ids": ids}, actor="alice")
        submit(job)
        job_id = job.id
    # Meanwhile another node tries to take the job over, as a scheduler elsewhere would
    # (this process's own scheduler never starts a second runner of a job it runs).
    other_node = threading.Thread(target=_try_to_take_over, args=(worker, job_id))
    other_node.start()
    wait_for_job(worker, job_id)
    other_node.join()
    # Started once: never taken over while its runner lived.
    assert claims[job_id] == 1
    outcomes = assert_every_user_accounted_for(worker, job_id, ids, sink_received(sink))
    if fault == "slow-smtp":
        assert all(o == "ok" for o, _ in outcomes.values())
    # Paced: the relay refused nothing for going too fast (a refusal would be retried anyway).
    assert sink.handler.throttled == 0
    # Each runner had its own SMTP connection, used for the whole run.
    assert sink.handler.connections == 1
    assert_scheduler_runs_jobs(worker, ids)


def _try_to_take_over(app, job_id) -> None:
    from cds.jobs import service
    with app.app_context():
        wait_until(lambda: job_state(app, job_id) != "queued", 60, "the job to start")
        while job_state(app, job_id) == "running":
            service._claim(job_id)  # counted by ``claims`` if it ever succeeded
            time.sleep(0.1)
        db.session.remove()


def test_a_dead_runner_is_taken_over_promptly(app, make_app, sink, claims):
    """The claim of a runner that stopped renewing it (it died) is stale after
    JOB_STALE_SECONDS, and the scheduler resumes the job after the last user recorded."""
    from cds.jobs.service import create_job
    use_smtp(app, sink)
    ids = make_users(app, 5)
    with app.app_context():
        job = create_job("deploy", {"ids": ids}, actor="alice")
        # A runner on another machine claimed it and died before its first message.
        db.session.execute(update(Job).where(Job.id == job.id).values(
            state="running", runner="elsewhere:4242:dead", heartbeat_at=utcnow()))
        db.session.commit()
        job_id = job.id
    worker = make_app(**SCHEDULED)
    with worker.test_request_context():
        worker.preprocess_request()  # a served request starts the scheduler
    wait_for_job(worker, job_id, 60)
    assert claims[job_id] == 1
    assert_every_user_accounted_for(worker, job_id, ids, sink_received(sink))


def test_a_runner_that_lost_its_claim_stops_before_handing_over(app, sink):
    """Two runners never both hand a message over: a runner whose claim was taken over
    (it was presumed dead) stops at its next message, and sends nothing more."""
    from cds.deploy.service import issue_deployment, send_deployment_mail, MailRun
    from cds.jobs.service import ClaimLost, create_job, _claim, _claim_var
    use_smtp(app, sink)
    [uid] = make_users(app, 1)
    with app.app_context():
        job = create_job("deploy", {"ids": [uid]}, actor="alice")
        claim = _claim(job.id)
        user = db.session.get(User, uid)
        dep, token = issue_deployment(user, job_id=job.id)
        db.session.commit()
        # Another runner takes the job over.
        db.session.execute(update(Job).where(Job.id == job.id).values(runner="other:1:abc"))
        db.session.commit()
        reset = _claim_var.set(claim)
        run = MailRun()
        try:
            with pytest.raises(ClaimLost):
                send_deployment_mail(run, user, dep, token)
        finally:
            _claim_var.reset(reset)
            run.close()
        assert db.session.get(Deployment, dep.id).send_state == "pending"
    assert sink.messages == []


def test_a_job_that_stops_on_an_unexpected_error_records_every_user(app, sink, monkeypatch):
    """A bug mid-run (here: the second batch raises): the job fails, and every user it did
    not reach is recorded with the reason; those it did are recorded as they are."""
    from cds.deploy import service as deploy
    from cds.jobs.service import ACTIONS, _run_in_context, create_job
    use_smtp(app, sink)
    ids = make_users(app, 9)
    monkeypatch.setattr(ACTIONS["deploy"], "batch_size", 4)
    original = deploy.compose_deployment_mail
    calls = Counter()

    def compose(run, user, dep, token, png=None):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("a bug")
        return original(run, user, dep, token, png)

    monkeypatch.setattr(deploy, "compose_deployment_mail", compose)
    with app.app_context():
        job_id = create_job("deploy", {"ids": ids}, actor="alice").id
    _run_in_context(app, job_id)
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job.state == "failed" and "unexpected error" in job.message
    outcomes = assert_every_user_accounted_for(app, job_id, ids, sink_received(sink))
    assert [o for o, _ in outcomes.values()].count("ok") == 5  # the first batch, and one more
    assert all("unexpected error" in m for o, m in outcomes.values() if o == "failed")


# --- a full disk ------------------------------------------------------------------------

def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "cds-test", str(path)],
                          capture_output=True).returncode == 0


class SimulatedFullDisk:
    """Where the test may not mount a filesystem (no root, a container without the
    right), a full disk is simulated at the write calls, with the errors a full disk
    gives: every SQL write fails as SQLite fails on a full disk ("database or disk is
    full"), and creating an outbox file fails with ENOSPC."""

    def __init__(self, monkeypatch, engines, sql: bool):
        import errno
        import sqlite3

        from sqlalchemy import event
        from sqlalchemy.exc import OperationalError

        from cds.mail import transport
        self.full = False
        real_open = transport.os.open

        def outbox_open(path, flags, mode=0o777, *args, **kwargs):
            if self.full and str(path).endswith(".part"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, flags, mode, *args, **kwargs)

        def sql_write(conn, cursor, statement, parameters, context, executemany):
            if self.full and statement.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
                raise OperationalError(statement, parameters, sqlite3.OperationalError("database or disk is full"))

        monkeypatch.setattr(transport.os, "open", outbox_open)
        if sql:
            for engine in engines:
                event.listen(engine, "before_cursor_execute", sql_write)
            self._listeners = [(engine, sql_write) for engine in engines]
        else:
            self._listeners = []

    def remove(self) -> None:
        from sqlalchemy import event
        for engine, fn in self._listeners:
            event.remove(engine, "before_cursor_execute", fn)


def _fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of ``folder``, then free ``leave`` bytes."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def test_full_disk(make_app, database_url, tmp_path, claims, monkeypatch):
    """An 8 MB filesystem (a tmpfs; where the test cannot mount one, the full disk is
    simulated at the write calls, see SimulatedFullDisk), filled up while a Deploy writes
    to the outbox. On SQLite the database lives there too: the job pauses on the
    storage error, /healthz says the database cannot be written, reads still answer,
    and once space is freed the job resumes by itself. On PostgreSQL only the outbox is
    full: each user is recorded as not handed over, with the reason, and retried."""
    from cds.settings.tokens import create_api_token
    from cds.cli import upgrade_database
    from cds.jobs.service import create_job
    from cds.profiles.service import ensure_builtin_profiles

    fs = tmp_path / "fs"
    # CDS_TEST_SIMULATE_FULL_DISK=1 runs the simulation even where a tmpfs could be mounted.
    mounted = not os.environ.get("CDS_TEST_SIMULATE_FULL_DISK") and _can_mount_tmpfs(fs)
    simulated = None
    apps = []
    try:
        instance = fs / "instance"
        on_sqlite = database_url.startswith("sqlite")
        url = f"sqlite:///{instance / 'cds.sqlite3'}" if on_sqlite else database_url
        base = make_app(instance_path=str(instance), DATABASE_URL=url)
        apps.append(base)
        with base.app_context():
            if on_sqlite:
                upgrade_database()
            else:
                from tests.conftest import empty_database
                empty_database()
            ensure_builtin_profiles()
            configure_default_profile()
            _, api_token = create_api_token("monitor", "readonly")
        ids = make_users(base, 40)
        # One user's phone is set up already, and keeps checking its status.
        from tests.client.test_client_protocol import activate, bearer, issue
        client_key = activate(base.test_client(), issue(base, ids[0])).get_json()["client_key"]
        with base.app_context():
            job_id = create_job("deploy", {"ids": ids}, actor="alice",
                                run_at=utcnow() + timedelta(hours=1)).id
        worker = make_app(instance_path=str(instance), DATABASE_URL=url, **SCHEDULED)
        apps.append(worker)
        client = worker.test_client()
        assert client.get("/healthz").status_code == 200  # starts the scheduler

        outbox = instance / "outbox"
        if mounted:
            filler = _fill(fs, leave=160 * 1024)
        with base.app_context():
            db.session.execute(update(Job).where(Job.id == job_id).values(run_at=utcnow()))
            db.session.commit()
        if not mounted:
            wait_until(lambda: len(list(outbox.glob("*.eml"))) >= 5, 60, "the first messages")
            engines = []
            for a in (base, worker):
                with a.app_context():
                    engines.append(db.engine)
            simulated = SimulatedFullDisk(monkeypatch, engines, sql=on_sqlite)
            simulated.full = True

        def disk_full_seen():
            with base.app_context():
                retry = db.session.scalar(select(func.count()).select_from(Deployment)
                                          .where(Deployment.send_state == "retry"))
            if retry:
                return True
            body = client.get("/healthz").get_json()
            return body["database"].get("writable") is False

        wait_until(disk_full_seen, 90, "the disk to be full")
        if on_sqlite:
            from cds.health import service as health
            health._last_probe.clear()
            resp = client.get("/healthz")
            assert resp.status_code == 503
            body = resp.get_json()
            assert body["status"] == "degraded" and body["database"]["ok"] is True
            assert body["database"]["writable"] is False and "full" in body["database"]["write_error"]
        # Reads answer although their bookkeeping (the token's last use) cannot be written.
        listed = client.get("/api/v1/users", headers={"Authorization": f"Bearer {api_token}"})
        assert listed.status_code == 200 and listed.get_json()["total"] == 40
        # So does the phone's status check (from a new address: its last contact would be written).
        status = client.get("/client/v1/status", headers=bearer(client_key),
                            environ_base={"REMOTE_ADDR": "192.0.2.7"})
        assert status.status_code == 200 and "config_version" in status.get_json()

        if mounted:
            filler.unlink()
        else:
            simulated.full = False
        wait_for_job(worker, job_id, 120)
        # Messages not handed over while the disk was full are retried (now, not in a minute).
        with base.app_context():
            db.session.execute(update(Deployment).where(Deployment.send_state == "retry")
                               .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
            db.session.commit()

        def retries_done():
            with base.app_context():
                return not db.session.scalar(select(func.count()).select_from(Deployment).where(
                    Deployment.job_id == job_id, Deployment.send_state.in_(["retry", "pending", "sending"]),
                    Deployment.superseded_at.is_(None)))

        wait_until(retries_done, 90, "the retries")
        received = outbox_received(outbox)
        assert_every_user_accounted_for(worker, job_id, ids, received)
        with base.app_context():
            states = Counter(db.session.scalars(select(Deployment.send_state).where(
                Deployment.job_id == job_id, Deployment.superseded_at.is_(None))))
        # Handed over exactly once, or known not handed over: a hand-over interrupted by
        # the full database is settled from the outbox itself (the file is there, or not).
        assert set(states) <= {"sent", "failed"} and sum(states.values()) == 40
        assert sum(received.values()) == states["sent"] >= 35
        health_after = client.get("/healthz")
        assert health_after.status_code == 200 and health_after.get_json()["database"]["writable"] is True
        assert_scheduler_runs_jobs(worker, ids)
    finally:
        if simulated is not None:
            simulated.full = False
            simulated.remove()
        for a in apps:
            leader = a.extensions.get("cds_scheduler")
            if leader is not None:
                leader.stop()
            with a.app_context():
                db.session.remove()
                db.engine.dispose()
        if mounted:
            _unmount(fs)


# --- a read-only outbox folder -----------------------------------------------------------

def test_read_only_outbox_keeps_the_previous_links_and_records_why(make_app, tmp_path):
    """A Deploy with instance/outbox/ not writable: every user is recorded as not handed
    over, with the reason; their earlier links keep working; when the folder is writable
    again the retry hands each message over once, and only then are the old links replaced."""
    from cds.deploy.service import resend_due, view_link
    from cds.jobs.service import create_job, run_job
    from cds.profiles.service import ensure_builtin_profiles
    from tests.conftest import empty_database

    instance = tmp_path / "instance"
    app = make_app(instance_path=str(instance))
    with app.app_context():
        empty_database()
        ensure_builtin_profiles()
        configure_default_profile()
    ids = make_users(app, 12)
    outbox = instance / "outbox"
    with app.app_context():
        first = run_job(create_job("deploy", {"ids": ids}, actor="alice").id)
        assert first.succeeded == 12
    old_links = {}
    for path in outbox.glob("*.eml"):
        p = parts(path.read_bytes())
        old_links[p["to"]] = link_in(p["text"]).rsplit("/", 1)[1]
    assert len(old_links) == 12

    mounted = os.geteuid() == 0
    if mounted:
        # Root writes through permission bits: a read-only mount is what stops root.
        subprocess.run(["mount", "--bind", str(outbox), str(outbox)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(outbox)], check=True)
    else:
        outbox.chmod(0o500)
    try:
        with app.app_context():
            job = run_job(create_job("deploy", {"ids": ids}, actor="alice").id)
            job_id = job.id
            assert job.failed == 12 and job.state == "failed"
            items = list(db.session.scalars(select(JobItem).where(JobItem.job_id == job_id)))
            assert all("outbox folder" in i.message and "cannot be written" in i.message and
                       "retried automatically" in i.message for i in items)
            users = db.session.scalars(select(User).where(User.id.in_(ids)))
            assert all("cannot be written" in u.send_error for u in users)
            # The links sent before still work.
            assert {view_link(t).state for t in old_links.values()} == {"valid"}
        assert len(list(outbox.glob("*.eml"))) == 12
    finally:
        if mounted:
            subprocess.run(["umount", str(outbox)], check=True)
        else:
            outbox.chmod(0o700)
    with app.app_context():
        db.session.execute(update(Deployment).where(Deployment.send_state == "retry")
                           .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        assert resend_due() == 12
        assert {view_link(t).state for t in old_links.values()} == {"superseded"}
    # Per deployment: one message at most; per user: the first run's and the retried one.
    labels = Counter(path.name.split("-")[1] for path in outbox.glob("*.eml"))
    assert set(labels.values()) == {1}
    received = outbox_received(outbox)
    assert set(received.values()) == {2}
    second = Counter({address: n - 1 for address, n in received.items()})
    assert_every_user_accounted_for(app, job_id, ids, second)
    worker = make_app(instance_path=str(instance), **SCHEDULED)
    assert worker.test_client().get("/healthz").status_code == 200
    assert_scheduler_runs_jobs(worker, ids)


# --- a source that never ends ------------------------------------------------------------

@pytest.fixture
def endless_source():
    server = SourceServer([usa_user(i) for i in range(1, 6)]).start()
    yield server
    server.stop()


@pytest.mark.parametrize("bound, options, server_setup, reason", [
    ("records", {"max_records": 300}, {}, "more than 300 users"),
    ("pages", {"max_pages": 4}, {}, "more than 4 pages"),
    ("bytes", {"max_megabytes": 1}, {"padding": 20_000}, "more than 1 MB"),
    ("time", {"max_seconds": 1}, {"page_delay": 0.3}, "longer than the time allowed"),
])
def test_an_endless_source_stops_at_a_bound_and_changes_nothing(app, make_app, endless_source, bound,
                                                                 options, server_setup, reason):
    from cds.connections.service import (ConnectionSettings, create_connection, refresh_source_records,
                                         sync_selection)
    from cds.imports.service import import_records
    from cds.sources import SourceLimitError

    with app.app_context():
        conn = create_connection(ConnectionSettings(
            name="USA", kind="usa", url=endless_source.url, username=USERNAME,
            options={"timeout": 5, "page_size": 100, **options}), PASSWORD)
        conn_id = conn.id
        refresh_source_records(conn)
        import_records({"filter": {"connection": str(conn_id)}})
        ids = list(db.session.scalars(select(User.id).order_by(User.id)))
        before = db.session.execute(select(User.login_id, User.last_name).order_by(User.id)).all()
    assert len(ids) == 5
    endless_source.mode = "endless"
    for key, value in server_setup.items():
        setattr(endless_source, key, value)
    with app.app_context():
        conn = db.session.get(type(conn), conn_id)
        with pytest.raises(SourceLimitError) as caught:
            refresh_source_records(conn)
        assert reason in str(caught.value) and "Nothing was changed" in str(caught.value)
        conn = db.session.get(type(conn), conn_id)
        assert conn.last_sync_ok is False and reason in conn.last_sync_message
        assert db.session.scalar(select(func.count()).select_from(SourceRecord)) == 5
        # Sync data of the imported users: each is reported with the reason, nothing changes.
        job = db.session.get(Job, sync_selection({"ids": ids}, wait=True).id)
        items = list(db.session.scalars(select(JobItem).where(JobItem.job_id == job.id)))
        assert job.done == job.total == 5 and len(items) == 5
        assert all(i.outcome == "failed" and reason in i.message for i in items)
        assert db.session.execute(select(User.login_id, User.last_name).order_by(User.id)).all() == before
    # The read stopped at the bound: far fewer pages than an unbounded read would fetch.
    assert endless_source.user_requests < 60
    worker = make_app(**SCHEDULED)
    assert worker.test_client().get("/healthz").status_code == 200
    assert_scheduler_runs_jobs(worker, ids)


def test_connection_limits_are_validated_and_kept(app, admin_client):
    from cds.connections.service import ConnectionProblem, ConnectionSettings, create_connection
    server = SourceServer([usa_user(1)]).start()
    try:
        with app.app_context():
            with pytest.raises(ConnectionProblem) as caught:
                create_connection(ConnectionSettings(name="USA", kind="usa", url=server.url, username=USERNAME,
                                                     options={"max_records": "lots"}), PASSWORD)
            assert "max_records" in caught.value.errors
            conn = create_connection(ConnectionSettings(name="USA", kind="usa", url=server.url, username=USERNAME,
                                                        options={"max_records": "5000", "max_seconds": ""}),
                                     PASSWORD)
            assert conn.options["max_records"] == 5000 and "max_seconds" not in conn.options
            conn_id = conn.id
        page = admin_client.get(f"/connections/{conn_id}")
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert 'name="max_records"' in text and 'value="5000"' in text and 'placeholder="600"' in text
        runner = app.test_cli_runner()
        result = runner.invoke(args=["cds", "connections", "limits", "USA", "--max-pages", "7"])
        assert result.exit_code == 0, result.output
        assert "max_pages: 7 pages" in result.output and "max_records: 5,000 users" in result.output
        assert "max_seconds: 600 seconds  (default)" in result.output
        result = runner.invoke(args=["cds", "connections", "limits", "USA", "--max-pages", "0"])
        assert result.exit_code != 0 and "max_pages" in result.output
    finally:
        server.stop()


# --- the scheduler's own failures ------------------------------------------------------------

def test_a_failing_task_backs_off_and_the_others_run_on(make_app, monkeypatch):
    from cds import scheduler
    calls = Counter()

    def broken(app):
        calls["broken"] += 1
        raise OSError(28, "No space left on device")

    def fine(app):
        calls["fine"] += 1

    monkeypatch.setitem(scheduler.TICK_TASKS, "test.broken", (broken, 1))
    monkeypatch.setitem(scheduler.TICK_TASKS, "test.fine", (fine, 1))
    monkeypatch.setattr(scheduler, "_failures", {})
    app = make_app()
    key = app.instance_path + "|" + app.config["SQLALCHEMY_DATABASE_URI"]
    monkeypatch.setitem(scheduler._apps, key, app)
    for _ in range(12):
        scheduler.tick(key)
    assert calls["fine"] == 12
    # Backed off: 1, 2, 4, 8 ticks between tries, not a try every tick.
    assert 3 <= calls["broken"] <= 5


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_healthz_reports_a_dead_scheduler_thread_until_the_watchdog_restarts_it(make_app, app, tmp_path,
                                                                               monkeypatch):
    from cds import scheduler
    monkeypatch.setattr(scheduler, "RETRY_SECONDS", 0.3)
    worker = make_app(instance_path=str(tmp_path), **SCHEDULED)
    client = worker.test_client()
    assert client.get("/healthz").get_json()["scheduler"] == "active"
    leader = worker.extensions["cds_scheduler"]
    first = leader.scheduler
    # The scheduler's own thread dies, as it did when its job store could not be written.
    store = first._jobstores["default"]

    def broken_update(job):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "update_job", broken_update)
    # (Once the watchdog has replaced it, the old scheduler has no thread at all.)
    wait_until(lambda: first._thread is None or not first._thread.is_alive(), 30,
               "the scheduler thread to die")
    # Until the watchdog's next look it is reported; then it is running again.
    body = None
    for _ in range(50):
        resp = client.get("/healthz")
        body = resp.get_json()
        if body["scheduler"] == "stalled":
            assert resp.status_code == 503 and body["status"] == "degraded"
            assert "died" in body["scheduler_problem"]
            break
        if leader.scheduler is not first:
            break  # already restarted
    wait_until(lambda: leader.scheduler is not first and leader.running, 30, "the restart")
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json()["scheduler"] == "active"
    ids = make_users(app, 2)
    assert_scheduler_runs_jobs(worker, ids)


def test_healthz_reports_a_stuck_tick(make_app, tmp_path, monkeypatch):
    from cds import scheduler
    release = threading.Event()
    monkeypatch.setitem(scheduler.TICK_TASKS, "test.stuck", (lambda app: release.wait(30), 1))
    worker = make_app(instance_path=str(tmp_path), SCHEDULER_STALL_SECONDS=1, **SCHEDULED)
    client = worker.test_client()
    try:
        client.get("/healthz")
        body = wait_until(lambda: (lambda b: b if b["scheduler"] == "stalled" else None)(
            client.get("/healthz").get_json()), 30, "a stalled report")
        assert body["status"] == "degraded" and "stalled" in body["scheduler_problem"]
    finally:
        release.set()


# --- no process left behind ------------------------------------------------------------------

def _descendants(pid: int) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_no_process_outlives_the_server(app, sink, database_url, instance_dir, how):
    """`cds serve` draws a large run's QR codes in worker processes; however the server
    ends, they end too (checked in the process table)."""
    from cds.jobs.service import create_job
    use_smtp(app, sink)
    ids = make_users(app, 50)  # cds.mail.qr.POOL_MIN_CODES: drawn in worker processes
    sink.handler.hold_after = 3
    port = free_port()
    env = dict(os.environ, CDS_DATABASE_URL=database_url, CDS_INSTANCE_PATH=instance_dir,
               CDS_PUBLIC_URL="http://cds.test", CDS_SCHEDULER_ENABLED="true", CDS_LOG_LEVEL="WARNING",
               CDS_SCHEDULER_TICK_SECONDS="1", CDS_MAIL_TIMEOUT="5",
               CDS_SERVE_MIGRATED="1")  # the test database is migrated already
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "cds", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _healthy(port), 60, "the server")
        with app.app_context():
            create_job("deploy", {"ids": ids}, actor="alice", run_at=utcnow() + timedelta(seconds=0.5))
        assert sink.handler.holding.wait(60), "the run did not start"
        family = _descendants(proc.pid)
        assert any("forkserver" in cmd for cmd in family.values()), family
        proc.send_signal(getattr(signal, how))
        sink.handler.release.set()
        proc.wait(60)
        wait_until(lambda: not any(_alive(pid) for pid in family), 30, "the worker processes to end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sink.handler.release.set()


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
