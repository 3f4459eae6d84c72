"""Configuration: defaults < instance/config.py < CDS_* environment, first-start keys."""
import os
import stat
import subprocess
import sys

import pytest

from cds import ConfigError, ROOT, create_app


def test_precedence_defaults_instance_file_environment(tmp_path, monkeypatch):
    inst = tmp_path / "inst"
    inst.mkdir()
    (inst / "config.py").write_text('PUBLIC_URL = "https://from-file.example"\n'
                                    'MAIL_SERVER = "smtp.from-file.example"\nMAIL_PORT = 2525\n')
    monkeypatch.setenv("CDS_MAIL_SERVER", "smtp.from-env.example")
    app = create_app({"SCHEDULER_ENABLED": False}, instance_path=str(inst))
    assert app.config["PUBLIC_URL"] == "https://from-file.example"      # file over default
    assert app.config["MAIL_SERVER"] == "smtp.from-env.example"         # env over file
    assert app.config["MAIL_PORT"] == 2525                              # file, typed
    assert app.config["HOST"] == "127.0.0.1"                            # default
    assert app.config["SESSION_COOKIE_SECURE"] is True                  # https public URL
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "sqlite:///" + str(inst / "cds.sqlite3")


def test_environment_values_are_typed(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_PORT", "8080")
    monkeypatch.setenv("CDS_MAIL_USE_TLS", "yes")
    app = create_app({"SCHEDULER_ENABLED": False}, instance_path=str(tmp_path))
    assert app.config["PORT"] == 8080
    assert app.config["MAIL_USE_TLS"] is True


@pytest.mark.parametrize("key,value,words", [
    ("CDS_PORT", "eighty", "CDS_PORT must be a whole number"),
    ("CDS_MAIL_PORT", "70000", "CDS_MAIL_PORT must be a port number"),
    ("CDS_PUBLIC_URL", "cds.example.com", "CDS_PUBLIC_URL must be an http:// or https:// URL"),
    ("CDS_DATABASE_URL", "mysql://x/y", "CDS_DATABASE_URL must be a sqlite:// or postgresql://"),
    ("CDS_MAIL_USE_SSL", "maybe", "CDS_MAIL_USE_SSL must be true or false"),
])
def test_wrong_setting_is_one_clear_line(tmp_path, monkeypatch, key, value, words):
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=words):
        create_app({"SCHEDULER_ENABLED": False}, instance_path=str(tmp_path))
    # Through the real entry point: one line on stderr, no traceback, exit 2.
    env = dict(os.environ, CDS_INSTANCE_PATH=str(tmp_path), **{key: value})
    proc = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "cds", "upgrade"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0]


def test_first_start_generates_private_keys_and_reuses_them(tmp_path):
    inst = tmp_path / "fresh"
    app = create_app({"SCHEDULER_ENABLED": False}, instance_path=str(inst))
    for name in ("secret_key", "encryption.key"):
        mode = stat.S_IMODE(os.stat(inst / name).st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    again = create_app({"SCHEDULER_ENABLED": False}, instance_path=str(inst))
    assert again.config["SECRET_KEY"] == app.config["SECRET_KEY"]
    assert again.config["ENCRYPTION_KEY"] == app.config["ENCRYPTION_KEY"]
    assert len(app.config["SECRET_KEY"]) >= 40
