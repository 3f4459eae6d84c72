"""GET /healthz: public, no user data; 200 with database, scheduler and mail state, 503
when the database cannot be reached."""
from __future__ import annotations

from cds.extensions import db
from cds.models import User
from cds.profiles.service import default_profile
from tests.conftest import free_port


def test_healthz_reports_database_scheduler_and_mail_without_login(app, client):
    with app.app_context():
        db.session.add(User(login_id="zed.private", email="zed.private@example.test",
                            profile_id=default_profile().id))
        db.session.commit()
    resp = client.get("/healthz")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["database"]["dialect"] in ("sqlite", "postgresql")
    # Tests never start the scheduler.
    assert body["scheduler"] == "stopped"
    assert body["mail"] == {"transport": "outbox"}
    assert "zed.private" not in resp.get_data(as_text=True)
    assert resp.headers["Cache-Control"] == "no-store"


def test_healthz_follows_the_smtp_setting_saved_in_the_console(app, client):
    from cds.settings.service import save_settings
    with app.app_context():
        save_settings({"MAIL_SERVER": "smtp.example.test"})
    assert client.get("/healthz").get_json()["mail"] == {"transport": "smtp"}


def test_healthz_shows_one_active_scheduler_and_one_standby(make_app, app, tmp_path):
    """Two processes on one instance: the lock lets exactly one run the scheduler."""
    first = make_app(instance_path=str(tmp_path), SCHEDULER_ENABLED=True)
    second = make_app(instance_path=str(tmp_path), SCHEDULER_ENABLED=True)
    states = sorted(a.test_client().get("/healthz").get_json()["scheduler"] for a in (first, second))
    assert states == ["active", "standby"]


def test_healthz_is_503_when_postgresql_is_unreachable(make_app, tmp_path):
    port = free_port()  # nothing listens there
    broken = make_app(instance_path=str(tmp_path),
                      DATABASE_URL=f"postgresql://cds@127.0.0.1:{port}/cds")
    resp = broken.test_client().get("/healthz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "unavailable"
    assert body["database"]["ok"] is False
    assert body["database"]["dialect"] == "postgresql"
    assert body["mail"] == {"transport": "outbox"}


def test_healthz_is_503_when_the_sqlite_file_cannot_be_opened(make_app, tmp_path):
    missing = tmp_path / "no-such-folder" / "cds.sqlite3"
    broken = make_app(instance_path=str(tmp_path / "instance"), DATABASE_URL=f"sqlite:///{missing}")
    resp = broken.test_client().get("/healthz")
    assert resp.status_code == 503
    assert resp.get_json()["database"] == {"ok": False, "dialect": "sqlite",
                                           "error": "OperationalError"}
