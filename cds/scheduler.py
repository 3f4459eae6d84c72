"""The in-process scheduler, and the guarantee that exactly one runs per installation.

Every process that serves requests competes for a lock: a file lock in
instance/ on SQLite, a PostgreSQL advisory lock (held on its own connection)
when the database is shared by several machines. The holder runs APScheduler;
the others try again every ``RETRY_SECONDS``, so when the holder dies another
takes over within a minute. CLI commands and tests never start it unless asked.

The scheduler survives its own failures: an exception in a periodic task is
logged and the task backs off (it runs again later, not every tick); a watchdog
restarts the scheduler when its thread died or a tick has been stuck for
SCHEDULER_STALL_SECONDS, and /healthz reports it as "stalled" meanwhile.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text

from cds.extensions import db

log = logging.getLogger("cds.scheduler")

RETRY_SECONDS = 15
ADVISORY_LOCK_KEY = 0x0CD5_5C4E  # any constant shared by every CDS process

# Periodic work, registered by the areas that own it: name -> (function(app), every N ticks).
TICK_TASKS: dict[str, tuple] = {}
_apps: dict[str, object] = {}
# A failing task waits this many ticks, doubling on each failure up to the maximum.
BACKOFF_MAX_TICKS = 12


@dataclass
class TickState:
    """What the running scheduler last did (read by the watchdog and /healthz)."""
    started: float = 0.0    # time.monotonic() when the current / last tick began
    finished: float = 0.0   # ... and when it ended (< started while one runs)
    finished_at: datetime | None = None
    count: int = 0


_ticks: dict[str, TickState] = {}
# name -> (consecutive failures, tick number before which it is not run again)
_failures: dict[str, tuple[int, int]] = {}


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
        if self.conn is None:
            return False
        try:
            self.conn.execute(text("SELECT 1")).scalar()
            self.conn.commit()
            return True
        except Exception:
            return False

    def release(self) -> None:
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
            engine = db.engine
        if engine.dialect.name == "postgresql":
            self.lock = _AdvisoryLock(engine)
        else:
            self.lock = _FileLock(Path(app.instance_path) / "scheduler.lock")
        self.scheduler: BackgroundScheduler | None = None
        self._started_at = 0.0
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
            try:
                self._check()
            except Exception:  # the watchdog itself never stops
                log.exception("scheduler watchdog: check failed")

    def _check(self) -> None:
        if self.running and not self.lock.still_held():
            log.warning("scheduler lock lost; stopping the scheduler in this process")
            self._stop_scheduler()
            self.lock.release()
        problem = self.problem()
        if self.scheduler is not None and problem:
            log.error("scheduler %s; restarting it", problem)
            self._stop_scheduler()
            self._start_scheduler()
            return
        if not self.running:
            self._try_lead()

    @property
    def key(self) -> str:
        return self.app.instance_path + "|" + self.app.config["SQLALCHEMY_DATABASE_URI"]

    def problem(self) -> str | None:
        """Why the scheduler this process leads is not working, or None."""
        sched = self.scheduler
        if sched is None:
            return None
        thread = getattr(sched, "_thread", None)
        if not sched.running or thread is None or not thread.is_alive():
            return "thread has died"
        state = _ticks.get(self.key)
        stall = float(self.app.config["SCHEDULER_STALL_SECONDS"])
        now = time.monotonic()
        if state is not None and state.started > state.finished and now - state.started > stall:
            return f"tick has been running for {now - state.started:.0f} s (stalled)"
        last = max(state.started if state else 0.0, self._started_at)
        if now - last > stall + float(self.app.config["SCHEDULER_TICK_SECONDS"]):
            return f"has not ticked for {now - last:.0f} s (stalled)"
        return None

    def last_tick_at(self) -> datetime | None:
        state = _ticks.get(self.key)
        return state.finished_at if state else None

    def _start_scheduler(self) -> None:
        app = self.app
        key = self.key
        _apps[key] = app
        # The tick lives in memory: it is re-added on every start, and a job store in the
        # database would make the scheduler's own thread write there (and die with a
        # full disk).
        sched = BackgroundScheduler(timezone="UTC",
                                    job_defaults={"coalesce": True, "max_instances": 1,
                                                  "misfire_grace_time": 60})
        sched.start()
        sched.add_job("cds.scheduler:tick", "interval", args=[key], id="cds-tick",
                      seconds=app.config["SCHEDULER_TICK_SECONDS"], replace_existing=True)
        self._started_at = time.monotonic()
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
    """Run every registered periodic task once, each in its own app context. A task
    that fails is logged and backs off; the others run on."""
    global _tick_counter
    app = _apps.get(app_key)
    if app is None:
        return
    state = _ticks.setdefault(app_key, TickState())
    state.started = time.monotonic()
    _tick_counter += 1
    try:
        for name, (fn, every) in list(TICK_TASKS.items()):
            if _tick_counter % every:
                continue
            failures, not_before = _failures.get(name, (0, 0))
            if _tick_counter < not_before:
                continue
            _run_task(app, name, fn, failures)
    finally:
        state.finished = time.monotonic()
        state.finished_at = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        state.count += 1


def _run_task(app, name: str, fn, failures: int) -> None:
    with app.app_context():
        try:
            fn(app)
        except Exception as exc:
            try:
                db.session.rollback()
            except Exception:
                pass
            failures += 1
            wait = min(BACKOFF_MAX_TICKS, 2 ** (failures - 1))
            _failures[name] = (failures, _tick_counter + wait)
            if failures == 1:
                log.exception("scheduled task %s failed; it runs again in %s ticks", name, wait)
            else:
                log.warning("scheduled task %s failed again (%s times; %s: %s); next try in %s ticks",
                            name, failures, exc.__class__.__name__,
                            str(getattr(exc, "orig", None) or exc).splitlines()[0][:200] if str(exc) else "",
                            wait)
        else:
            if failures:
                log.info("scheduled task %s works again after %s failures", name, failures)
                _failures.pop(name, None)
        finally:
            try:
                db.session.remove()
            except Exception:
                pass


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
    """stopped (not started in this process), standby (another process leads), active,
    or stalled (this process leads, but its thread died or a tick is stuck)."""
    leader = app.extensions.get("cds_scheduler")
    if leader is None or leader._thread is None:
        return "stopped"
    if leader.scheduler is not None and leader.problem():
        return "stalled"
    return "active" if leader.running else "standby"


def scheduler_report(app) -> dict:
    """State, the reason when stalled, and when the last tick ended (UTC)."""
    leader = app.extensions.get("cds_scheduler")
    state = scheduler_state(app)
    report = {"state": state, "last_tick_at": None, "problem": None}
    if leader is not None and leader.scheduler is not None:
        last = leader.last_tick_at()
        report["last_tick_at"] = last.isoformat() + "Z" if last else None
        report["problem"] = leader.problem()
    return report
