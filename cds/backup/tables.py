"""The database as JSON lines, both ways: every table written as one file of rows (a
portable logical export, so an SQLite backup restores onto PostgreSQL and back), and
read back into a schema built at the archive's revision."""
from __future__ import annotations

import base64
import json
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import (JSON, Boolean, Date, DateTime, Float, Integer, LargeBinary, MetaData, Numeric, func,
                        inspect, select, text)
from sqlalchemy.engine import Connection

from cds.backup.format import INSERT_BATCH, SKIPPED_TABLES, ArchiveInvalid


def _column_kind(column) -> str:
    kind = column.type
    if isinstance(kind, DateTime):
        return "datetime"
    if isinstance(kind, Date):
        return "date"
    if isinstance(kind, Boolean):
        return "bool"
    if isinstance(kind, JSON):
        return "json"
    if isinstance(kind, LargeBinary):
        return "bytes"
    if isinstance(kind, Integer):
        return "int"
    if isinstance(kind, (Float, Numeric)):
        return "number"
    return "str"


def _encode(kind: str, value):
    if value is None:
        return None
    if kind in ("datetime", "date"):
        return value.isoformat()
    if kind == "bytes":
        return base64.b64encode(value).decode()
    if kind == "number":
        return float(value)
    return value


def _decode(kind: str, value):
    if value is None:
        return None
    if kind == "datetime":
        return datetime.fromisoformat(value)
    if kind == "date":
        return date.fromisoformat(value)
    if kind == "bytes":
        return base64.b64decode(value)
    if kind == "bool":
        return bool(value)
    return value


def data_tables(conn: Connection) -> list[str]:
    """Ordinary tables only: on SQLite, full-text indexes (virtual tables and their
    shadow tables) are derived data that the migrations and triggers rebuild."""
    if conn.dialect.name == "sqlite":
        return [name for _, name, kind, *_ in conn.exec_driver_sql("PRAGMA main.table_list")
                if kind == "table" and not name.startswith("sqlite_")]
    return inspect(conn).get_table_names()


def export_tables(conn: Connection, data_dir: Path) -> tuple[list[str], dict]:
    """Write every table as JSON lines; returns (schema revisions, table manifest)."""
    meta = MetaData()
    meta.reflect(bind=conn, only=data_tables(conn))
    revisions = []
    if "alembic_version" in meta.tables:
        revisions = sorted(conn.execute(select(meta.tables["alembic_version"].c.version_num)).scalars())
    tables = {}
    for table in meta.sorted_tables:
        if table.name in SKIPPED_TABLES:
            continue
        columns = [(c.name, _column_kind(c)) for c in table.columns]
        order = list(table.primary_key.columns) or list(table.columns)
        path = data_dir / f"{table.name}.jsonl"
        rows = 0
        with open(path, "w", encoding="utf-8") as fh:
            result = conn.execution_options(yield_per=2000).execute(select(table).order_by(*order))
            for row in result:
                fh.write(json.dumps([_encode(kind, value) for (_, kind), value in zip(columns, row)],
                                    ensure_ascii=False, separators=(",", ":")))
                fh.write("\n")
                rows += 1
        tables[table.name] = {"rows": rows, "columns": columns}
    return revisions, tables


def load_rows(conn: Connection, manifest: dict, data_dir: Path) -> dict[str, int]:
    """Insert every table's rows into the schema built at the archive's revision."""
    meta = MetaData()
    meta.reflect(bind=conn, only=data_tables(conn))
    archived = manifest["tables"]
    for name in archived:
        if name not in meta.tables:
            raise ArchiveInvalid(f"The backup has a table {name!r} that schema revision "
                                 f"{', '.join(manifest['schema_revisions'])} does not have; "
                                 "nothing was changed.")
    counts = {}
    for table in meta.sorted_tables:
        if table.name not in archived:
            continue
        columns = archived[table.name]["columns"]
        unknown = [c for c, _ in columns if c not in table.columns]
        if unknown:
            raise ArchiveInvalid(f"The backup's table {table.name} has columns {unknown} this "
                                 "schema revision does not have; nothing was changed.")
        loaded, batch = 0, []
        with open(data_dir / f"{table.name}.jsonl", encoding="utf-8") as fh:
            for line in fh:
                values = json.loads(line)
                batch.append({c: _decode(kind, v) for (c, kind), v in zip(columns, values)})
                if len(batch) >= INSERT_BATCH:
                    conn.execute(table.insert(), batch)
                    loaded, batch = loaded + len(batch), []
        if batch:
            conn.execute(table.insert(), batch)
            loaded += len(batch)
        if loaded != archived[table.name]["rows"]:
            raise ArchiveInvalid(f"Table {table.name} has {loaded} rows in the archive but the "
                                 f"manifest says {archived[table.name]['rows']}; nothing was changed.")
        counts[table.name] = loaded
    return counts


def reset_sequences(conn: Connection) -> None:
    """Rows came with their ids: move each id sequence past the largest one."""
    meta = MetaData()
    meta.reflect(bind=conn)
    for table in meta.sorted_tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, Integer):
            continue
        quoted = conn.dialect.identifier_preparer.quote(table.name)
        sequence = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                {"t": quoted, "c": pk[0].name}).scalar()
        if sequence:
            top = conn.execute(select(func.max(pk[0]))).scalar()
            conn.execute(text("SELECT setval(:s, :v, :called)"),
                         {"s": sequence, "v": top or 1, "called": top is not None})
