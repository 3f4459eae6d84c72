"""The client protocol's statements, run on the database driver's own connection.

Activation and status checks come in bursts from thousands of devices. The
statements are written once as SQLAlchemy Core (so they follow the models), compiled
once per database dialect, and then executed straight on the driver's cursor: per
statement that skips the several layers of bookkeeping that cost more than the
database work itself. Values still pass through the same type conversions as
everywhere else (SQLAlchemy's bind and result processors), so a time written here
reads back the same as one written by the ORM.
"""
from __future__ import annotations

import queue
import threading
import weakref
from collections import namedtuple
from contextlib import contextmanager

from cds.extensions import db


class _Compiled:
    __slots__ = ("sql", "names", "fixed", "bind", "row", "results")

    def __init__(self, stmt, dialect):
        # for_executemany: no implicit RETURNING of new ids (PostgreSQL), which nothing reads.
        compiled = stmt.compile(dialect=dialect, for_executemany=not stmt.is_select)
        missing = [c.key for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
        if missing:
            # Python-side defaults are the ORM's job; here every value is given.
            raise ValueError(f"give {', '.join(missing)} explicitly in: {stmt}")
        self.sql = str(compiled)
        # qmark (SQLite) takes a tuple in statement order; pyformat (psycopg) a dict.
        self.names = tuple(compiled.positiontup) if compiled.positional else None
        # Values written into the statement itself, e.g. .values(force_config=False).
        self.fixed = {name: param.value for name, param in compiled.binds.items() if not param.required}
        self.bind = [(name, proc) for name, param in compiled.binds.items()
                     if (proc := param.type.dialect_impl(dialect).bind_processor(dialect))]
        self.row = self.results = None
        if stmt.is_select:
            columns = list(stmt.selected_columns)
            self.row = namedtuple("Row", [c.key for c in columns])
            self.results = [(i, proc) for i, c in enumerate(columns)
                            if (proc := c.type.dialect_impl(dialect).result_processor(dialect, None))]

    def parameters(self, values: dict):
        """The driver's parameters for ``values`` (which stay as they are)."""
        if self.fixed or self.bind:
            values = {**self.fixed, **values}
            for name, process in self.bind:
                values[name] = process(values[name])
        return values if self.names is None else tuple([values[n] for n in self.names])


class DriverStatement:
    """A Core statement executed on a driver cursor (see the module's docstring)."""

    def __init__(self, stmt):
        self.stmt = stmt

    def _compiled(self, cur: DriverCursor) -> _Compiled:
        compiled = cur.compiled.get(self)
        if compiled is None:
            compiled = cur.compiled[self] = _Compiled(self.stmt, cur.dialect)
        return compiled

    def execute(self, cur: DriverCursor, values: dict) -> int:
        """Run the statement; the number of rows it changed."""
        c = self._compiled(cur)
        cur.raw.execute(c.sql, c.parameters(values))
        if cur.pipeline is not None:
            cur.pipeline.sync()  # the count is known once the server has answered
        return cur.raw.rowcount

    def write(self, cur: DriverCursor, values: dict) -> None:
        """Run a write whose row count nothing needs. In a pipeline (PostgreSQL) it is
        only sent: the server runs it in order, and an error it raises surfaces at the
        next read or at the commit, failing the batch (see GroupCommit)."""
        c = self._compiled(cur)
        cur.raw.execute(c.sql, c.parameters(values))

    def first(self, cur: DriverCursor, values: dict):
        """The first row (attributes named as the selected columns), or None."""
        c = self._compiled(cur)
        cur.raw.execute(c.sql, c.parameters(values))
        return self._row(c, cur.raw.fetchone())

    def send(self, cur: DriverCursor, values: dict):
        """Run the statement without waiting for its answer where the driver allows it
        (a pipeline, on PostgreSQL); a function that returns its first row (as ``first``).
        The group commit sends every unit's statement of a batch before it asks for the
        first answer (see ``Deferred``), so the batch waits for the server once."""
        if cur.pipeline is None:
            row = self.first(cur, values)
            return lambda: row
        c = self._compiled(cur)
        raw = cur.raw.connection.cursor()  # its own cursor: each holds one statement's answer
        raw.execute(c.sql, c.parameters(values))
        return lambda: self._row(c, raw.fetchone())

    @staticmethod
    def _row(c: _Compiled, row):
        if row is None:
            return None
        if c.results:
            row = list(row)
            for i, proc in c.results:
                row[i] = proc(row[i])
        return c.row._make(row)


# Compiled statements, per database dialect (one per engine).
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class DriverCursor:
    """A driver cursor, with its dialect and the statements compiled for it, and the
    pipeline it runs in (psycopg), if any."""
    __slots__ = ("raw", "dialect", "compiled", "pipeline")

    def __init__(self, raw, dialect, pipeline=None):
        self.raw, self.dialect, self.pipeline = raw, dialect, pipeline
        self.compiled = _COMPILED.get(dialect)
        if self.compiled is None:
            self.compiled = _COMPILED[dialect] = {}


@contextmanager
def driver_cursor():
    """A cursor on a pooled driver connection, and the connection to commit.
    Whatever is not committed is rolled back when the connection goes back to the pool."""
    engine = db.engine
    connection = engine.raw_connection()
    try:
        yield DriverCursor(connection.cursor(), engine.dialect), connection
    finally:
        connection.close()


class _Held:
    """A pooled connection the group commit holds from one batch to the next, with its
    cursor. On PostgreSQL (psycopg) it stays in pipeline mode while it is held:
    statements are sent without waiting for each answer, and the client waits only
    where it reads (a row, a row count) and at the commit. A database server on the
    same machine answers each wait after two context switches, which cost more than
    the statements themselves; and leaving pipeline mode after each batch would cost
    one more wait."""
    __slots__ = ("engine", "connection", "cursor", "_pipeline")

    def __init__(self, engine):
        self.engine, self._pipeline = engine, None
        self.connection = engine.raw_connection()
        pipe = None
        try:
            if engine.dialect.driver == "psycopg":
                self._pipeline = self.connection.driver_connection.pipeline()
                pipe = self._pipeline.__enter__()
        except BaseException:
            self.connection.close()
            raise
        self.cursor = DriverCursor(self.connection.cursor(), engine.dialect, pipe)

    def release(self, failed: bool = False) -> None:
        """Back to the pool, out of pipeline mode (the pool's other users expect
        statements answered one by one). ``failed``: a batch failed on it; what it
        left is rolled back first. A connection that cannot be brought back to a
        known state is discarded, and the pool opens a new one in its place."""
        try:
            if failed:
                self.connection.rollback()
            if self._pipeline is not None:
                self._pipeline.__exit__(None, None, None)
        except Exception:
            self.connection.invalidate()
        self.connection.close()


class Deferred:
    """What a unit of the group commit returns when its answer depends on a statement it
    sent without waiting (``DriverStatement.send``): ``finish()`` is called once every
    unit of the batch has been sent, and gives the unit's result (or raises). It may
    refuse (one of the group commit's ``refusals``) only if the statement wrote nothing;
    a refusal found after a write is raised as ``RefusedAfterWriting``."""
    __slots__ = ("finish",)

    def __init__(self, finish):
        self.finish = finish


class RefusedAfterWriting(Exception):
    """A refusal that a unit can only make after its statement has written: the batch is
    rolled back, its units are run again one per transaction, and this unit's answer is
    ``refusal`` with nothing of it written."""

    def __init__(self, refusal: BaseException):
        super().__init__(str(refusal))
        self.refusal = refusal


class _Unit:
    __slots__ = ("work", "result", "error", "promoted", "finished", "signals")

    def __init__(self, work):
        self.work = work
        self.result = None
        self.error: BaseException | None = None
        self.promoted = False  # its request is to lead the next batch
        self.finished = False  # its result or error is in
        # One signal for each of the two; the request's thread sleeps on it (a queue:
        # waking a thread through it costs less than through a threading.Event).
        self.signals: queue.SimpleQueue = queue.SimpleQueue()


class GroupCommit:
    """Group commit for the client protocol.

    Devices activate, poll and download in bursts, and each request's database work
    is small: an indexed read or two and a few one-row writes. A request hands its
    work here as a function of a cursor; one request at a time leads, running every
    queued unit on one connection in one transaction with one commit, while the
    others wait for that commit. That saves a connection checkout, a transaction and
    a commit per request, and on SQLite it is also the turn-taking its single writer
    needs: a waiting request is woken the moment the batch commits, instead of
    sleeping in SQLite's busy handler.

    A unit reads and checks first and writes last. It may refuse (raise one of
    ``refusals``) only before it has written anything, so a refusal leaves the rest
    of the batch alone. Any other failure rolls the batch back, and its units are
    run again one per transaction, so one bad unit never takes the others down with
    it. Nothing is ever half-written.

    On PostgreSQL the batch runs in a pipeline: a unit's writes (``write``) go out
    with the next unit's read or with the commit, and a unit that returns a
    ``Deferred`` (its statement sent, its answer not waited for) is finished only after
    every unit of the batch has been sent, so a batch of such units waits for the
    server twice (their answers, the commit) however many units it has. A write that
    fails makes a later read or the commit fail, which fails the batch as above.

    PostgreSQL takes writers side by side, so there it runs up to ``LANES`` batches at
    once, each on its own connection: while one batch waits for its commit to reach the
    disk, the next is already being sent. Two batches that touch the same rows are
    ordered by PostgreSQL's row locks (a rare deadlock between them fails one batch,
    whose units are then run again one per transaction). SQLite has one writer: one
    lane.

    While requests keep coming, the connections stay with the group commit from one
    batch to the next, and go back to the pool when no request is waiting: a
    checkout from the pool pings the server first (pool_pre_ping), a round trip that
    a busy stream of batches need not pay each time.
    """
    LANES = {"sqlite": 1}
    DEFAULT_LANES = 2

    def __init__(self, refusals: tuple[type[BaseException], ...] = ()):
        self.refusals = refusals
        self._mutex = threading.Lock()
        self._queue: list[_Unit] = []
        self._leaders = 0
        self._idle: list[_Held] = []  # connections between back-to-back batches

    def _held(self) -> _Held:
        engine = db.engine
        with self._mutex:
            held = self._idle.pop() if self._idle else None
        if held is not None:
            if held.engine is engine:
                return held
            held.release()
        return _Held(engine)

    def run(self, work):
        """Run ``work(cursor)`` in the next batch's transaction; what it returns (or raises)."""
        unit = _Unit(work)
        lanes = self.LANES.get(db.engine.dialect.name, self.DEFAULT_LANES)
        with self._mutex:
            self._queue.append(unit)
            lead = self._leaders < lanes
            if lead:
                self._leaders += 1
        while True:
            if lead:
                self._lead(unit)
                lead = False
            with self._mutex:
                if unit.promoted:
                    lead = True
                    continue
                if unit.finished:
                    break
            unit.signals.get()
        if unit.error is not None:
            raise unit.error
        return unit.result

    def _lead(self, unit: _Unit) -> None:
        """``unit``'s request leads: run one batch of everything queued (possibly nothing:
        another lane may have taken it), then hand the lead on."""
        with self._mutex:
            batch, self._queue = self._queue, []
            unit.promoted = False  # a lead handed to it is taken, with the queue
        try:
            if batch:
                self._commit(batch)
        finally:
            # Hand the lead to the oldest waiting request, so nobody waits behind more
            # than one batch of others; unless another lane has already handed its lead
            # to that request, which has not taken it yet: one lead per request, or the
            # second would be lost, and with every lane's lead lost, nothing would run.
            idle = []
            with self._mutex:
                if self._queue and not self._queue[0].promoted:
                    self._queue[0].promoted = True
                    self._queue[0].signals.put(True)
                else:
                    self._leaders -= 1
                    if not self._leaders:
                        idle, self._idle = self._idle, []
            for held in idle:
                held.release()

    def _finished(self, batch: list[_Unit]) -> None:
        with self._mutex:
            for unit in batch:
                unit.finished = True
                unit.signals.put(True)

    def _commit(self, batch: list[_Unit]) -> None:
        held = self._held()
        cur, connection = held.cursor, held.connection
        try:
            for unit in batch:
                try:
                    unit.result, unit.error = unit.work(cur), None
                except self.refusals as refusal:
                    unit.result, unit.error = None, refusal
            if cur.pipeline is not None and any(isinstance(unit.result, Deferred) for unit in batch):
                cur.pipeline.sync()  # every answer at once: one wait for the batch
            for unit in batch:
                if isinstance(unit.result, Deferred):
                    try:
                        unit.result = unit.result.finish()
                    except self.refusals as refusal:
                        unit.result, unit.error = None, refusal
            connection.commit()
            with self._mutex:
                self._idle.append(held)
        except Exception as exc:
            # Rolled back and back to the pool; a retry checks out a pinged one.
            held.release(failed=True)
            if len(batch) > 1:
                for unit in batch:
                    self._commit([unit])
                return
            batch[0].result = None
            batch[0].error = exc.refusal if isinstance(exc, RefusedAfterWriting) else exc
            self._finished(batch)
            return
        except BaseException as exc:
            held.release(failed=True)
            for unit in batch:
                unit.error = exc
            self._finished(batch)
            raise
        self._finished(batch)
