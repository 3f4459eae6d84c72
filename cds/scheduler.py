"""The in-process scheduler, and the guarantee that exactly one runs per installation.

Every process that serves requests competes for a lock: a file lock in
instance/ on SQLite, a PostgreSQL advisory lock (held on its own connection)
when the database is shared by several machines. The holder runs APScheduler;
the others try again every ``RETRY_SECONDS``, so when the holder dies another
takes over within a minute. CLI commands and tests never start it unless asked.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("cds.scheduler")

RETRY_SECONDS = 15
ADVISORY_LOCK_KEY = 0x0CD5_5C4E  # any constant shared by every CDS process

# Periodic work, registered by the areas that own it: name -> (function(app), every N ticks).
TICK_TASKS: dict[str, tuple] = {}
_apps: dict[str, object] = {}


def tick_task(name: str, every_ticks: int = 1):
    def register(fn):
        TICK_TASKS[name] = (fn, every_ticks)
        return fn
    return register


class _FileLock:
    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def acquire(self) -> bool:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self.fh = fh
        return True

    def still_held(self) -> bool:
        return self.fh is not None

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


class _AdvisoryLock:
    """A session-level advisory lock: released by PostgreSQL when the holder's connection dies."""

    def __init__(self, engine):
        self.engine = engine
        self.conn = None

    def acquire(self) -> bool:
        from sqlalchemy import text
        try:
            conn = self.engine.connect()
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}).scalar()
            conn.commit()
        except Exception as exc:
            log.warning("scheduler lock: database unreachable (%s)", exc.__class__.__name__)
            return False
        if not got:
            conn.close()
            return False
        self.conn = conn
        return True

    def still_held(self) -> bool:
        from sqlalchemy import text
        if self.conn is None:
            return False
        try:
            self.conn.execute(text("SELECT 1")).scalar()
            self.conn.commit()
            return True
        except Exception:
            return False

    def release(self) -> None:
        from sqlalchemy import text
        if self.conn is not None:
            # The connection goes back to the pool, so unlock explicitly; if it is
            # broken, discard it (PostgreSQL drops the lock with the session).
            try:
                self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                self.conn.commit()
                self.conn.close()
            except Exception:
                self.conn.invalidate()
            self.conn = None


class Leader:
    """Competes for the lock and runs the scheduler while it holds it."""

    def __init__(self, app):
        self.app = app
        with app.app_context():
            from cds.extensions import db
            engine = db.engine
        if engine.dialect.name == "postgresql":
            self.lock = _AdvisoryLock(engine)
        else:
            self.lock = _FileLock(Path(app.instance_path) / "scheduler.lock")
        self.scheduler: BackgroundScheduler | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.scheduler is not None and self.scheduler.running

    def start(self) -> None:
        if self._thread is None:
            self._try_lead()
            # Keeps checking the lock it holds, or keeps trying to get it.
            self._thread = threading.Thread(target=self._watch, name="cds-scheduler-leader",
                                            daemon=True)
            self._thread.start()

    def _try_lead(self) -> bool:
        if self.running:
            return True
        if not self.lock.acquire():
            return False
        self._start_scheduler()
        log.info("scheduler started in process %s", os.getpid())
        return True

    def _watch(self) -> None:
        while not self._stop.wait(RETRY_SECONDS):
            if self.running and not self.lock.still_held():
                log.warning("scheduler lock lost; stopping the scheduler in this process")
                self._stop_scheduler()
                self.lock.release()
            if not self.running:
                self._try_lead()

    def _start_scheduler(self) -> None:
        app = self.app
        key = app.instance_path + "|" + app.config["SQLALCHEMY_DATABASE_URI"]
        _apps[key] = app
        store = SQLAlchemyJobStore(url=app.config["SQLALCHEMY_DATABASE_URI"],
                                   tablename="apscheduler_jobs",
                                   engine_options=app.config["SQLALCHEMY_ENGINE_OPTIONS"])
        sched = BackgroundScheduler(jobstores={"default": store}, timezone="UTC",
                                    job_defaults={"coalesce": True, "max_instances": 1,
                                                  "misfire_grace_time": 60})
        sched.start()
        sched.add_job("cds.scheduler:tick", "interval", args=[key], id="cds-tick",
                      seconds=app.config["SCHEDULER_TICK_SECONDS"], replace_existing=True)
        self.scheduler = sched

    def _stop_scheduler(self) -> None:
        if self.scheduler is not None:
            try:
                self.scheduler.shutdown(wait=False)
            except Exception:
                pass
            self.scheduler = None

    def stop(self) -> None:
        self._stop.set()
        self._stop_scheduler()
        self.lock.release()


_tick_counter = 0


def tick(app_key: str) -> None:
    """Run every registered periodic task once, each in its own app context."""
    global _tick_counter
    app = _apps.get(app_key)
    if app is None:
        return
    _tick_counter += 1
    for name, (fn, every) in list(TICK_TASKS.items()):
        if _tick_counter % every:
            continue
        with app.app_context():
            try:
                fn(app)
            except Exception:
                log.exception("scheduled task %s failed", name)
                from cds.extensions import db
                db.session.rollback()


def init_app(app) -> None:
    leader = Leader(app)
    app.extensions["cds_scheduler"] = leader
    enabled = app.config["SCHEDULER_ENABLED"]
    if enabled:
        leader.start()
    elif enabled is None:
        # Start when, and only when, the app serves a request: CLI commands never do.
        started = threading.Lock()

        @app.before_request
        def _start_scheduler_once():
            if leader._thread is None and started.acquire(blocking=False):
                leader.start()


def scheduler_state(app) -> str:
    leader = app.extensions.get("cds_scheduler")
    if leader is None or leader._thread is None:
        return "stopped"
    return "active" if leader.running else "standby"
