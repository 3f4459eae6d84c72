"""Migrations, secrets at rest, and the single scheduler."""

from sqlalchemy import inspect, text

from cds import create_app
from cds.extensions import db
from cds.models import DeploymentProfile, User, include_in_autogenerate


def insert_profile_sql() -> None:
    """A deployment profile written in SQL, for databases at an older schema revision."""
    db.session.execute(text(
        "INSERT INTO deployment_profile (name, description, client_types, mbg_sip_host, mbg_sip_port,"
        " mbg_sip_transport, pbx_sip_host, pbx_sip_port, pbx_sip_transport, mcs_host, mcs_port,"
        " voicemail_number, link_validity_hours, central_email, email_subject, email_body,"
        " is_do_not_deploy, is_default, created_at, updated_at) VALUES ('Sales', '', 'mobile', '', 5061,"
        " 'TLS', '', 5060, 'UDP', '', 443, '', 96, '', '', '', :no, :yes, '2026-01-01', '2026-01-01')"),
        {"no": False, "yes": True})


def test_migrations_build_the_schema_on_an_empty_database(tmp_path):
    app = create_app({"SCHEDULER_ENABLED": False}, instance_path=str(tmp_path))
    with app.app_context():
        from cds.cli import upgrade_database
        upgrade_database()
        tables = set(inspect(db.engine).get_table_names())
        profiles = [p.name for p in db.session.scalars(db.select(DeploymentProfile))]
    assert {"user", "deployment_profile", "connection", "deployment", "client_device", "job",
            "audit_event", "admin_account", "redirect_entry", "alembic_version"} <= tables
    assert "Do Not Deploy" in profiles and "Default" in profiles


def test_upgrade_keeps_existing_data(tmp_path):
    """A database at the first revision, with data in it, upgrades to the newest without loss."""
    from flask_migrate import downgrade, upgrade

    from cds.security import decrypt, encrypt
    app = create_app({"SCHEDULER_ENABLED": False}, instance_path=str(tmp_path))
    with app.app_context():
        from cds.extensions import migrations
        directory = migrations(app).directory
        upgrade(directory=directory, revision="0001_initial")
        insert_profile_sql()
        db.session.execute(text(
            "INSERT INTO user (login_id, profile_id, first_name, last_name, number, pbx_number,"
            " pbx_sip_username, mbg_sip_username, mcs_account, email, source, force_config,"
            " redeploy_required, not_in_source, config_version, created_at, updated_at,"
            " voicemail_pin_enc, pbx_sip_password_enc)"
            " VALUES ('jdoe', 1, 'Jane', 'Doe', '2001', '', '', '', '', 'jane@example.com', 'manual',"
            " 0, 0, 0, 1, '2026-01-01', '2026-01-01', :pin, :sip)"),
            {"pin": encrypt("482913"), "sip": encrypt("Sup3r-Secret-SIP")})
        db.session.commit()
        from cds.cli import upgrade_database
        upgrade_database()
        user = db.session.scalar(db.select(User).where(User.login_id == "jdoe"))
        assert user.last_name == "Doe" and user.profile.name == "Sales"
        # 0003 moved the four secret columns into one encrypted value, keeping every secret.
        assert user.secrets() == {"voicemail_pin": "482913", "pbx_sip_password": "Sup3r-Secret-SIP"}
        triggers = db.session.scalars(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).all()
        assert {"user_search_ai", "user_search_ad", "user_search_au"} <= set(triggers)
        # And back: the downgrade splits them into their columns again.
        db.session.remove()
        downgrade(directory=directory, revision="0002_users")
        pin, sip, mcs = db.session.execute(text(
            "SELECT voicemail_pin_enc, pbx_sip_password_enc, mcs_password_enc FROM user")).one()
        assert (decrypt(pin), decrypt(sip), mcs) == ("482913", "Sup3r-Secret-SIP", None)


def test_models_and_migrations_agree(ctx):
    """Every model change comes with its migration (autogenerate finds nothing to add)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={
            "include_object": include_in_autogenerate})
        diff = compare_metadata(ctx, db.metadata)
    assert diff == []


def test_secrets_are_encrypted_at_rest(ctx):
    from cds.profiles.service import default_profile
    user = User(login_id="jdoe", last_name="Doe", email="j@example.com", profile=default_profile())
    user.set_secret("voicemail_pin", "482913")
    user.set_secret("pbx_sip_password", "Sup3r-Secret-SIP")
    db.session.add(user)
    db.session.commit()
    raw = db.session.execute(text(
        "SELECT secrets_enc FROM \"user\" WHERE login_id = 'jdoe'")).scalar_one()
    assert raw and "482913" not in raw and "Sup3r-Secret-SIP" not in raw
    db.session.expire_all()
    again = db.session.scalar(db.select(User).where(User.login_id == "jdoe"))
    assert again.get_secret("voicemail_pin") == "482913"
    assert again.has_secret("pbx_sip_password") and not again.has_secret("mcs_password")


def test_exactly_one_scheduler_when_the_app_is_created_twice(make_app, tmp_path):
    first = make_app(SCHEDULER_ENABLED=True, instance_path=str(tmp_path))
    second = make_app(SCHEDULER_ENABLED=True, instance_path=str(tmp_path))
    running = [a.extensions["cds_scheduler"].running for a in (first, second)]
    assert sorted(running) == [False, True]
    # The holder stops: the other takes over at its next try.
    holder, other = (first, second) if running[0] else (second, first)
    holder.extensions["cds_scheduler"].stop()
    assert other.extensions["cds_scheduler"]._try_lead() is True
    assert other.extensions["cds_scheduler"].running


def test_scheduler_not_started_for_cli_or_tests(app):
    assert not app.extensions["cds_scheduler"].running


def test_secrets_under_another_key_stop_the_upgrade_with_nothing_changed(tmp_path, capfd):
    import pytest
    from cryptography.fernet import Fernet
    from flask_migrate import upgrade

    from cds.extensions import migrations
    app = create_app({"SCHEDULER_ENABLED": False}, instance_path=str(tmp_path))
    with app.app_context():
        directory = migrations(app).directory
        upgrade(directory=directory, revision="0002_users")
        foreign = Fernet(Fernet.generate_key()).encrypt(b"1234").decode()
        insert_profile_sql()
        db.session.execute(text(
            "INSERT INTO user (login_id, profile_id, first_name, last_name, number, pbx_number,"
            " pbx_sip_username, mbg_sip_username, mcs_account, email, source, force_config,"
            " redeploy_required, not_in_source, config_version, created_at, updated_at, voicemail_pin_enc)"
            " VALUES ('jdoe', 1, 'Jane', 'Doe', '', '', '', '', '', '', 'manual', 0, 0, 0, 1,"
            " '2026-01-01', '2026-01-01', :pin)"), {"pin": foreign})
        db.session.commit()
        with pytest.raises(SystemExit):  # Flask-Migrate logs the error and exits
            upgrade(directory=directory, revision="heads")
        shown = "".join(capfd.readouterr())
        assert "The secrets of user 1 cannot be decrypted with this instance's encryption key" in shown
        db.session.remove()
        assert db.session.scalar(text("SELECT version_num FROM alembic_version")) == "0002_users"
        assert db.session.scalar(text("SELECT voicemail_pin_enc FROM user")) == foreign
