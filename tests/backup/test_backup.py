"""Backup and restore: a consistent archive taken while a deploy job runs, restored into an
empty instance where links issued before the backup still activate and device credentials
still work; damaged, truncated, foreign-key and newer-schema archives refused with nothing
changed; an archive from an older schema migrated."""
from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import threading
import uuid
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from cds.backup.archive import inspect_backup
from cds.backup.container import encrypt_file
from cds.backup.create import create_backup
from cds.backup.format import ArchiveInvalid, RestoreRefused, sha256
from cds.backup.restore import restore_backup
from cds.extensions import db
from cds.models import (ClientDevice, Connection, Deployment, Job, RedirectEntry, User, utcnow)
from cds.profiles.service import default_profile
from cds.security import token_hash
from tests.conftest import make_admin, sign_in

SECRETS = {"mcs_password": "mcs-Secret-71", "pbx_sip_password": "pbx-Secret-72",
           "teleworker_sip_password": "tw-Secret-73", "voicemail_pin": "739104"}
PASSPHRASE = "correct battery staple"


# --- fixtures and helpers ------------------------------------------------------

@pytest.fixture
def fresh_database(database_url, tmp_path):
    """A factory of new, empty databases of the kind under test (SQLite file or PostgreSQL)."""
    created = []

    def make() -> str:
        if database_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path / f'fresh-{uuid.uuid4().hex[:6]}.sqlite3'}"
        name = f"cds_restore_{uuid.uuid4().hex[:8]}"
        engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        created.append(name)
        return make_url(database_url).set(database=name).render_as_string(hide_password=False)

    yield make
    if created:
        engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for name in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture
def empty_instance(make_app, fresh_database, tmp_path):
    """A factory of brand-new instances: own folder (own generated keys), own empty database."""
    def make(**config):
        folder = tmp_path / f"instance-{uuid.uuid4().hex[:6]}"
        url = fresh_database()
        return make_app(instance_path=str(folder), DATABASE_URL=url, **config), url, folder
    return make


def add_user(login_id: str, **fields) -> User:
    user = User(login_id=login_id, first_name=login_id.title(), last_name="Tester",
                email=f"{login_id}@example.test", profile_id=default_profile().id, **fields)
    for name, value in SECRETS.items():
        user.set_secret(name, f"{value}-{login_id}")
    db.session.add(user)
    return user


def seed_instance(app) -> dict:
    """Data of every kind a restore must bring back, with the tokens only a client would know."""
    from cds.deploy.service import issue_deployment
    from cds.settings.service import save_settings

    make_admin(app, "alice", "primary")
    with app.app_context():
        zoe = add_user("zoe", deployed_at=utcnow())
        for name in ("ann", "bob", "cara", "dan", "eve"):
            add_user(name)
        conn = Connection(name="Directory", kind="ldap", url="ldaps://ldap.example.test",
                          username="cn=reader", options={"base_dn": "dc=example,dc=test", "start_tls": True})
        conn.set_password("ldap-Bind-Secret-9")
        db.session.add(conn)
        save_settings({"MAIL_PASSWORD": "smtp-Relay-Secret-8", "MAIL_USERNAME": "relay-user"}, "alice",
                      commit=False)
        db.session.commit()
        dep, zoe_token = issue_deployment(zoe, actor="alice")
        db.session.commit()
    client = app.test_client()
    resp = client.post("/client/v1/activate", json={"token": zoe_token, "device": {
        "id": "zoe-phone", "platform": "ios", "app_version": "9.1"}})
    assert resp.status_code == 200, resp.get_json()
    return {"zoe_key": resp.get_json()["client_key"]}


def repack(archive: Path, target: Path, change) -> None:
    """Rewrite an archive's manifest (checksums stay right): an archive as another CDS would make."""
    with tarfile.open(archive, "r:gz") as src, tarfile.open(target, "w:gz") as out:
        for member in src:
            data = src.extractfile(member).read()
            if member.name == "manifest.json":
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data))


def snapshot_of(app) -> dict:
    """What an administrator would compare: counts, a secret, the key files."""
    folder = Path(app.instance_path)
    with app.app_context():
        return {
            "users": db.session.scalar(select(func.count()).select_from(User)),
            "pin": db.session.scalar(select(User).where(User.login_id == "ann")).get_secret("voicemail_pin"),
            "key": (folder / "encryption.key").read_bytes(),
            "secret_key": (folder / "secret_key").read_bytes(),
        }


# --- the whole journey ----------------------------------------------------------

def test_backup_during_a_deploy_restores_into_an_empty_instance_where_links_still_work(
        app, make_app, smtp_server, empty_instance, tmp_path):
    from cds.jobs.service import create_job, run_job

    handler = smtp_server.handler
    handler.hold_after = 2  # the job sends two messages, then waits on the third
    source = make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port)
    seeded = seed_instance(source)
    with source.app_context():
        ids = list(db.session.scalars(select(User.id).where(User.login_id != "zoe").order_by(User.id)))
        job = create_job("deploy", {"ids": ids}, actor="alice")
        job_id = job.id

    def deploy():
        with source.app_context():
            run_job(job_id)

    runner = threading.Thread(target=deploy)
    runner.start()
    try:
        # The job has sent two messages and waits on the third: the backup is taken now.
        assert handler.holding.wait(30)
        archive = tmp_path / "during-deploy.cdsbackup"
        with source.app_context():
            result = create_backup(archive, PASSPHRASE, actor="alice")
    finally:
        handler.release.set()
        runner.join(60)
    assert result.encrypted and result.counts["user"] == 6
    assert archive.stat().st_mode & 0o777 == 0o600
    ann_token = smtp_server.token_for("ann@example.test")
    # CDS signed in to the relay with the stored SMTP credentials.
    assert set(handler.logins) == {("relay-user", "smtp-Relay-Secret-8")}
    with source.app_context():
        assert db.session.get(Job, job_id).state == "done"

    target, url, folder = empty_instance()
    with target.app_context():
        restored = restore_backup(archive, PASSPHRASE)
    assert restored.counts["user"] == 6
    # The restored instance uses the backup's keys, as any process started on it will.
    assert (folder / "encryption.key").read_text().strip() == source.config["ENCRYPTION_KEY"]

    after = make_app(instance_path=str(folder), DATABASE_URL=url)
    with after.app_context():
        job = db.session.get(Job, job_id)
        assert job.state == "running" and job.done == 0  # as it was when the backup was taken
        ann = db.session.scalar(select(User).where(User.login_id == "ann"))
        assert {n: ann.get_secret(n) for n in SECRETS} == {n: f"{v}-ann" for n, v in SECRETS.items()}
        conn = db.session.scalar(select(Connection))
        assert conn.get_password() == "ldap-Bind-Secret-9"
        assert conn.options == {"base_dn": "dc=example,dc=test", "start_tls": True}
        from cds.settings.service import get_setting
        assert get_setting("MAIL_PASSWORD") == "smtp-Relay-Secret-8"
        assert db.session.scalar(select(RedirectEntry).where(
            RedirectEntry.token_hash == token_hash(ann_token))) is not None
        assert isinstance(db.session.scalar(select(User.deployed_at).where(User.login_id == "zoe")),
                          type(utcnow()))
    client = after.test_client()
    # A link e-mailed before the backup leads to the landing page and activates.
    follow = client.get(f"/r/{ann_token}")
    assert follow.status_code == 302 and follow.headers["Location"].endswith(f"/deploy/{ann_token}")
    resp = client.post("/client/v1/activate", json={"token": ann_token, "device": {
        "id": "ann-phone", "platform": "android", "app_version": "9.1"}})
    assert resp.status_code == 200, resp.get_json()
    document = resp.get_json()
    assert document["voicemail"]["pin"] == "739104-ann"
    assert document["pbx_sip"]["password"] == "pbx-Secret-72-ann"
    # A device activated before the backup keeps working with its credential.
    resp = client.get("/client/v1/config", headers={"Authorization": f"Bearer {seeded['zoe_key']}"})
    assert resp.status_code == 200
    assert resp.get_json()["micollab_client_service"]["password"] == "mcs-Secret-71-zoe"
    # Sign-in works with the restored administrator, and new rows get fresh ids.
    make_admin(after, "second", "admin")
    assert sign_in(after.test_client(), "alice").status_code == 302


def test_cli_backup_and_restore_with_a_passphrase(app, empty_instance, tmp_path):
    seed_instance(app)
    archive = tmp_path / "cli.cdsbackup"
    out = app.test_cli_runner().invoke(args=["cds", "backup", str(archive), "--passphrase-stdin"],
                                       input=PASSPHRASE + "\n")
    assert out.exit_code == 0, out.output
    assert "backup written" in out.output and "6 users" in out.output
    assert archive.read_bytes().startswith(b"CDS-BACKUP-ENCRYPTED/1\n")

    target, url, folder = empty_instance()
    runner = target.test_cli_runner()
    out = runner.invoke(args=["cds", "restore", str(archive)])
    assert out.exit_code == 1
    assert "protected by a passphrase" in out.output
    out = runner.invoke(args=["cds", "restore", str(archive), "--passphrase-stdin"], input="wrong words here\n")
    assert out.exit_code == 1 and "passphrase is wrong" in out.output
    out = runner.invoke(args=["cds", "restore", str(archive), "--passphrase-stdin"], input=PASSPHRASE + "\n")
    assert out.exit_code == 0, out.output
    assert "restored 6 users" in out.output
    # The instance now has data: a second restore needs --yes.
    out = runner.invoke(args=["cds", "restore", str(archive), "--passphrase-stdin"], input=PASSPHRASE + "\n")
    assert out.exit_code == 1 and "--yes" in out.output
    out = runner.invoke(args=["cds", "restore", str(archive), "--passphrase-stdin", "--yes"],
                        input=PASSPHRASE + "\n")
    assert out.exit_code == 0, out.output
    assert snapshot_of(target)["pin"] == "739104-ann"


def test_unencrypted_backup_warns_and_restores_without_a_passphrase(app, empty_instance, tmp_path):
    seed_instance(app)
    archive = tmp_path / "plain.tar.gz"
    out = app.test_cli_runner().invoke(args=["cds", "backup", str(archive)])
    assert out.exit_code == 0, out.output
    assert "holds the key to every stored secret" in out.output
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert {"manifest.json", "keys/encryption.key", "keys/secret_key", "data/user.jsonl"} <= names
    assert "data/apscheduler_jobs.jsonl" not in names
    assert manifest["cds_version"] and manifest["schema_revisions"]
    assert manifest["tables"]["user"]["rows"] == 6
    target, url, folder = empty_instance()
    with target.app_context():
        restore_backup(archive)
    assert snapshot_of(target)["pin"] == "739104-ann"


# --- refusals: nothing changes ------------------------------------------------------

@pytest.fixture
def populated_target(app, empty_instance, tmp_path):
    """An instance with its own data and keys, and a good archive of another instance."""
    seed_instance(app)
    archive = tmp_path / "good.tar.gz"
    with app.app_context():
        create_backup(archive)
    target, url, folder = empty_instance()
    with target.app_context():
        from cds.cli import upgrade_database
        upgrade_database()
        add_user("ann")
        add_user("only-here")
        db.session.commit()
    return target, archive


def test_truncated_or_corrupted_archives_are_refused_and_nothing_changes(populated_target, tmp_path):
    target, archive = populated_target
    before = snapshot_of(target)
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    corrupted = tmp_path / "corrupted.tar.gz"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(flipped))
    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("hello")
    runner = target.test_cli_runner()
    for bad in (truncated, corrupted):
        out = runner.invoke(args=["cds", "restore", str(bad), "--yes"])
        assert out.exit_code == 1
        assert "error: The backup archive is damaged or truncated" in out.output
        assert "nothing was changed" in out.output
    out = runner.invoke(args=["cds", "restore", str(not_a_backup), "--yes"])
    assert out.exit_code == 1 and "is not a CDS backup archive" in out.output

    # The same for the passphrase container: any cut or flipped byte is found.
    sealed = tmp_path / "sealed.cdsbackup"
    with target.app_context():
        encrypt_file(archive, sealed, PASSPHRASE)
    blob = sealed.read_bytes()
    cut = tmp_path / "sealed-cut.cdsbackup"
    cut.write_bytes(blob[:-100])
    with target.app_context():
        with pytest.raises(ArchiveInvalid, match="damaged or truncated"):
            restore_backup(cut, PASSPHRASE)
    assert snapshot_of(target) == before
    assert not list(Path(target.instance_path).glob(".restore-*"))


def test_an_archive_from_a_newer_schema_is_refused(populated_target, tmp_path):
    target, archive = populated_target
    before = snapshot_of(target)
    newer = tmp_path / "newer.tar.gz"
    repack(archive, newer, lambda m: m.update(schema_revisions=["9999_from_a_newer_cds"]))
    out = target.test_cli_runner().invoke(args=["cds", "restore", str(newer), "--yes"])
    assert out.exit_code == 1
    assert "comes from a newer CDS (schema revision 9999_from_a_newer_cds" in out.output
    assert snapshot_of(target) == before


def test_a_failure_while_loading_rolls_back_everything(populated_target, tmp_path):
    """Rows that cannot be inserted (a user whose profile is missing) stop the restore midway."""
    target, archive = populated_target
    before = snapshot_of(target)
    broken = tmp_path / "broken.tar.gz"
    work = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    (work / "data" / "deployment_profile.jsonl").write_text("")
    manifest = json.loads((work / "manifest.json").read_text())
    manifest["tables"]["deployment_profile"]["rows"] = 0
    manifest["files"]["data/deployment_profile.jsonl"] = sha256(work / "data" / "deployment_profile.jsonl")
    (work / "manifest.json").write_text(json.dumps(manifest))
    with tarfile.open(broken, "w:gz") as tar:
        for name in ["manifest.json", *manifest["files"]]:
            tar.add(work / name, arcname=name)
    with target.app_context():
        # The archive's rows break a foreign key: the database refuses them mid-load.
        with pytest.raises(IntegrityError):
            restore_backup(broken)
    assert snapshot_of(target) == before


def test_a_key_configured_outside_the_instance_folder_is_not_silently_overridden(
        app, empty_instance, tmp_path):
    seed_instance(app)
    archive = tmp_path / "good.tar.gz"
    with app.app_context():
        create_backup(archive)
    target, url, folder = empty_instance(ENCRYPTION_KEY=Fernet.generate_key().decode())
    with target.app_context():
        with pytest.raises(RestoreRefused, match="takes its encryption key from instance/config.py"):
            restore_backup(archive)
        assert not db.inspect(db.engine).has_table("user")


def test_restore_is_refused_while_a_server_runs_on_the_instance(app, empty_instance, make_app, tmp_path):
    archive = tmp_path / "good.tar.gz"
    with app.app_context():
        create_backup(archive)
    target, url, folder = empty_instance()
    # Another process serving this instance holds the scheduler lock.
    make_app(instance_path=str(folder), DATABASE_URL=url, SCHEDULER_ENABLED=True)
    with target.app_context():
        with pytest.raises(RestoreRefused, match="Stop every CDS process"):
            restore_backup(archive)


# --- an older archive is migrated ---------------------------------------------------

def test_an_archive_from_an_older_schema_is_migrated_after_loading(app, empty_instance, tmp_path):
    """This CDS gains a migration after the backup: the restore loads the rows at the
    archive's revision, then runs the new migration over them."""
    from alembic.script import ScriptDirectory

    seed_instance(app)
    archive = tmp_path / "older.tar.gz"
    with app.app_context():
        create_backup(archive)
        from cds.extensions import migrations
        real = migrations(app).directory
    heads = tuple(ScriptDirectory(real).get_heads())
    newer_code = tmp_path / "migrations"
    shutil.copytree(real, newer_code, ignore=shutil.ignore_patterns("__pycache__"))
    (newer_code / "versions" / "9000_restore_probe.py").write_text(f'''"""restore probe"""
from alembic import op
import sqlalchemy as sa

revision = "9000_restore_probe"
down_revision = {heads!r}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("restore_probe", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("users", sa.Integer))
    op.execute('INSERT INTO restore_probe (id, users) SELECT 1, count(*) FROM "user"')


def downgrade():
    op.drop_table("restore_probe")
''')
    target, url, folder = empty_instance()
    from cds.extensions import migrations
    migrations(target).directory = str(newer_code)
    with target.app_context():
        result = restore_backup(archive)
        assert result.from_revisions == sorted(heads)
        assert result.to_revisions == ["9000_restore_probe"]
        assert db.session.execute(text("SELECT users FROM restore_probe")).scalar() == 6
        assert db.session.scalar(select(func.count()).select_from(User)) == 6
        # Ids continue after the restored ones.
        user = add_user("newcomer")
        db.session.commit()
        assert user.id > max(db.session.scalars(select(User.id).where(User.login_id != "newcomer")))
        assert db.session.scalar(select(func.count()).select_from(ClientDevice)) == 1
        assert db.session.scalar(select(func.count()).select_from(Deployment)) == 1


def test_an_archive_from_before_the_secrets_migration_keeps_every_secret(make_app, empty_instance, tmp_path):
    """An archive taken at 0002 (four secret columns) restored into an instance with
    another key: 0003 re-encrypts the secrets with the archive's key."""
    from flask_migrate import upgrade

    from cds.extensions import migrations
    from cds.security import encrypt
    from tests.test_database import insert_profile_sql
    source, _, _ = empty_instance()
    archive = tmp_path / "at-0002.tar.gz"
    with source.app_context():
        upgrade(directory=migrations(source).directory, revision="0002_users")
        insert_profile_sql()
        db.session.execute(text(
            'INSERT INTO "user" (login_id, profile_id, first_name, last_name, number, pbx_number,'
            " pbx_sip_username, mbg_sip_username, mcs_account, email, source, force_config,"
            " redeploy_required, not_in_source, config_version, created_at, updated_at,"
            " mcs_password_enc, voicemail_pin_enc) VALUES ('old', (SELECT id FROM deployment_profile),"
            " 'Old', 'Timer', '', '', '', '', '', 'old@example.test', 'manual', false, false, false, 1,"
            " '2026-01-01', '2026-01-01', :mcs, :pin)"), {"mcs": encrypt("mcs-old-1"), "pin": encrypt("7390")})
        db.session.commit()
        create_backup(archive)
    target, _, _ = empty_instance()
    assert target.config["ENCRYPTION_KEY"] != source.config["ENCRYPTION_KEY"]
    with target.app_context():
        result = restore_backup(archive)
        assert result.from_revisions == ["0002_users"]
        user = db.session.scalar(select(User).where(User.login_id == "old"))
        assert user.secrets() == {"mcs_password": "mcs-old-1", "voicemail_pin": "7390"}


# --- the Settings page ------------------------------------------------------------------

def test_backup_page_downloads_an_archive_for_the_primary_administrator(app, admin_client, tmp_path):
    page = admin_client.get("/settings/backup")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Without a passphrase the archive holds the key" in html
    assert "Download backup" in html

    resp = admin_client.post("/settings/backup", data={"passphrase": "short", "passphrase_confirm": "short"})
    assert resp.status_code == 422 and "at least 8 characters" in resp.get_data(as_text=True)
    resp = admin_client.post("/settings/backup", data={"passphrase": PASSPHRASE, "passphrase_confirm": "other"})
    assert resp.status_code == 422 and "The two passphrases differ" in resp.get_data(as_text=True)

    resp = admin_client.post("/settings/backup", data={"passphrase": "", "passphrase_confirm": ""})
    assert resp.status_code == 200
    assert re.match(r'attachment; filename=cds-backup-\d{8}-\d{6}\.tar\.gz',
                    resp.headers["Content-Disposition"])
    plain = tmp_path / "download.tar.gz"
    plain.write_bytes(resp.data)
    resp = admin_client.post("/settings/backup", data={"passphrase": PASSPHRASE, "passphrase_confirm": PASSPHRASE})
    assert resp.headers["Content-Disposition"].endswith(".cdsbackup")
    assert resp.data.startswith(b"CDS-BACKUP-ENCRYPTED/1\n")
    sealed = tmp_path / "download.cdsbackup"
    sealed.write_bytes(resp.data)
    with app.app_context():
        assert inspect_backup(plain)["tables"]["admin_account"]["rows"] == 1
        assert inspect_backup(sealed, PASSPHRASE)["format"] == "cds-backup/1"
    # The downloads are in the audit trail and listed on the page; no work files stay behind.
    html = admin_client.get("/settings/backup").get_data(as_text=True)
    assert "no passphrase" in html and ">passphrase<" in html
    assert not list(Path(app.instance_path).glob(".download-*"))


def test_backup_page_is_for_the_primary_administrator_only(app, client):
    make_admin(app, "adam", "admin")
    assert sign_in(client, "adam").status_code == 302
    assert client.get("/settings/backup").status_code == 403
    assert client.post("/settings/backup", data={}).status_code == 403
    anonymous = app.test_client()
    assert anonymous.get("/settings/backup").status_code == 302


# --- across database kinds ---------------------------------------------------------------

def test_a_backup_moves_between_sqlite_and_postgresql(app, make_app, fresh_database, database_url, tmp_path):
    """The archive is a portable export: an SQLite appliance moves onto PostgreSQL, and back."""
    if not database_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL: set CDS_TEST_DATABASE_URL=postgresql://…")
    from cds.cli import upgrade_database

    small = make_app(instance_path=str(tmp_path / "appliance"),
                     DATABASE_URL=f"sqlite:///{tmp_path / 'appliance.sqlite3'}")
    with small.app_context():
        upgrade_database()
    seeded = seed_instance(small)
    archive = tmp_path / "appliance.tar.gz"
    with small.app_context():
        create_backup(archive)
    big_url = fresh_database()
    big = make_app(instance_path=str(tmp_path / "cluster"), DATABASE_URL=big_url)
    with big.app_context():
        restore_backup(archive)
    big = make_app(instance_path=str(tmp_path / "cluster"), DATABASE_URL=big_url)
    assert snapshot_of(big)["pin"] == "739104-ann"
    resp = big.test_client().get("/client/v1/config", headers={"Authorization": f"Bearer {seeded['zoe_key']}"})
    assert resp.status_code == 200
    with big.app_context():
        conn = db.session.scalar(select(Connection))
        assert conn.options == {"base_dn": "dc=example,dc=test", "start_tls": True} and conn.enabled is True
        assert db.session.scalar(select(func.count()).select_from(User)) == 6

    back = tmp_path / "cluster.tar.gz"
    with big.app_context():
        create_backup(back)
    again = make_app(instance_path=str(tmp_path / "again"), DATABASE_URL=f"sqlite:///{tmp_path / 'again.sqlite3'}")
    with again.app_context():
        restore_backup(back)
        # SQLite's full-text index was rebuilt from the restored rows by its triggers.
        hits = db.session.execute(text("SELECT count(*) FROM user_search WHERE user_search MATCH 'Tester'")).scalar()
        assert hits == 6
    assert snapshot_of(again)["pin"] == "739104-ann"
