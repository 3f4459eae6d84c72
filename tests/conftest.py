"""Shared fixtures: an app on a migrated database (SQLite, or PostgreSQL when
CDS_TEST_DATABASE_URL is set), signed-in clients that send the CSRF token the
way the pages do, and helpers to create administrators."""
from __future__ import annotations

import os
import shutil
import re
import socket
import uuid

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cds import create_app
from cds.extensions import db

TEST_PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def logging_kept():
    """A test that runs migrations lets Alembic's env.py re-configure logging (levels, and
    handlers on the stream captured for that test); put it back afterwards, or later tests
    log to a closed stream and CLI output gains migration lines."""
    import logging
    names = ("", "alembic", "sqlalchemy.engine", "flask_migrate")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names}
    yield
    for n, (handlers, level) in saved.items():
        logging.getLogger(n).handlers[:] = handlers
        logging.getLogger(n).setLevel(level)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """One database for the session, migrated once; tests empty it between them."""
    pg = os.environ.get("CDS_TEST_DATABASE_URL")
    if not pg:
        yield "sqlite:///" + str(tmp_path_factory.mktemp("db") / "cds-test.sqlite3")
        return
    url = make_url(pg.replace("postgresql://", "postgresql+psycopg://", 1)
                   if pg.startswith("postgresql://") else pg)
    name = f"cds_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def instance_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("instance"))


@pytest.fixture(scope="session")
def _migrated(database_url, instance_dir):
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": False, "TESTING": True},
                     instance_path=instance_dir)
    with app.app_context():
        from cds.cli import upgrade_database
        upgrade_database()
        db.engine.dispose()
    return True


def empty_database() -> None:
    """Delete every row (children first), keeping the migrated schema."""
    for table in reversed(db.metadata.sorted_tables):
        db.session.execute(table.delete())
    db.session.commit()


class CSRFClient(FlaskClient):
    """Sends the CSRF token in the X-CSRFToken header, as htmx does for the pages."""
    csrf_token: str | None = None

    def open(self, *args, **kwargs):
        method = kwargs.get("method", "GET").upper()
        if self.csrf_token and method not in ("GET", "HEAD", "OPTIONS"):
            headers = dict(kwargs.pop("headers", None) or {})
            headers.setdefault("X-CSRFToken", self.csrf_token)
            kwargs["headers"] = headers
        return super().open(*args, **kwargs)

    def refresh_csrf(self) -> str:
        page = self.get("/login", follow_redirects=True).get_data(as_text=True)
        match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or \
            re.search(r'"X-CSRFToken": "([^"]+)"', page)
        self.csrf_token = match.group(1)
        return self.csrf_token


@pytest.fixture
def make_app(database_url, instance_dir, _migrated):
    """Build an app on the test database; extra settings override the test defaults."""
    apps = []

    def factory(**config):
        path = config.pop("instance_path", instance_dir)
        settings = {"DATABASE_URL": database_url, "SCHEDULER_ENABLED": False, "TESTING": True,
                    "JOB_EXECUTION": "inline", "PUBLIC_URL": "http://cds.test"}
        settings.update(config)
        app = create_app(settings, instance_path=path)
        app.test_client_class = CSRFClient
        apps.append(app)
        return app

    yield factory
    for app in apps:
        leader = app.extensions.get("cds_scheduler")
        if leader is not None:
            leader.stop()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(make_app):
    """A fresh app on an emptied database. No context is left pushed: each test-client
    request gets its own, as in production (a shared one would share ``g``)."""
    app = make_app()
    # The Outbox folder is the instance's, shared by the session: emptied with the database,
    # or an earlier test's message (named after a deployment id used again) looks like
    # this test's to the sweep of interrupted sends.
    shutil.rmtree(os.path.join(app.instance_path, "outbox"), ignore_errors=True)
    with app.app_context():
        empty_database()
        from cds.profiles.service import ensure_builtin_profiles
        ensure_builtin_profiles()
        configure_default_profile()
    return app


# The servers of a configured installation: on a fresh install the built-in Default
# profile has none, and Deploy skips its users (tests/clients/test_client_kinds.py).
TEST_SERVERS = {"pbx_sip_host": "pbx.example.test", "mbg_sip_host": "mbg.example.test",
                "mcs_host": "mcs.example.test"}


def configure_default_profile() -> None:
    from cds.models import DeploymentProfile
    profile = db.session.scalar(db.select(DeploymentProfile).where(DeploymentProfile.is_default))
    for key, value in TEST_SERVERS.items():
        setattr(profile, key, value)
    db.session.commit()


@pytest.fixture
def ctx(app):
    """An app context for tests that work on the database directly (no test client)."""
    with app.app_context():
        yield app


@pytest.fixture
def client(app) -> CSRFClient:
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def smtp_server():
    """A real SMTP server on loopback (tests/mailsink.py) that keeps every message."""
    from tests.mailsink import MailSink
    sink = MailSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def make_source():
    """Start real HTTP JSON sources (tests/fixtures/source_server.py): ``make_source(n)``
    holds Users and Services users 1..n, ``make_source([records…])`` those records."""
    from tests.fixtures.source_server import SourceServer, usa_user
    started = []

    def start(users=10):
        records = [usa_user(i) for i in range(1, users + 1)] if isinstance(users, int) else users
        server = SourceServer(records).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def source(make_source, request):
    """An HTTP source with the test module's ``SOURCE_USERS`` users (10 if it says nothing)."""
    return make_source(getattr(request.module, "SOURCE_USERS", 10))


def make_admin(app, username="alice", role="primary", password=TEST_PASSWORD):
    """An administrator account as test setup: written directly, so it leaves no
    ``admin.create`` audit event (tests count the events their actions write)."""
    from cds.models import AdminAccount
    from cds.security import hash_password
    with app.app_context():
        admin = AdminAccount(username=username, password_hash=hash_password(password), role=role)
        db.session.add(admin)
        db.session.commit()
        return admin.id


def sign_in(client: CSRFClient, username: str, password: str = TEST_PASSWORD):
    client.refresh_csrf()
    resp = client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": client.csrf_token})
    client.refresh_csrf()
    return resp


def add_imported_user(app) -> int:
    """A user imported from an MBG connection ("imp"); returns its id."""
    from cds.models import Connection, User
    from cds.profiles.service import default_profile
    with app.app_context():
        conn = Connection(name="MBG", kind="mbg", url="https://mbg.example.org")
        db.session.add(conn)
        db.session.flush()
        user = User(login_id="imp", last_name="Imported", email="imp@example.org", source="connection",
                    connection_id=conn.id, source_key="k1", profile_id=default_profile().id)
        db.session.add(user)
        db.session.commit()
        return user.id


def make_token(app, role="admin", name="script", expires=None) -> str:
    """An API token (the token itself, shown once)."""
    from cds.settings.tokens import create_api_token
    with app.app_context():
        return create_api_token(name, role, expires)[1]


@pytest.fixture
def api(app, client):
    """The JSON API with an administrator token; every answer is checked against the
    OpenAPI document (tests/api_support.py)."""
    from tests.api_support import ApiClient
    return ApiClient(client, make_token(app))


@pytest.fixture
def ro_api(app, client):
    from tests.api_support import ApiClient
    return ApiClient(client, make_token(app, "read-only", "reader"))


@pytest.fixture
def admin_client(app) -> CSRFClient:
    """Signed in as a primary administrator."""
    make_admin(app, "alice", "primary")
    c = app.test_client()
    resp = sign_in(c, "alice")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return c


@pytest.fixture
def readonly_client(app) -> CSRFClient:
    make_admin(app, "rita", "readonly")
    c = app.test_client()
    assert sign_in(c, "rita").status_code == 302
    return c
