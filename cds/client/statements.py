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
        self.bind = {name: proc for name, param in compiled.binds.items()
                     if (proc := param.type.dialect_impl(dialect).bind_processor(dialect))}
        self.row = self.results = None
        if stmt.is_select:
            columns = list(stmt.selected_columns)
            self.row = namedtuple("Row", [c.key for c in columns])
            self.results = [(i, proc) for i, c in enumerate(columns)
                            if (proc := c.type.dialect_impl(dialect).result_processor(dialect, None))]

    def parameters(self, values: dict):
        if self.fixed:
            values = {**self.fixed, **values}
        if self.bind:
            values = {**values, **{k: p(values[k]) for k, p in self.bind.items()}}
        return values if self.names is None else tuple(values[n] for n in self.names)


class DriverStatement:
    """A Core statement executed on a driver cursor (see the module's docstring)."""

    def __init__(self, stmt):
        self.stmt = stmt
        self._by_dialect: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _compiled(self, dialect) -> _Compiled:
        compiled = self._by_dialect.get(dialect)
        if compiled is None:
            compiled = self._by_dialect[dialect] = _Compiled(self.stmt, dialect)
        return compiled

    def execute(self, cursor, values: dict) -> int:
        """Run the statement; the number of rows it changed."""
        c = self._compiled(cursor.dialect)
        cursor.execute(c.sql, c.parameters(values))
        return cursor.rowcount

    def execute_many(self, cursor, rows: list[dict]) -> None:
        c = self._compiled(cursor.dialect)
        cursor.executemany(c.sql, [c.parameters(values) for values in rows])

    def first(self, cursor, values: dict):
        """The first row (attributes named as the selected columns), or None."""
        c = self._compiled(cursor.dialect)
        cursor.execute(c.sql, c.parameters(values))
        row = cursor.fetchone()
        if row is None:
            return None
        if c.results:
            row = list(row)
            for i, proc in c.results:
                row[i] = proc(row[i])
        return c.row._make(row)


class _Cursor:
    """A driver cursor that knows its dialect."""
    __slots__ = ("cursor", "dialect")

    def __init__(self, cursor, dialect):
        self.cursor, self.dialect = cursor, dialect

    def execute(self, sql, parameters):
        self.cursor.execute(sql, parameters)

    def executemany(self, sql, parameters):
        self.cursor.executemany(sql, parameters)

    def fetchone(self):
        return self.cursor.fetchone()

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount


@contextmanager
def driver_cursor():
    """A cursor on a pooled driver connection, and the connection to commit.
    Whatever is not committed is rolled back when the connection goes back to the pool."""
    engine = db.engine
    connection = engine.raw_connection()
    try:
        yield _Cursor(connection.cursor(), engine.dialect), connection
    finally:
        connection.close()


class Write:
    """One request's writes: an optional guard, a statement that must change exactly
    one row for the rest to happen (consuming a single-use link), then the statements."""
    __slots__ = ("guard", "statements", "applied", "error", "promoted", "done")

    def __init__(self, statements: list[tuple[DriverStatement, dict]],
                 guard: tuple[DriverStatement, dict] | None = None):
        self.guard, self.statements = guard, statements
        self.applied = False
        self.error: BaseException | None = None
        self.promoted = False
        self.done = threading.Event()

    def outcome(self) -> bool:
        """True when written, False when the guard changed nothing; raises what failed."""
        if self.error is not None:
            raise self.error
        return self.applied


class GroupCommit:
    """Group commit for the client protocol's writes.

    Devices activate and download in bursts, and each of their writes is small. A
    request hands its writes here; one request at a time leads, writing everything
    queued in one transaction with one commit, and the others wait for that commit.
    On SQLite this is also the turn-taking its single writer needs: a waiting thread
    is woken the moment the batch commits, instead of sleeping in SQLite's busy
    handler. A batch that fails is retried one write per transaction, so one bad
    write never takes others down with it; nothing is ever half-written.
    """

    def __init__(self):
        self._mutex = threading.Lock()
        self._queue: list[Write] = []
        self._leading = False

    def apply(self, write: Write) -> bool:
        with self._mutex:
            self._queue.append(write)
            lead = not self._leading
            self._leading = True
        if not lead:
            write.done.wait()
            if not write.promoted:
                return write.outcome()
        with self._mutex:
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        finally:
            # Hand the lead to the oldest waiting request, so nobody waits behind
            # more than one batch of others.
            with self._mutex:
                if self._queue:
                    self._queue[0].promoted = True
                    self._queue[0].done.set()
                else:
                    self._leading = False
        return write.outcome()

    def _commit(self, batch: list[Write]) -> None:
        try:
            with driver_cursor() as (cur, connection):
                _run(cur, batch)
                connection.commit()
        except Exception as exc:
            if len(batch) > 1:
                for write in batch:
                    self._commit([write])
                return
            batch[0].applied, batch[0].error = False, exc
        except BaseException as exc:
            for write in batch:
                write.applied, write.error = False, exc
                write.done.set()
            raise
        for write in batch:
            write.done.set()


def _run(cur, batch: list[Write]) -> None:
    by_statement: dict[DriverStatement, list[dict]] = {}
    for write in batch:
        write.applied = write.guard is None or write.guard[0].execute(cur, write.guard[1]) == 1
        if write.applied:
            for stmt, values in write.statements:
                by_statement.setdefault(stmt, []).append(values)
    for stmt, rows in by_statement.items():
        stmt.execute_many(cur, rows)
