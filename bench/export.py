"""Export (CSV) of 100,000 users: time to stream the whole file, and memory growth.

    .venv/bin/python bench/export.py [--users 100000] [--url postgresql://…]

Seeds a fresh SQLite database (or the given PostgreSQL database, emptied first
unless it already holds exactly that many users) with users carrying all four secrets, then downloads GET /users/export.csv?all_matching=1
through the real app (Flask test client, signed in), reading the streamed body
chunk by chunk as a browser would and throwing it away. Three runs are timed; a
fourth run measures the peak of Python allocations (tracemalloc) and the growth
of the process's peak RSS (VmHWM, reset just before the run) during the export.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIRST = "Anna Ben Carla David Emma Felix Greta Hugo Ida Jonas Klara Lukas Mia Noah Olga Paul Zoë".split()
LAST = "Müller Schmidt O'Neil Fischer Weber Meyer Smith Johnson García Nguyen Lee Brown".split()


def seed(app, n: int) -> None:
    from sqlalchemy import insert

    from cds.extensions import db
    from cds.models import USER_SECRETS, DeploymentProfile, User, utcnow
    from cds.profiles.service import ensure_builtin_profiles
    from cds.security import encrypt_secrets

    ensure_builtin_profiles()
    for name in ("Sales", "Support", "Engineering"):
        db.session.add(DeploymentProfile(name=name))
    db.session.commit()
    profiles = [p.id for p in db.session.scalars(db.select(DeploymentProfile))]
    # Every user carries the four secrets (one ciphertext reused: the export never reads them).
    secret = encrypt_secrets({name: "bench-secret-1234" for name in USER_SECRETS})
    rnd = random.Random(7)
    now = utcnow()
    rows = []
    for i in range(n):
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        deployed = now if rnd.random() < 0.6 else None
        rows.append(dict(
            login_id=f"{first.lower()}.{last.lower()}.{i}", profile_id=rnd.choice(profiles),
            first_name=first, last_name=last if i % 50 else f"=HYPERLINK(\"x{i}\")",
            number=f"+44 20 7946 {i % 10000:04}", pbx_number=str(200000 + i),
            pbx_sip_username=str(200000 + i), mbg_sip_username=f"mbg{100000 + i}",
            mcs_account=f"{first.lower()}{i}@mcs.example.com", email=f"{first.lower()}{i}@example.com",
            source="manual", deployed_at=deployed, downloaded_at=deployed if rnd.random() < 0.5 else None,
            secrets_enc=secret, config_version=1, created_at=now, updated_at=now))
        if len(rows) == 5000:
            db.session.execute(insert(User), rows)
            rows.clear()
    if rows:
        db.session.execute(insert(User), rows)
    db.session.commit()


def vm(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def export_once(client) -> tuple[float, int, int]:
    started = time.perf_counter()
    resp = client.get("/users/export.csv?all_matching=1", buffered=False)
    assert resp.status_code == 200 and resp.is_streamed
    size = chunks = 0
    for chunk in resp.response:
        size += len(chunk)
        chunks += 1
    resp.close()
    return time.perf_counter() - started, size, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--url", help="PostgreSQL URL (the database is emptied)")
    args = parser.parse_args()

    from cds import create_app
    from cds.extensions import db
    from tests.conftest import CSRFClient, TEST_PASSWORD, empty_database, sign_in

    instance = tempfile.mkdtemp(prefix="cds-bench-export-")
    url = args.url or f"sqlite:///{instance}/bench.sqlite3"
    if url.startswith("postgresql://"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    app = create_app({"DATABASE_URL": url, "SCHEDULER_ENABLED": False, "TESTING": True,
                      "WTF_CSRF_ENABLED": False, "PUBLIC_URL": "http://cds.bench"}, instance_path=instance)
    app.test_client_class = CSRFClient
    with app.app_context():
        from cds.auth.service import create_admin
        from cds.cli import upgrade_database
        from cds.models import AdminAccount
        upgrade_database()
        from cds.models import User
        if db.session.scalar(db.select(db.func.count(User.id))) == args.users:
            print(f"reusing the {args.users:,} users already in the database ({db.engine.dialect.name})")
            db.session.execute(db.delete(AdminAccount))
            db.session.commit()
        else:
            empty_database()
            t = time.perf_counter()
            seed(app, args.users)
            print(f"seeded {args.users:,} users in {time.perf_counter() - t:.1f} s "
                  f"({db.engine.dialect.name})")
        create_admin("bench", TEST_PASSWORD, "primary")
    client = app.test_client()
    assert sign_in(client, "bench").status_code == 302

    export_once(client)  # warm-up: imports, statement caches, database pages
    times, cpu = [], []
    for _ in range(3):
        started_cpu = time.process_time()
        seconds, size, chunks = export_once(client)
        times.append(seconds)
        cpu.append(time.process_time() - started_cpu)
    print(f"export of {args.users:,} users: {size / 1e6:.1f} MB in {chunks} chunks; "
          f"runs {', '.join(f'{s:.2f}' for s in times)} s; median {statistics.median(times):.2f} s; "
          f"CPU of this process {statistics.median(cpu):.2f} s (load average {os.getloadavg()[0]:.2f})")

    rss_before = vm("VmRSS")
    can_reset = reset_peak_rss()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    export_once(client)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = vm("VmHWM")
    print(f"peak Python allocations during the export: {(peak - base) / 2**20:.1f} MiB (tracemalloc)")
    if can_reset:
        print(f"peak RSS growth during the export: {hwm - rss_before:.1f} MiB "
              f"(RSS before {rss_before:.0f} MiB, peak {hwm:.0f} MiB)")


if __name__ == "__main__":
    main()
