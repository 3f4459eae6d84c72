"""Backup and restore of 100,000 users: budget under 30 s each.

Seeds a fresh instance with 100,000 users (a quarter with all four secrets set),
a deployment link and redirect entry for half of them, then times `create_backup`
(without and with a passphrase) and `restore_backup` into another empty instance,
and checks the restored secrets decrypt. Runs on SQLite, and on PostgreSQL when
CDS_BENCH_DATABASE_URL (or CDS_TEST_DATABASE_URL) points at a reachable server.

    .venv/bin/python bench/backup.py
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from cds import create_app  # noqa: E402
from cds.extensions import db  # noqa: E402
from cds.models import Deployment, RedirectEntry, User, utcnow  # noqa: E402
from cds.security import token_hash  # noqa: E402

USERS = 100_000
BUDGET_SECONDS = 30
PASSPHRASE = "bench passphrase 2024"


def make_app(url: str, folder: Path):
    return create_app({"DATABASE_URL": url, "SCHEDULER_ENABLED": False, "LOG_LEVEL": "WARNING"},
                      instance_path=str(folder))


def seed(app) -> None:
    from cds.cli import upgrade_database
    from cds.profiles.service import default_profile
    from cds.models import USER_SECRETS
    from cds.security import encrypt_secrets
    with app.app_context():
        upgrade_database()
        profile_id = default_profile().id
        cipher = app.extensions["cds_cipher"]
        now = utcnow()
        rows, deployments, redirects = [], [], []
        for i in range(1, USERS + 1):
            row = {"id": i, "login_id": f"user{i:06d}", "profile_id": profile_id,
                   "first_name": f"First{i}", "last_name": f"Last{i % 5000}",
                   "number": f"{2000000 + i}", "email": f"user{i}@example.com",
                   "mbg_sip_username": f"mbg{i}", "mcs_account": f"mcs{i}", "source": "manual",
                   "deployed_at": now if i % 2 else None, "created_at": now, "updated_at": now,
                   "force_config": False, "redeploy_required": False, "not_in_source": False,
                   "config_version": 1}
            row["secrets_enc"] = encrypt_secrets({name: f"{name}-{i}" for name in USER_SECRETS}, cipher) \
                if i % 4 == 0 else None
            rows.append(row)
            if i % 2:
                digest = token_hash(f"bench-token-{i}")
                deployments.append({"user_id": i, "token_hash": digest, "issued_at": now,
                                    "expires_at": now + timedelta(days=4), "recipient": row["email"],
                                    "send_state": "sent", "send_attempts": 1, "sent_at": now})
                redirects.append({"token_hash": digest, "cds_url": "https://cds.example.com",
                                  "expires_at": now + timedelta(days=4)})
        for start in range(0, USERS, 5000):
            db.session.execute(insert(User), rows[start:start + 5000])
        for start in range(0, len(deployments), 5000):
            db.session.execute(insert(Deployment), deployments[start:start + 5000])
            db.session.execute(insert(RedirectEntry), redirects[start:start + 5000])
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text("SELECT setval(pg_get_serial_sequence('\"user\"', 'id'), :v)"), {"v": USERS})
            db.session.commit()


def run(label: str, source_url: str, target_url: str, work: Path) -> list[tuple[str, float]]:
    from cds.backup.create import create_backup
    from cds.backup.restore import restore_backup

    figures = []
    source = make_app(source_url, work / "source")
    started = time.perf_counter()
    seed(source)
    print(f"[{label}] seeded {USERS:,} users in {time.perf_counter() - started:.1f} s", flush=True)
    plain, sealed = work / "bench.tar.gz", work / "bench.cdsbackup"
    with source.app_context():
        started = time.perf_counter()
        result = create_backup(plain, actor="bench")
        figures.append(("backup, no passphrase", time.perf_counter() - started))
        started = time.perf_counter()
        create_backup(sealed, PASSPHRASE, actor="bench")
        figures.append(("backup, with passphrase", time.perf_counter() - started))
        db.engine.dispose()
    print(f"[{label}] archive: {plain.stat().st_size / 1e6:.1f} MB ({result.counts['user']:,} users)", flush=True)
    for name, archive, phrase in (("restore, no passphrase", plain, None),
                                  ("restore, with passphrase", sealed, PASSPHRASE)):
        target = make_app(target_url, work / f"target-{uuid.uuid4().hex[:6]}")
        with target.app_context():
            started = time.perf_counter()
            restored = restore_backup(archive, phrase, actor="bench")
            figures.append((name, time.perf_counter() - started))
            assert restored.counts["user"] == USERS
            user = db.session.get(User, 4000)
            assert user.get_secret("voicemail_pin") == "voicemail_pin-4000"
            assert db.session.scalar(select(func.count()).select_from(Deployment)) == USERS // 2
            db.engine.dispose()
    for name, seconds in figures:
        flag = "ok" if seconds < BUDGET_SECONDS else "OVER BUDGET"
        print(f"[{label}] {name}: {seconds:.1f} s ({flag})", flush=True)
    return figures


def postgres_databases(url: str):
    base = make_url(url.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    names = [f"cds_bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    urls = [base.set(database=n).render_as_string(hide_password=False) for n in names]

    def drop():
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return urls, drop


def main() -> int:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    over = False
    with tempfile.TemporaryDirectory(prefix="cds-bench-backup-") as tmp:
        work = Path(tmp)
        figures = run("SQLite", f"sqlite:///{work / 'source.sqlite3'}", f"sqlite:///{work / 'target.sqlite3'}",
                      work / "sqlite")
        over |= any(s >= BUDGET_SECONDS for _, s in figures)
    pg = os.environ.get("CDS_BENCH_DATABASE_URL") or os.environ.get("CDS_TEST_DATABASE_URL")
    if pg and pg.startswith("postgresql"):
        try:
            (source_url, target_url), drop = postgres_databases(pg)
        except Exception as exc:  # no server: say so, the SQLite figures still stand
            print(f"[PostgreSQL] skipped: {exc.__class__.__name__}: {exc}")
        else:
            try:
                with tempfile.TemporaryDirectory(prefix="cds-bench-backup-") as tmp:
                    figures = run("PostgreSQL", source_url, target_url, Path(tmp))
                    over |= any(s >= BUDGET_SECONDS for _, s in figures)
            finally:
                drop()
    else:
        print("[PostgreSQL] skipped: set CDS_BENCH_DATABASE_URL=postgresql://… to include it")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
