"""Extensions, created once here and bound to the app in ``create_app``."""
import logging
import os
import time

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_mail import Mail
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from htmx_flask import Htmx
from limits.storage import MemoryStorage as _LimitsMemoryStorage
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy import MetaData

# Stable constraint names, so migrations work the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING))
mail = Mail()
csrf = CSRFProtect()
htmx = Htmx()
limiter = Limiter(key_func=get_remote_address, default_limits=[])


class InProcessLimitStorage(_LimitsMemoryStorage):
    """Rate-limit counters in this process (``RATELIMIT_STORAGE_URI=memory://``).

    limits' own memory storage starts a timer thread for every counter update that
    finds none running: under load, a hundred short-lived threads a second. Counters
    already expire when read; this sweeps the stale ones inline, once a second.
    """
    STORAGE_SCHEME = ["cds+memory"]
    SWEEP_SECONDS = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0

    def _MemoryStorage__schedule_expiry(self) -> None:  # replaces the timer thread
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_SECONDS
            self._MemoryStorage__expire_events()


def limiter_storage_uri(uri: str) -> str:
    """The storage Flask-Limiter is given for the configured URI."""
    return "cds+memory://" if uri.startswith("memory://") else uri


def migrations(app):
    """Flask-Migrate (Alembic), set up on first use: the serving process never needs it,
    and Alembic alone would add a tenth to the console's idle memory."""
    if "migrate" not in app.extensions:
        from flask_migrate import Migrate
        Migrate(app, db, directory=os.path.join(os.path.dirname(app.root_path), "migrations"))
    return app.extensions["migrate"]


_fallback_limiter = None


def limit_counter(method: str, item, *keys):
    """``limiter.limiter.<method>(item, *keys)`` (hit, test, get_window_stats) for the
    counters CDS keeps itself (failed sign-ins, bad API tokens). When the shared store
    (Redis) is unreachable they are counted in this process meanwhile, as Flask-Limiter
    does for its own limits (RATELIMIT_IN_MEMORY_FALLBACK_ENABLED): sign-in keeps working."""
    global _fallback_limiter
    try:
        return getattr(limiter.limiter, method)(item, *keys)
    except Exception:  # the store's own errors (redis.ConnectionError, …)
        logging.getLogger("cds").warning("rate-limit storage unreachable; counting in this process")
        if _fallback_limiter is None:
            _fallback_limiter = FixedWindowRateLimiter(InProcessLimitStorage("cds+memory://"))
        return getattr(_fallback_limiter, method)(item, *keys)
