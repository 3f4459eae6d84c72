"""Sync data against a real HTTP JSON source: fields updated, removed users flagged,
login id changes running the ID-change flow, failing sources changing nothing,
manual and CSV users left alone, one read of the source per job, the periodic
sync and the CLI."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from cds.connections.service import (ConnectionSettings, create_connection, periodic_sync,
                                     refresh_source_records, sync_selection)
from cds.extensions import db
from cds.imports.service import import_records
from cds.models import ClientDevice, Connection, Job, JobItem, User, utcnow
from cds.profiles.service import default_profile
from tests.fixtures.source_server import PASSWORD, USERNAME, usa_user


# Users in the HTTP source the `source` fixture (tests/conftest.py) starts.
SOURCE_USERS = 10


def connect_and_import(server, name="USA") -> int:
    conn = create_connection(ConnectionSettings(name=name, kind="usa", url=server.url,
                                                username=USERNAME,
                                                options={"timeout": 1, "page_size": 500}), PASSWORD)
    refresh_source_records(conn)
    import_records({"filter": {"connection": str(conn.id)}})
    return conn.id


def user(login_id) -> User:
    return db.session.scalar(select(User).where(User.login_id == login_id))


def sync_all(conn_id) -> Job:
    return db.session.get(Job, sync_selection({"filter": {"source": f"c{conn_id}"}}).id)


def test_sync_updates_source_owned_fields(ctx, source):
    conn_id = connect_and_import(source)
    before = user("user3").config_version
    source.users[2].update(lastName="Renamed", primaryDn="4999", email="new3@example.org")
    job = sync_all(conn_id)
    assert job.state == "done"
    u = user("user3")
    assert (u.last_name, u.number, u.email) == ("Renamed", "4999", "new3@example.org")
    assert u.config_version == before + 1
    assert job.summary["updated"] == 1 and job.summary["unchanged"] == 9
    assert job.message.startswith("Sync: 1 updated, 9 unchanged, 0 not in source, 0 failed")
    item = db.session.scalar(select(JobItem).where(JobItem.job_id == job.id, JobItem.user_id == u.id))
    assert "Lastname" in item.message and "Email address" in item.message


def test_a_user_gone_from_the_source_is_flagged_not_deleted(ctx, source):
    conn_id = connect_and_import(source)
    del source.users[4]  # user5
    job = sync_all(conn_id)
    u = user("user5")
    assert u is not None and u.not_in_source
    assert job.summary["not_in_source"] == 1
    assert "Not in source" in job.message or job.summary["not_in_source"] == 1
    # Back in the source: the flag clears.
    source.users.append(usa_user(5))
    sync_all(conn_id)
    assert not user("user5").not_in_source


def test_a_login_id_change_runs_the_id_change_flow(ctx, source):
    conn_id = connect_and_import(source)
    u = user("user2")
    db.session.add(ClientDevice(user_id=u.id, key_hash="k" * 64, platform="ios"))
    db.session.commit()
    source.users[1]["loginId"] = "user2-renamed"
    job = sync_all(conn_id)
    u = db.session.get(User, u.id)
    assert u.login_id == "user2-renamed" and u.redeploy_required
    device = db.session.scalar(select(ClientDevice).where(ClientDevice.user_id == u.id))
    assert device.revoked_at is not None and device.revoked_reason == "id_change"
    item = db.session.scalar(select(JobItem).where(JobItem.job_id == job.id, JobItem.user_id == u.id))
    assert "login id changed" in item.message and "factory reset" in item.message


def test_a_login_id_change_onto_another_users_id_fails_for_that_user(ctx, source):
    conn_id = connect_and_import(source)
    db.session.add(User(login_id="manual-1", last_name="M", email="m@example.org",
                        profile_id=default_profile().id))
    db.session.commit()
    source.users[0]["loginId"] = "manual-1"
    job = sync_all(conn_id)
    assert user("user1") is not None and job.summary["failed"] == 1
    assert job.summary["unchanged"] == 9


def test_invalid_data_from_the_source_fails_that_user_only(ctx, source):
    conn_id = connect_and_import(source)
    source.users[0]["email"] = "broken"
    job = sync_all(conn_id)
    assert user("user1").email == "user1@example.org"
    assert job.summary["failed"] == 1


@pytest.mark.parametrize("mode, expected", [
    ("error", "HTTP 500"),
    ("garbage", "did not answer with JSON"),
    ("slow", "did not answer within 1 seconds"),
    ("empty", "returned no users although it had 10"),
])
def test_a_failing_source_changes_nothing(ctx, source, mode, expected):
    conn_id = connect_and_import(source)
    source.users[0]["lastName"] = "Should not arrive"
    source.mode = mode
    job = sync_all(conn_id)
    assert job.summary["failed"] == 10 and job.summary["updated"] == 0
    assert expected in job.message
    assert not any(u.not_in_source for u in db.session.scalars(select(User)))
    assert user("user1").last_name == "Last1"
    conn = db.session.get(Connection, conn_id)
    assert conn.last_sync_ok is False and expected in conn.last_sync_message
    item = db.session.scalar(select(JobItem).where(JobItem.job_id == job.id).limit(1))
    assert item.outcome == "failed" and expected in item.message


def test_manual_and_csv_users_have_nothing_to_sync(ctx, source):
    connect_and_import(source)
    profile = default_profile().id
    db.session.add_all([User(login_id="hand", last_name="H", email="h@example.org", profile_id=profile),
                        User(login_id="file", last_name="F", email="f@example.org", profile_id=profile,
                             source="csv")])
    db.session.commit()
    ids = [user("hand").id, user("file").id, user("user1").id]
    job = db.session.get(Job, sync_selection({"ids": ids}).id)
    assert job.summary["nothing_to_sync"] == 2 and job.summary["unchanged"] == 1
    messages = {i.login_id: i.message for i in db.session.scalars(
        select(JobItem).where(JobItem.job_id == job.id))}
    assert messages["hand"] == "Nothing to sync (manual user)."
    assert messages["file"] == "Nothing to sync (imported from a CSV file)."


def test_the_source_is_read_once_per_job(ctx, make_source):
    server = make_source(2500)
    server.page_limit = 1000
    conn = create_connection(ConnectionSettings(
        name="Big", kind="usa", url=server.url, username=USERNAME,
        options={"timeout": 5, "page_size": 1000}), PASSWORD)
    refresh_source_records(conn)
    import_records({"filter": {}})
    server.user_requests = 0
    job = sync_all(conn.id)
    assert job.done == 2500 and job.summary["unchanged"] == 2500
    assert server.user_requests == 3  # one read (three pages of 1000) for the whole job


def test_two_connections_in_one_job(ctx, source, make_source):
    other = make_source([usa_user(i) for i in range(100, 103)])
    connect_and_import(source, "A")
    connect_and_import(other, "B")
    other.mode = "error"
    source.users[0]["firstName"] = "New"
    job = db.session.get(Job, sync_selection({"filter": {}}).id)
    assert job.summary["updated"] == 1 and job.summary["failed"] == 3
    assert "B: " in job.message and user("user1").first_name == "New"


def test_the_users_tab_button_creates_a_sync_job(app, admin_client, source):
    with app.app_context():
        connect_and_import(source)
        ids = [u.id for u in db.session.scalars(select(User))][:2]
    source.users[0]["lastName"] = "ViaButton"
    resp = admin_client.post("/users/actions/sync", data={"ids": ids, "confirm": "2"},
                             headers={"HX-Request": "true"})
    assert resp.status_code in (200, 202), resp.get_data(as_text=True)[:500]
    with app.app_context():
        job = db.session.scalar(select(Job).where(Job.kind == "sync"))
        assert job is not None and job.state == "done"
        assert user("user1").last_name == "ViaButton"


def test_periodic_sync_runs_when_due_and_only_then(app, source):
    with app.app_context():
        conn_id = connect_and_import(source)
        source.users[0]["lastName"] = "Periodic"
        periodic_sync(app)  # not due yet: created with next_sync_at an hour ahead
        assert db.session.scalar(select(Job.id).where(Job.kind == "sync")) is None
        conn = db.session.get(Connection, conn_id)
        conn.next_sync_at = utcnow() - timedelta(minutes=1)
        db.session.commit()
        periodic_sync(app)
        job = db.session.scalar(select(Job).where(Job.kind == "sync"))
        assert job.created_by == "scheduler" and job.state == "done"
        assert user("user1").last_name == "Periodic"
        conn = db.session.get(Connection, conn_id)
        assert conn.next_sync_at > utcnow() + timedelta(minutes=59)
        periodic_sync(app)
        assert len(db.session.scalars(select(Job).where(Job.kind == "sync")).all()) == 1


def test_periodic_sync_of_a_failing_source_waits_for_the_next_interval(app, source):
    with app.app_context():
        conn_id = connect_and_import(source)
        source.mode = "error"
        conn = db.session.get(Connection, conn_id)
        conn.next_sync_at = utcnow() - timedelta(minutes=1)
        db.session.commit()
        periodic_sync(app)
        requests = source.user_requests
        periodic_sync(app)
        assert source.user_requests == requests
        assert db.session.get(Connection, conn_id).last_sync_ok is False


def test_disabled_connection_is_not_synced_periodically(app, source):
    with app.app_context():
        conn_id = connect_and_import(source)
        conn = db.session.get(Connection, conn_id)
        conn.enabled = False
        conn.next_sync_at = utcnow() - timedelta(minutes=1)
        db.session.commit()
        periodic_sync(app)
        assert db.session.scalar(select(Job.id).where(Job.kind == "sync")) is None


def test_sync_now_without_imported_users_refreshes_the_records(admin_client, app, source):
    with app.app_context():
        conn = create_connection(ConnectionSettings(name="USA", kind="usa", url=source.url,
                                                    username=USERNAME, options={"timeout": 1}), PASSWORD)
        conn_id = conn.id
    resp = admin_client.post(f"/connections/{conn_id}/sync", follow_redirects=True)
    assert "Read 10 users" in resp.get_data(as_text=True)
    with app.app_context():
        connect_and_import(source, "USA2")
    resp = admin_client.post(f"/connections/{conn_id}/sync")
    assert resp.status_code == 302
    with app.app_context():
        assert db.session.scalar(select(Job.id).where(Job.kind == "sync")) is None  # no users on it
    with app.app_context():
        conn2 = db.session.scalar(select(Connection).where(Connection.name == "USA2"))
    resp = admin_client.post(f"/connections/{conn2.id}/sync")
    assert "job=" in resp.headers["Location"]
    page = admin_client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Sync data" in page and "10 succeeded" in page


def test_cli_sync(app, source):
    with app.app_context():
        connect_and_import(source)
    source.users[0]["lastName"] = "FromCli"
    runner = app.test_cli_runner()
    result = runner.invoke(args=["cds", "sync", "--connection", "usa"])
    assert result.exit_code == 0, result.output
    assert "USA: Sync: 1 updated, 9 unchanged" in result.output
    source.mode = "error"
    result = runner.invoke(args=["cds", "sync"])
    assert result.exit_code == 1 and "HTTP 500" in result.output
    result = runner.invoke(args=["cds", "sync", "--connection", "nope"])
    assert result.exit_code == 1 and "no connection is named 'nope'" in result.output
    with app.app_context():
        assert user("user1").last_name == "FromCli"
