"""Scale-out: several real server processes on one database.

On PostgreSQL: exactly one process runs the scheduler, a scheduled deploy is sent
exactly once, and when that process is killed another takes over. With Redis: two
processes share the login throttle through CDS_RATELIMIT_STORAGE_URI."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from cds import ROOT
from cds.extensions import db
from cds.models import Deployment, Job, User, utcnow
from tests.conftest import configure_default_profile, free_port

PG_URL = os.environ.get("CDS_TEST_DATABASE_URL", "")
SHARED_KEYS = {"CDS_ENCRYPTION_KEY": Fernet.generate_key().decode(),
               "CDS_SECRET_KEY": "scale-out-test-session-key-" + uuid.uuid4().hex}


class Server:
    """`flask --app app cds serve` in its own process, as a service manager would start it."""

    def __init__(self, name: str, workdir: Path, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = workdir / f"{name}.out"
        full_env = {**os.environ, **SHARED_KEYS, "CDS_INSTANCE_PATH": str(workdir / name),
                    "CDS_PUBLIC_URL": "http://cds.test", **env}
        full_env.pop("CDS_TEST_DATABASE_URL", None)
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "app", "cds", "serve", "--port", str(self.port)],
                cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)

    def health(self) -> dict | None:
        try:
            return requests.get(self.url + "/healthz", timeout=5).json()
        except (requests.RequestException, ValueError):
            return None

    def wait_ready(self, deadline: float = 60) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.output.read_text()[-2000:]}")
            if self.health():
                return
            time.sleep(0.2)
        raise AssertionError(f"server not ready: {self.output.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def servers(tmp_path):
    started: list[Server] = []

    def start(name: str, **env) -> Server:
        server = Server(name, tmp_path, env)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


def poll(check, deadline: float, message: str, every: float = 0.25):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(message)


# --- one scheduler among several processes on PostgreSQL ---------------------------------

@pytest.fixture
def scaleout_database():
    if not PG_URL.startswith("postgresql"):
        pytest.skip("scale-out runs on PostgreSQL: set CDS_TEST_DATABASE_URL=postgresql://…")
    name = f"cds_scaleout_{uuid.uuid4().hex[:8]}"
    base = make_url(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield base.set(database=name).render_as_string(hide_password=False).replace(
        "postgresql+psycopg://", "postgresql://", 1)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def schedule_deploy(app, login_ids: list[str], seconds_ahead: int = 3) -> int:
    from cds.jobs.service import create_job
    from cds.profiles.service import default_profile
    with app.app_context():
        configure_default_profile()  # its own database: Deploy skips a profile without servers
        profile = default_profile()
        users = []
        for login_id in login_ids:
            user = User(login_id=login_id, last_name="Scale", email=f"{login_id}@example.com",
                        profile_id=profile.id)
            user.set_secret("voicemail_pin", "2468")
            users.append(user)
        db.session.add_all(users)
        db.session.commit()
        job = create_job("deploy", {"ids": [u.id for u in users]}, actor="scale-test",
                         run_at=utcnow() + timedelta(seconds=seconds_ahead))
        assert job.state == "scheduled"
        return job.id


def finished_job(app, job_id: int) -> Job | None:
    with app.app_context():
        job = db.session.get(Job, job_id)
        db.session.expunge(job)
        db.session.rollback()
        return job if job.finished else None


def deployments_of(app, job_id: int) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Deployment).where(Deployment.job_id == job_id))


def test_one_scheduler_runs_scheduled_jobs_once_and_another_takes_over(
        scaleout_database, servers, smtp_server, make_app, tmp_path):
    smtp_port = smtp_server.port
    env = {"CDS_DATABASE_URL": scaleout_database, "CDS_SCHEDULER_TICK_SECONDS": "1",
           "CDS_MAIL_SERVER": "127.0.0.1", "CDS_MAIL_PORT": str(smtp_port)}
    # Started one after the other: the first start applies the migrations.
    first = servers("node-a", **env)
    second = servers("node-b", **env)
    nodes = (first, second)
    states = {n: n.health()["scheduler"] for n in nodes}
    assert sorted(states.values()) == ["active", "standby"], states
    active = next(n for n in nodes if states[n] == "active")
    standby = next(n for n in nodes if n is not active)
    assert all(n.health()["database"]["ok"] for n in nodes)

    # The test's own process writes to the same database (as the console of any node would).
    console = make_app(DATABASE_URL=scaleout_database, instance_path=str(tmp_path / "console"),
                       ENCRYPTION_KEY=SHARED_KEYS["CDS_ENCRYPTION_KEY"],
                       SECRET_KEY=SHARED_KEYS["CDS_SECRET_KEY"])
    logins = [f"scale{i}" for i in range(5)]
    job_id = schedule_deploy(console, logins)
    job = poll(lambda: finished_job(console, job_id), 60, "the scheduled deploy never ran")
    assert (job.state, job.succeeded) == ("done", 5)
    assert job.runner.endswith(f":{active.process.pid}")
    # Two more scheduled jobs, each started once the one before has ended: when the second
    # has finished, later ticks of the scheduler have run, and nothing was sent a second time.
    for n in range(2):
        marker = schedule_deploy(console, [f"mark{n}"], seconds_ahead=1)
        poll(lambda marker=marker: finished_job(console, marker), 60, "a later scheduled job never ran")
    assert sorted(smtp_server.handler.recipients()) == \
        sorted(f"{x}@example.com" for x in [*logins, "mark0", "mark1"])
    assert deployments_of(console, job_id) == 5

    # The active node dies without a chance to clean up; the other takes over.
    active.process.send_signal(signal.SIGKILL)
    active.process.wait(10)
    poll(lambda: (standby.health() or {}).get("scheduler") == "active", 75,
         "the standby node did not take over the scheduler within the deadline", every=0.5)
    later = schedule_deploy(console, ["late0", "late1"])
    job = poll(lambda: finished_job(console, later), 60, "no scheduler ran the job after the takeover")
    assert (job.state, job.succeeded) == ("done", 2)
    assert job.runner.endswith(f":{standby.process.pid}")
    assert sorted(r for r in smtp_server.handler.recipients() if r.startswith("late")) == \
        ["late0@example.com", "late1@example.com"]


# --- rate limits shared through Redis ---------------------------------------------------------

def redis_reachable() -> bool:
    try:
        import redis  # noqa: F401  (Flask-Limiter's redis storage needs it)
    except ImportError:
        return False
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def failed_sign_in(server: Server, session: requests.Session, username: str) -> int:
    page = session.get(server.url + "/login").text
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    return session.post(server.url + "/login", allow_redirects=False, data={
        "username": username, "password": "not the password", "csrf_token": token}).status_code


@pytest.mark.skipif(not redis_reachable(), reason="needs Redis on 127.0.0.1:6379 and the redis package")
def test_two_processes_share_the_login_throttle_through_redis(servers, tmp_path):
    env = {"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.sqlite3'}",
           "CDS_RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0",
           "CDS_LOGIN_LIMIT_PER_ACCOUNT": "3/minute",
           "CDS_LOGIN_LIMIT_PER_ADDRESS": "1000/minute",
           "CDS_SCHEDULER_ENABLED": "false"}
    first = servers("web-a", **env)
    second = servers("web-b", **{**env, "CDS_INSTANCE_PATH": str(tmp_path / "web-a")})
    username = f"nobody-{uuid.uuid4().hex[:8]}"
    a, b = requests.Session(), requests.Session()
    # Three failures spread over both processes use up the account's allowance on both.
    assert [failed_sign_in(first, a, username), failed_sign_in(second, b, username),
            failed_sign_in(first, a, username)] == [401, 401, 401]
    assert failed_sign_in(second, b, username) == 429
    assert failed_sign_in(first, a, username) == 429
