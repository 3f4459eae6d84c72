"""Configuration: defaults here < instance/config.py < CDS_* environment variables.

Every setting an administrator may change is listed in ``Defaults`` and in the
README's configuration reference. ``load_config`` applies the three layers and
``validate`` turns a wrong value into one ``ConfigError`` line.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

from cds.mail.addresses import AddressError, check_sender


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line for the console."""


class Defaults:
    # Database: None means the SQLite file instance/cds.sqlite3.
    DATABASE_URL = None
    # Flask session signing key; generated into instance/secret_key when unset.
    SECRET_KEY = None
    # Fernet key(s) for secrets at rest; generated into instance/encryption.key.
    ENCRYPTION_KEY = None

    # Where administrators and clients reach this CDS, and the redirect server.
    PUBLIC_URL = "http://127.0.0.1:5000"
    REDIRECT_URL = None  # None: the redirect blueprint of this same app (PUBLIC_URL)
    # Shared secret between this CDS and a redirect server run on its own.
    REDIRECT_API_SECRET = None
    # "local" stores redirect entries in this database; "remote" registers
    # them with a separate redirect server at REDIRECT_URL.
    REDIRECT_MODE = "local"

    HOST = "127.0.0.1"
    PORT = 5000
    THREADS = 8
    # Reverse proxies in front of CDS (0 = none). With N > 0 the client address,
    # scheme and host are taken from the X-Forwarded-* headers the N nearest
    # proxies add; CDS must then be reachable only through them.
    PROXY_FIX = 0

    # Flask-Mail. MAIL_SERVER unset: messages go to instance/outbox/ as .eml.
    MAIL_SERVER = None
    MAIL_PORT = 25
    MAIL_USE_TLS = False
    MAIL_USE_SSL = False
    MAIL_USERNAME = None
    MAIL_PASSWORD = None
    MAIL_DEFAULT_SENDER = "CDS <cds@localhost>"
    MAIL_TIMEOUT = 30
    # Messages per minute for bulk runs (0 = unlimited), for relays that throttle.
    MAIL_RATE_LIMIT = 0

    # Rate limits (Flask-Limiter). Use redis://… when several processes serve.
    RATELIMIT_STORAGE_URI = "memory://"
    LOGIN_LIMIT_PER_ADDRESS = "20/minute;100/hour"
    LOGIN_LIMIT_PER_ACCOUNT = "5/minute;30/hour"
    CLIENT_LIMIT_PER_ADDRESS = "60/minute"
    API_RATE_LIMIT = "600/minute"  # per API token
    # Requests with a missing or wrong API token, per address.
    API_AUTH_FAILURE_LIMIT = "30/minute;200/hour"

    # Scheduler: None = start it only when serving requests (make run).
    SCHEDULER_ENABLED = None
    SCHEDULER_TICK_SECONDS = 5
    # A tick running this long (or none for this long) means the scheduler is stuck:
    # /healthz says "stalled" and the scheduler is restarted.
    SCHEDULER_STALL_SECONDS = 900
    # Bulk jobs: "thread" runs them in the background, "inline" in the request.
    JOB_EXECUTION = "thread"
    JOB_RETENTION_DAYS = 30
    # A running job renews its claim every JOB_HEARTBEAT_SECONDS; a job whose claim
    # was not renewed for JOB_STALE_SECONDS is presumed dead and resumed elsewhere.
    JOB_HEARTBEAT_SECONDS = 5
    JOB_STALE_SECONDS = 30

    LOG_LEVEL = "INFO"
    SESSION_LIFETIME_HOURS = 12
    MAX_UPLOAD_MB = 20


# Keys read from the environment with the CDS_ prefix, and their types.
_BOOL_KEYS = {"MAIL_USE_TLS", "MAIL_USE_SSL", "SCHEDULER_ENABLED"}
_INT_KEYS = {"PORT", "THREADS", "PROXY_FIX", "MAIL_PORT", "MAIL_TIMEOUT", "MAIL_RATE_LIMIT",
             "SCHEDULER_TICK_SECONDS", "SCHEDULER_STALL_SECONDS", "JOB_RETENTION_DAYS", "JOB_HEARTBEAT_SECONDS",
             "JOB_STALE_SECONDS",
             "SESSION_LIFETIME_HOURS", "MAX_UPLOAD_MB"}


def setting_names() -> list[str]:
    return [k for k in vars(Defaults) if k.isupper()]


def _parse_env(key: str, raw: str):
    if key in _BOOL_KEYS:
        low = raw.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
        if low in {"", "auto", "none"} and key == "SCHEDULER_ENABLED":
            return None
        raise ConfigError(f"CDS_{key} must be true or false (got {raw!r})")
    if key in _INT_KEYS:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"CDS_{key} must be a whole number (got {raw!r})") from None
    return raw


def load_config(app, test_config: dict | None = None) -> None:
    """Fill ``app.config`` from the three layers, then derive Flask's own keys."""
    for key in setting_names():
        app.config[key] = getattr(Defaults, key)
    instance_file = Path(app.instance_path) / "config.py"
    if instance_file.exists():
        try:
            app.config.from_pyfile(str(instance_file))
        except Exception as exc:  # a syntax error in the admin's file
            raise ConfigError(f"instance/config.py cannot be read: {exc}") from None
    for key in setting_names():
        env = os.environ.get(f"CDS_{key}")
        if env is not None:
            app.config[key] = _parse_env(key, env)
    if test_config:
        app.config.update(test_config)
    _ensure_keys(app)
    validate(app.config)
    _derive_flask_settings(app)


def _write_private(path: Path, content: str) -> None:
    """Create a file readable by the owner only, never widening an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)


def instance_unusable(path, exc: OSError) -> ConfigError:
    """The one-line error for an instance folder CDS cannot create, read or write."""
    return ConfigError(f"the instance folder {path} cannot be used ({exc.strerror or exc}); "
                       f"it must be a folder the CDS user can write (or set CDS_INSTANCE_PATH)")


def _ensure_keys(app) -> None:
    """First start: generate the session key and the encryption key in instance/."""
    try:
        _ensure_keys_in(app)
    except OSError as exc:
        raise instance_unusable(app.instance_path, exc) from None


def _ensure_keys_in(app) -> None:
    inst = Path(app.instance_path)
    inst.mkdir(parents=True, exist_ok=True)
    if not os.access(inst, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied")
    if inst.stat().st_mode & 0o077:
        os.chmod(inst, 0o700)
    for name, key, make in (
        ("secret_key", "SECRET_KEY", lambda: secrets.token_urlsafe(48)),
        ("encryption.key", "ENCRYPTION_KEY", lambda: Fernet.generate_key().decode()),
    ):
        if app.config.get(key):
            continue
        path = inst / name
        if not path.exists():
            _write_private(path, make() + "\n")
        app.config[key] = path.read_text().strip()


def _check_url(name: str, value, *, required: bool = True) -> None:
    if value in (None, "") and not required:
        return
    parts = urlsplit(str(value or ""))
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"CDS_{name} must be an http:// or https:// URL (got {value!r})")


def validate(cfg) -> None:
    _check_url("PUBLIC_URL", cfg["PUBLIC_URL"])
    _check_url("REDIRECT_URL", cfg["REDIRECT_URL"], required=False)
    for key in ("PORT", "MAIL_PORT"):
        value = cfg[key]
        if not isinstance(value, int) or not 1 <= value <= 65535:
            raise ConfigError(f"CDS_{key} must be a port number 1-65535 (got {value!r})")
    try:
        check_sender(str(cfg["MAIL_DEFAULT_SENDER"] or ""), "CDS_MAIL_DEFAULT_SENDER")
    except AddressError as exc:
        raise ConfigError(f"{exc} (got {cfg['MAIL_DEFAULT_SENDER']!r})") from None
    if cfg["MAIL_USE_TLS"] and cfg["MAIL_USE_SSL"]:
        raise ConfigError("CDS_MAIL_USE_TLS and CDS_MAIL_USE_SSL cannot both be on "
                          "(STARTTLS or implicit TLS, pick one)")
    if cfg["REDIRECT_MODE"] not in {"local", "remote"}:
        raise ConfigError(f"CDS_REDIRECT_MODE must be local or remote (got {cfg['REDIRECT_MODE']!r})")
    if cfg["REDIRECT_MODE"] == "remote" and not (cfg["REDIRECT_URL"] and cfg["REDIRECT_API_SECRET"]):
        raise ConfigError("CDS_REDIRECT_MODE=remote needs CDS_REDIRECT_URL and CDS_REDIRECT_API_SECRET")
    if cfg["JOB_EXECUTION"] not in {"thread", "inline"}:
        raise ConfigError(f"CDS_JOB_EXECUTION must be thread or inline (got {cfg['JOB_EXECUTION']!r})")
    if cfg["LOG_LEVEL"].upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"CDS_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR (got {cfg['LOG_LEVEL']!r})")
    for key in ("MAIL_RATE_LIMIT", "JOB_RETENTION_DAYS", "THREADS", "MAX_UPLOAD_MB", "PROXY_FIX"):
        if not isinstance(cfg[key], int) or cfg[key] < 0:
            raise ConfigError(f"CDS_{key} must be a whole number of 0 or more (got {cfg[key]!r})")
    beat, stale = cfg["JOB_HEARTBEAT_SECONDS"], cfg["JOB_STALE_SECONDS"]
    if not isinstance(beat, (int, float)) or beat <= 0:
        raise ConfigError(f"CDS_JOB_HEARTBEAT_SECONDS must be a number above 0 (got {beat!r})")
    if not isinstance(stale, (int, float)) or stale < 3 * beat:
        raise ConfigError("CDS_JOB_STALE_SECONDS must be at least three times "
                          f"CDS_JOB_HEARTBEAT_SECONDS (got {stale!r} and {beat!r})")
    try:
        Fernet(cfg["ENCRYPTION_KEY"].split(",")[0].encode())
    except Exception:
        raise ConfigError("the encryption key (instance/encryption.key or CDS_ENCRYPTION_KEY) "
                          "is not a valid Fernet key") from None
    url = cfg["DATABASE_URL"]
    if url and url.split(":", 1)[0].split("+")[0] not in {"sqlite", "postgresql", "postgres"}:
        raise ConfigError(f"CDS_DATABASE_URL must be a sqlite:// or postgresql:// URL (got {url.split(':')[0]}:…)")


def _derive_flask_settings(app) -> None:
    cfg = app.config
    url = cfg["DATABASE_URL"] or "sqlite:///" + str(Path(app.instance_path) / "cds.sqlite3")
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    cfg["SQLALCHEMY_DATABASE_URI"] = url
    # Without its own setting the redirect server is this CDS (whatever its URL becomes).
    cfg["REDIRECT_URL_EXPLICIT"] = bool(cfg["REDIRECT_URL"])
    cfg["REDIRECT_URL"] = (cfg["REDIRECT_URL"] or cfg["PUBLIC_URL"]).rstrip("/")
    cfg["PUBLIC_URL"] = cfg["PUBLIC_URL"].rstrip("/")
    https = cfg["PUBLIC_URL"].startswith("https://")
    cfg.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https,
        SESSION_COOKIE_NAME="cds_session",
        PERMANENT_SESSION_LIFETIME=cfg["SESSION_LIFETIME_HOURS"] * 3600,
        PREFERRED_URL_SCHEME="https" if https else "http",
        MAX_CONTENT_LENGTH=cfg["MAX_UPLOAD_MB"] * 1024 * 1024,
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session instead
        WTF_CSRF_HEADERS=["X-CSRFToken"],
        RATELIMIT_HEADERS_ENABLED=True,
        # A rate-limit store (Redis) that is down must not take sign-in down with it:
        # each process falls back to counting in memory until it is back.
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        MAIL_SUPPRESS_SEND=False,
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(url),
    )


def _engine_options(url: str) -> dict:
    if url.startswith("sqlite"):
        # Threads of the server share the file; wait on a busy database rather than fail.
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    return {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}


def describe(cfg) -> dict:
    """The effective settings with secrets masked, for the Settings page and logs."""
    hidden = {"SECRET_KEY", "ENCRYPTION_KEY", "MAIL_PASSWORD", "REDIRECT_API_SECRET"}
    out = {}
    for key in setting_names():
        value = cfg.get(key)
        out[key] = ("(set)" if value else "(not set)") if key in hidden else value
    if out.get("DATABASE_URL"):
        out["DATABASE_URL"] = _mask_url_password(out["DATABASE_URL"])
    return json.loads(json.dumps(out, default=str))


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(":" + parts.password + "@", ":***@", 1)
    return url
