"""LDAP connections against a real OpenLDAP (slapd on a loopback port, StartTLS and
ldaps:// with a test CA): bind, paged search past the server's size limit,
attribute mapping, and sync seeing changed, renamed and deleted entries."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from cds.connections.service import (ConnectionProblem, ConnectionSettings, create_connection,
                                     get_connection, refresh_source_records, sync_selection)
from cds.extensions import db
from cds.imports.service import import_records
from cds.models import Job, SourceRecord, User
from cds.sources import SourceError
from tests.fixtures import slapd as fx

pytestmark = pytest.mark.skipif(fx.missing_reason() is not None, reason=fx.missing_reason() or "")


@pytest.fixture
def directory(tmp_path):
    server = fx.Slapd(tmp_path / "slapd", extra_people=25).start()
    yield server
    server.stop()


def ldap_settings(server, url=None, **options) -> ConnectionSettings:
    opts = {"base_dn": fx.PEOPLE_DN, "ca_cert_pem": server.ca_pem, "page_size": 4, "timeout": 5}
    opts.update(options)
    return ConnectionSettings(name="Directory", kind="ldap", url=url or server.url,
                              username=fx.READER_DN, options=opts)


def records() -> dict[str, SourceRecord]:
    return {r.login_id: r for r in db.session.scalars(select(SourceRecord))}


def test_starttls_bind_and_paged_search_past_the_size_limit(ctx, directory):
    conn = create_connection(ldap_settings(directory), fx.READER_PASSWORD)
    assert conn.verified and conn.token_expires_at is None
    result = refresh_source_records(conn)
    # 3 people + 25 generated: more than the server's limit of 10 per search.
    assert result.total == 28 > fx.SIZE_LIMIT
    recs = records()
    assert "cn=printer" not in str(list(recs))  # not a person
    anna = recs["asmith"]
    assert (anna.first_name, anna.last_name, anna.number, anna.email) == \
        ("Anna", "Smith", "+44 20 7946 0000", "anna.smith@example.org")
    assert recs["bmüller"].first_name == "Björn"
    assert len(anna.source_key) == 36  # entryUUID


def test_ldaps(ctx, directory):
    conn = create_connection(ldap_settings(directory, url=directory.ldaps_url), fx.READER_PASSWORD)
    assert refresh_source_records(conn).total == 28


def test_custom_filter_and_mapping(ctx, directory):
    settings = ldap_settings(directory, search_filter="(telephoneNumber=40*)",
                             mapping={"login_id": "mail", "last_name": "cn", "number": "",
                                      "mcs_account": "uid"})
    conn = create_connection(settings, fx.READER_PASSWORD)
    refresh_source_records(conn)
    recs = records()
    assert set(recs) == {"john.doe@example.org", "bjoern.mueller@example.org"}
    john = recs["john.doe@example.org"]
    # Fields not named keep their default attribute (givenName); an empty one is not imported.
    assert (john.last_name, john.number, john.mcs_account, john.first_name) == \
        ("John Doe", "", "jdoe", "John")


def test_wrong_password_untrusted_certificate_and_bad_base_dn(ctx, directory):
    with pytest.raises(ConnectionProblem, match="refused the bind DN or password"):
        create_connection(ldap_settings(directory), "wrong")
    with pytest.raises(ConnectionProblem, match="StartTLS .* failed"):
        create_connection(ldap_settings(directory, ca_cert_pem=""), fx.READER_PASSWORD)
    with pytest.raises(ConnectionProblem, match="does not exist"):
        create_connection(ldap_settings(directory, base_dn="ou=nowhere,dc=example,dc=org"),
                          fx.READER_PASSWORD)


def test_invalid_filter_is_reported(ctx, directory):
    conn = create_connection(ldap_settings(directory, search_filter="(uid=*"), fx.READER_PASSWORD)
    with pytest.raises(SourceError, match="filter"):
        refresh_source_records(conn)
    assert get_connection(conn.id).last_sync_ok is False


def test_sync_sees_changes_renames_and_deletions(ctx, directory):
    from ldap3 import MODIFY_REPLACE
    conn = create_connection(ldap_settings(directory), fx.READER_PASSWORD)
    refresh_source_records(conn)
    import_records({"filter": {}})
    admin = directory.admin()
    admin.modify(f"uid=asmith,{fx.PEOPLE_DN}", {"telephoneNumber": [(MODIFY_REPLACE, ["4444"])]})
    admin.modify_dn(f"uid=jdoe,{fx.PEOPLE_DN}", "uid=john.doe")  # entryUUID stays: an ID change
    admin.delete(f"uid=user007,{fx.PEOPLE_DN}")
    admin.unbind()

    job = db.session.get(Job, sync_selection({"filter": {}}).id)
    assert job.summary["updated"] == 2 and job.summary["not_in_source"] == 1
    assert job.summary["unchanged"] == 25 and job.summary["failed"] == 0
    users = {u.login_id: u for u in db.session.scalars(select(User))}
    assert users["asmith"].number == "4444"
    assert "jdoe" not in users and users["john.doe"].redeploy_required
    assert users["user007"].not_in_source


def test_a_directory_that_stops_answering_changes_nothing(ctx, directory):
    conn = create_connection(ldap_settings(directory), fx.READER_PASSWORD)
    refresh_source_records(conn)
    import_records({"filter": {}})
    directory.stop()
    job = db.session.get(Job, sync_selection({"filter": {}}).id)
    assert job.summary["failed"] == 28 and "cannot be reached" in job.message
    assert not any(u.not_in_source for u in db.session.scalars(select(User)))
    assert len(records()) == 28


def test_create_ldap_connection_through_the_form(admin_client, app, directory):
    from cds.sources.ldap import DEFAULT_MAPPING
    data = {"name": "Corporate directory", "kind": "ldap", "url": directory.url,
            "username": fx.READER_DN, "password": fx.READER_PASSWORD, "sync_interval_minutes": "120",
            "enabled": "y", "timeout": "5", "page_size": "5", "verify_tls": "y",
            "ca_cert_pem": directory.ca_pem, "base_dn": fx.PEOPLE_DN, "search_filter": "",
            "key_attribute": ""}
    data.update({f"map_{f}": v for f, v in DEFAULT_MAPPING.items()})
    resp = admin_client.post("/connections/new", data=data, follow_redirects=True)
    page = resp.get_data(as_text=True)
    assert "Connection Corporate directory created and authorized. Read 28 users" in page
    assert "no token" in page and fx.READER_PASSWORD not in page
    edit = admin_client.get("/connections").get_data(as_text=True)
    assert "Corporate directory" in edit
    with app.app_context():
        conn_id = db.session.scalar(select(SourceRecord.connection_id).limit(1))
    form = admin_client.get(f"/connections/{conn_id}").get_data(as_text=True)
    assert fx.PEOPLE_DN in form and "telephoneNumber" in form and fx.READER_PASSWORD not in form
