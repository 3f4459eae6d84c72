"""The HTTP JSON source client against a real server on loopback (docs/sources.md):
authorization with an expiring token, paging, per-kind fields, and every way a
source can fail — each of which changes nothing and is recorded on the connection."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from cds.connections.service import (ConnectionProblem, ConnectionSettings, create_connection,
                                     get_connection, refresh_source_records)
from cds.extensions import db
from cds.models import Connection, SourceRecord, utcnow
from cds.sources import SourceAuthError, SourceError
from tests.fixtures.source_server import PASSWORD, USERNAME, mbg_user, usa_user


# Users in the HTTP source the `source` fixture (tests/conftest.py) starts.
SOURCE_USERS = 25


def make_connection(server, kind="usa", name="Users and Services", **options) -> Connection:
    settings = ConnectionSettings(name=name, kind=kind, url=server.url, username=USERNAME,
                                  options={"timeout": 1, "page_size": 10, **options})
    return create_connection(settings, PASSWORD, actor="test")


def records(conn_id):
    return {r.source_key: r for r in db.session.scalars(
        select(SourceRecord).where(SourceRecord.connection_id == conn_id))}


def test_authorize_stores_an_encrypted_token_with_its_expiry(ctx, source):
    conn = make_connection(source)
    token = next(iter(source.tokens))
    assert conn.verified
    assert conn.token_enc and token not in conn.token_enc
    assert PASSWORD not in (conn.password_enc or "")
    assert conn.get_password() == PASSWORD
    left = conn.token_expires_at - utcnow()
    assert timedelta(days=89) < left <= timedelta(days=90)


def test_wrong_credentials_save_nothing(ctx, source):
    settings = ConnectionSettings(name="Bad", kind="usa", url=source.url, username=USERNAME,
                                  options={"timeout": 1})
    with pytest.raises(ConnectionProblem) as err:
        create_connection(settings, "wrong password")
    assert "refused" in str(err.value)
    assert "password" in err.value.errors
    assert db.session.scalar(select(func.count(Connection.id))) == 0


def test_paging_reads_every_user_with_the_kind_field_names(ctx, source):
    conn = make_connection(source)
    result = refresh_source_records(conn)
    assert (result.total, result.added) == (25, 25)
    assert source.user_requests == 3  # 10 + 10 + 5
    rec = records(conn.id)["u-7"]
    assert (rec.login_id, rec.first_name, rec.last_name, rec.number, rec.pbx_number,
            rec.pbx_sip_username, rec.mbg_sip_username, rec.mcs_account, rec.email) == \
        ("user7", "First7", "Last7", "4007", "1", "4007", "mbg7", "acct7", "user7@example.org")
    conn = get_connection(conn.id)
    assert conn.last_sync_ok and "Read 25 users" in conn.last_sync_message


def test_mbg_kind_maps_its_own_fields(ctx, make_source):
    server = make_source([mbg_user(1), mbg_user(2, sipUserName="tw-2")])
    conn = make_connection(server, kind="mbg", name="MBG")
    refresh_source_records(conn)
    rec = records(conn.id)["2"]
    assert (rec.login_id, rec.number, rec.mbg_sip_username, rec.mcs_account) == \
        ("user2", "4002", "tw-2", "")


def test_refresh_applies_changes_and_removals(ctx, source):
    conn = make_connection(source)
    refresh_source_records(conn)
    source.users[0]["lastName"] = "Changed"
    del source.users[1]
    result = refresh_source_records(get_connection(conn.id))
    assert (result.total, result.added, result.changed, result.removed) == (24, 0, 1, 1)
    recs = records(conn.id)
    assert recs["u-1"].last_name == "Changed" and "u-2" not in recs


@pytest.mark.parametrize("mode, expected", [
    ("error", "HTTP 500: database unavailable"),
    ("garbage", "did not answer with JSON"),
    ("malformed", "no \"users\" list"),
    ("slow", "did not answer within 1 seconds"),
    ("empty", "returned no users although it had 25"),
])
def test_a_failing_source_changes_nothing_and_is_recorded(ctx, source, mode, expected):
    conn = make_connection(source)
    refresh_source_records(conn)
    before = {k: (r.last_name, r.fetched_at) for k, r in records(conn.id).items()}
    source.mode = mode
    source.slow_seconds = 3
    with pytest.raises(SourceError) as err:
        refresh_source_records(get_connection(conn.id))
    assert expected in str(err.value)
    assert {k: (r.last_name, r.fetched_at) for k, r in records(conn.id).items()} == before
    conn = get_connection(conn.id)
    assert conn.last_sync_ok is False and expected in conn.last_sync_message


@pytest.mark.parametrize("bad_user, expected", [
    ({"loginId": "nobody"}, "has no id"),
    ({"id": "x-1", "loginId": ""}, "has no 'loginId'"),
    ({"id": "x-1", "loginId": "a", "lastName": {"nested": 1}}, "malformed 'lastName'"),
    ("just a string", "is not an object"),
])
def test_garbage_records_are_refused_whole(ctx, source, bad_user, expected):
    conn = make_connection(source)
    source.users.append(bad_user)
    with pytest.raises(SourceError) as err:
        refresh_source_records(conn)
    assert expected in str(err.value)
    assert records(conn.id) == {}


def test_duplicate_ids_are_refused(ctx, source):
    conn = make_connection(source)
    source.users.append(usa_user(3))
    with pytest.raises(SourceError, match="returned the id 'u-3' twice"):
        refresh_source_records(conn)


def test_an_expired_token_asks_for_re_authorization(ctx, source):
    conn = make_connection(source)
    conn.token_expires_at = utcnow() - timedelta(minutes=1)
    db.session.commit()
    with pytest.raises(SourceAuthError, match="primary administrator must re-authorize"):
        refresh_source_records(conn)
    assert source.user_requests == 0


def test_a_token_the_source_revoked_asks_for_re_authorization(ctx, source):
    conn = make_connection(source)
    source.expire_tokens()
    with pytest.raises(SourceAuthError, match="re-authorize"):
        refresh_source_records(conn)
    assert get_connection(conn.id).last_sync_ok is False


def test_unreachable_source(ctx, source):
    conn = make_connection(source)
    source.stop()
    with pytest.raises(SourceError, match="cannot be reached"):
        refresh_source_records(conn)
