"""Sync and CSV import at 100,000 users.

    .venv/bin/python bench/sync.py [--users 100000] [--url postgresql://…]

1. A Users and Services source (tests/fixtures/source_server.py, real HTTP on
   loopback, in a separate process) holds N users; they are read and imported.
   Then 10% of them change at the source and a Sync data job over all imported
   users is timed: the one read of the source, the record refresh, and the
   per-user comparison and updates. Budget: under 10 s.
2. A CSV file of N rows is previewed (plan_import) and imported (commit_import,
   which plans again and writes) into an empty database. Budget: under 20 s.

SQLite in a temporary instance by default; --url runs on that PostgreSQL server
(a scratch database is created and dropped). --bulk-seed writes the imported users of
part 1 in bulk SQL (seconds for a million) instead of reading and importing them.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402


def make_app(url: str | None, instance: str):
    from cds import create_app
    from cds.cli import upgrade_database

    app = create_app({"DATABASE_URL": url or f"sqlite:///{instance}/bench.sqlite3",
                      "SCHEDULER_ENABLED": False, "JOB_EXECUTION": "inline", "LOG_LEVEL": "WARNING"},
                     instance_path=instance)
    with app.app_context():
        upgrade_database()
    return app


def scratch_postgres(url: str):
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    base = make_url(url.replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"cds_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False), drop


class Timer:
    """Wall time (the budget) and this process's CPU time (what the machine's other load
    cannot inflate as much), for one phase."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def __str__(self):
        return f"{self.wall:7.2f}   (CPU {self.cpu:.2f})"


def serve_source(n: int, changed: bool, ports) -> None:
    """The source, in its own process as a real one would be (its JSON encoding does not
    compete with CDS for the interpreter). With ``changed``, 10% of the users differ:
    names, numbers and e-mail, and every 1000th user has a new login id."""
    from tests.fixtures.source_server import SourceServer, usa_user

    users = [usa_user(i) for i in range(1, n + 1)]
    if changed:
        for i in range(0, n, 10):
            u = users[i]
            u["lastName"] += "-x"
            u["primaryDn"] = str(900000 + i)
            u["email"] = f"changed{i}@example.org"
            if i % 1000 == 0:
                u["loginId"] += "-renamed"
    server = SourceServer(users)
    server.page_limit = 5000
    # CDS holds this token (set on the connection below); it never expires here.
    server.tokens["bench-token"] = datetime(2999, 1, 1, tzinfo=timezone.utc)
    ports.put(server.url)
    server.httpd.serve_forever()


def start_source(n: int, changed: bool):
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    ports = ctx.Queue()
    proc = ctx.Process(target=serve_source, args=(n, changed, ports), daemon=True)
    proc.start()
    return proc, ports.get(timeout=120)


def seed_imported(conn_id: int, n: int) -> None:
    """What reading the source and Import Users leave behind, written in bulk SQL: the
    source's N records and N users imported from them onto the default profile. The
    Sync data job then finds exactly the 10% the source changed, which it checks."""
    from cds.extensions import db
    from cds.models import SOURCE_CONNECTION, utcnow
    from cds.profiles.service import default_profile

    now = utcnow()
    db.session.execute(db.text("""
        WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n)
        INSERT INTO source_record (connection_id, source_key, login_id, first_name, last_name, number,
                                   pbx_number, pbx_sip_username, mbg_sip_username, mcs_account, email,
                                   fetched_at)
        SELECT :conn, 'u-' || CAST(i AS TEXT), 'user' || CAST(i AS TEXT), 'First' || CAST(i AS TEXT),
               'Last' || CAST(i AS TEXT), CAST(4000 + i AS TEXT), '1', CAST(4000 + i AS TEXT),
               'mbg' || CAST(i AS TEXT), 'acct' || CAST(i AS TEXT), 'user' || CAST(i AS TEXT) || '@example.org',
               :now
        FROM seq"""), {"n": n, "conn": conn_id, "now": now})
    h.insert_users_sql("""
        INSERT INTO "user" (login_id, login_key, profile_id, first_name, last_name, number, pbx_number,
                            pbx_sip_username, mbg_sip_username, mcs_account, email, source, connection_id,
                            source_key, force_config, redeploy_required, not_in_source, config_version,
                            created_at, updated_at)
        SELECT login_id, login_id, :profile, first_name, last_name, number, pbx_number, pbx_sip_username,
               mbg_sip_username, mcs_account, email, :source, connection_id, source_key, FALSE, FALSE, FALSE,
               1, :now, :now
        FROM source_record WHERE connection_id = :conn ORDER BY id""",
                       {"profile": default_profile().id, "source": SOURCE_CONNECTION, "conn": conn_id,
                        "now": now})
    db.session.commit()
    h.analyze()


def bench_sync(app, n: int, bulk: bool = False) -> dict:
    from sqlalchemy import func, select

    from cds.connections.service import refresh_source_records, sync_selection
    from cds.extensions import db
    from cds.imports.service import import_records
    from cds.models import Connection, Job, User
    from cds.security import encrypt

    figures = {}
    with app.app_context():
        conn = Connection(name="Bench", kind="usa", url="http://127.0.0.1:9", username="cds",
                          token_enc=encrypt("bench-token"), verified=True,
                          # A source this large needs the connection's limits raised, as an
                          # administrator would (cds.sources.LIMIT_DEFAULTS: 200,000 users).
                          options={"timeout": 120, "page_size": 5000, "max_records": max(200_000, 2 * n),
                                   "max_megabytes": 4096, "max_seconds": 3600})
        db.session.add(conn)
        db.session.commit()
        if bulk:
            with Timer() as seed_s:
                seed_imported(conn.id, n)
            figures["seed records and users (bulk SQL)"] = seed_s
    if not bulk:
        source, url = start_source(n, changed=False)
        try:
            with app.app_context():
                conn = db.session.scalar(select(Connection))
                conn.url = url
                db.session.commit()
                with Timer() as read_s:
                    refresh_source_records(conn)
                with Timer() as import_s:
                    result = import_records({"filter": {}})
                assert result.created == n, result.describe()
                figures.update({"read and store records": read_s, "import (Import Users)": import_s})
        finally:
            source.terminate()
    source, url = start_source(n, changed=True)
    try:
        with app.app_context():
            conn = db.session.scalar(select(Connection))
            conn.url = url
            db.session.commit()
            with Timer() as sync_s:
                job = sync_selection({"filter": {"source": f"c{conn.id}"}})
            job = db.session.get(Job, job.id)
            summary = job.summary
            assert summary["updated"] == n // 10 and summary["unchanged"] == n - n // 10, summary
            renamed = db.session.scalar(select(func.count(User.id)).where(User.redeploy_required))
            return {**figures, "sync job": sync_s, "updated": summary["updated"], "login id changes": renamed}
    finally:
        source.terminate()


def make_csv(n: int) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["Login ID", "Profile", "Firstname", "Lastname", "Number", "PBX Number",
                "MBG SIP User name", "MiCollab Client Service Account", "Email address",
                "Voicemail PIN"])
    for i in range(1, n + 1):
        w.writerow([f"csv{i}", "Default", f"First{i}", f"Last, {i}", f"+44 20 {i:07d}", "1",
                    f"mbg{i}", f"acct{i}", f"csv{i}@example.org", f"{i % 10000:04d}" if i % 4 == 0 else ""])
    return out.getvalue().encode()


def bench_csv(app, n: int) -> dict:
    from cds.imports.csv_import import CsvOptions, commit_import, plan_import

    data = make_csv(n)
    with app.app_context():
        options = CsvOptions()
        with Timer() as preview_s:
            plan = plan_import(data, options)
        assert plan.count("create") == n and not plan.error_count
        with Timer() as commit_s:
            result = commit_import(data, options, file_name="bench.csv")
        assert result.created == n
    total = Timer()
    total.wall, total.cpu = preview_s.wall + commit_s.wall, preview_s.cpu + commit_s.cpu
    return {"file size (MB)": round(len(data) / 2**20, 1), "preview": preview_s,
            "import (plans again, writes)": commit_s, "preview + import": total}


def show(title: str, figures: dict) -> None:
    print(title)
    for k, v in figures.items():
        print(f"  {k:30} {v}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--url", help="PostgreSQL server URL (a scratch database is created)")
    parser.add_argument("--only", choices=("sync", "csv"), help="run only this part")
    parser.add_argument("--bulk-seed", action="store_true",
                        help="sync: write the imported users in bulk SQL instead of reading and importing them")
    args = parser.parse_args()
    for part in (args.only,) if args.only else ("sync", "csv"):
        with tempfile.TemporaryDirectory() as instance:
            drop = None
            url = None
            if args.url:
                url, drop = scratch_postgres(args.url)
            try:
                app = make_app(url, instance)
                if part == "sync":
                    show(f"Sync of {args.users:,} users, 10% changed (seconds):", bench_sync(app, args.users, args.bulk_seed))
                else:
                    show(f"CSV of {args.users:,} rows (seconds):", bench_csv(app, args.users))
                with app.app_context():
                    from cds.extensions import db
                    db.engine.dispose()
            finally:
                if drop:
                    drop()


if __name__ == "__main__":
    main()
