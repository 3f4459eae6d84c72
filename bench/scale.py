"""How the Users tab, export and sync scale with the number of users (SQLite).

    .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--runs 15] [--skip export,sync]

For each size N:
- Users tab: a SQLite file (/tmp/cds-scale-N.sqlite3, kept and reused) seeded like
  bench/users_page.py (random names, 5 profiles, 60% deployed, 42% downloaded), then
  the htmx table requests the page makes, median of --runs after 3 warm-ups: page 1,
  a search with hits ('schmidt', about 0.7% of users) and a filter (profile Sales +
  downloaded, about 8%). The hits shown are the count the page reports. The sizes take
  turns request by request; wall and CPU time of this process are reported.
- Export: `bench/export.py --users N` on the same database (all N users as CSV through
  the real app, median of 3).
- Sync: `bench/sync.py --users N --only sync` (a source of N users, 10% changed, one
  Sync data job over all of them).
The result a request returns is 50 rows for the page requests whatever N is, and N
rows (or N users compared) for export and sync: a page request that grows with N, or
an export or sync that grows faster than N, is a finding.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

SCENARIOS = [
    ("page 1", "/users"),
    ("search with hits", "/users?search=schmidt"),
    ("filter", "/users?profile={profile}&downloaded=yes"),
]
TOTAL_RE = re.compile(rb'data-total="(\d+)"')


def seed(n: int) -> None:
    """users_page.py's data, inserted in bulk (the search index filled in one statement)."""
    from sqlalchemy import func, select

    from cds.extensions import db
    from cds.imports.service import insert_users
    from cds.models import DeploymentProfile, User, utcnow
    from cds.profiles.service import ensure_builtin_profiles
    from users_page import FIRST, LAST

    ensure_builtin_profiles()
    have = db.session.scalar(select(func.count()).select_from(User))
    if have >= n:
        return
    for name in ("Sales", "Support", "Engineering", "Teleworkers"):
        if not db.session.scalar(select(DeploymentProfile.id).where(DeploymentProfile.name == name)):
            db.session.add(DeploymentProfile(name=name, mbg_sip_host="mbg.example.com"))
    db.session.commit()
    profiles = list(db.session.scalars(select(DeploymentProfile.id)))
    rnd = random.Random(42)
    now = utcnow()
    started = time.perf_counter()
    batch = []
    for i in range(have, n):
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        deployed = now if rnd.random() < 0.6 else None
        batch.append(dict(
            login_id=f"{first.lower()}.{last.lower()}.{i}", profile_id=rnd.choice(profiles),
            first_name=first, last_name=last, number=str(100000 + i), pbx_number=str(200000 + i),
            pbx_sip_username=f"{200000 + i}", mbg_sip_username=f"mbg{100000 + i}",
            mcs_account=f"{first.lower()}{i}@mcs.example.com",
            email=f"{first.lower()}.{last.lower()}{i}@example.com", source="manual",
            deployed_at=deployed, downloaded_at=deployed if deployed and rnd.random() < 0.7 else None,
            force_config=rnd.random() < 0.02, redeploy_required=rnd.random() < 0.01,
            not_in_source=False, config_version=1, created_at=now, updated_at=now))
        if len(batch) == 50_000:
            insert_users(batch)
            db.session.commit()
            batch.clear()
    insert_users(batch)
    db.session.commit()
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(db.text("ANALYZE"))
    print(f"  seeded {n - have:,} users in {time.perf_counter() - started:.1f} s", flush=True)


def tab_client(n: int):
    """A signed-in test client on the kept N-user database (seeded first if needed)."""
    from cds import create_app
    from cds.auth.service import create_admin
    from cds.cli import upgrade_database
    from cds.extensions import db
    from cds.models import AdminAccount, DeploymentProfile

    workdir = tempfile.mkdtemp(prefix="cds-scale-")
    app = create_app({"DATABASE_URL": f"sqlite:////tmp/cds-scale-{n}.sqlite3", "SCHEDULER_ENABLED": False,
                      "JOB_EXECUTION": "inline", "LOG_LEVEL": "WARNING"}, instance_path=workdir)
    with app.app_context():
        upgrade_database()
        seed(n)
        admin = db.session.scalar(db.select(AdminAccount).where(AdminAccount.username == "bench"))
        if admin is None:
            admin = create_admin("bench", "bench password 123", "primary")
        admin_id, epoch = admin.id, admin.session_epoch
        profile = db.session.scalar(db.select(DeploymentProfile.id).where(DeploymentProfile.name == "Sales"))
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["admin_id"], sess["epoch"] = admin_id, epoch
    return client, [(label, url.format(profile=profile)) for label, url in SCENARIOS]


def users_tab(sizes: list[int], runs: int) -> dict:
    """Median wall and CPU ms per request and the hits, per size and scenario. The sizes
    take turns request by request, so a busy moment of the machine hits all of them."""
    headers = {"HX-Request": "true", "HX-Target": "users-table"}
    clients = {n: tab_client(n) for n in sizes}
    wall = {(n, label): [] for n in sizes for label, _ in SCENARIOS}
    cpu = {(n, label): [] for n in sizes for label, _ in SCENARIOS}
    hits = {}
    for i in range(runs + 3):
        for n, (client, urls) in clients.items():
            for label, url in urls:
                started, started_cpu = time.perf_counter(), time.process_time()
                resp = client.get(url, headers=headers)
                if i >= 3:
                    wall[n, label].append((time.perf_counter() - started) * 1000)
                    cpu[n, label].append((time.process_time() - started_cpu) * 1000)
                assert resp.status_code == 200, (url, resp.status_code)
                hits[n, label] = int(TOTAL_RE.search(resp.data).group(1))
    return {key: (statistics.median(wall[key]), statistics.median(cpu[key]), hits[key]) for key in wall}


def run_bench(args: list[str], pattern: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        return f"failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})"
    found = re.search(pattern, proc.stdout, re.M)
    return found.group(1) if found else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--skip", default="", help="comma-separated: export, sync")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    load = os.getloadavg()[0]
    print(f"Users tab, {args.runs} rounds (load average {load:.2f})", flush=True)
    tab = users_tab(sizes, args.runs)
    rows = []
    for n in sizes:
        load = os.getloadavg()[0]
        print(f"{n:,} users (load average {load:.2f})", flush=True)
        for label, _ in SCENARIOS:
            ms, cpu, hits = tab[n, label]
            print(f"  {label}: {ms:.1f} ms, CPU {cpu:.1f} ms ({hits:,} hits)", flush=True)
        export = "-" if "export" in skip else run_bench(
            ["bench/export.py", "--users", str(n), "--url", f"sqlite:////tmp/cds-scale-{n}.sqlite3"],
            r"median ([\d.]+) s")
        print(f"  export: {export} s", flush=True)
        sync = "-" if "sync" in skip else run_bench(
            ["bench/sync.py", "--users", str(n), "--only", "sync"], r"^\s+sync job\s+([\d.]+)")
        print(f"  sync job: {sync} s", flush=True)
        rows.append((n, export, sync, load))
    print()
    print("| users | page 1 ms (CPU) | search with hits ms (CPU; hits) | filter ms (CPU; hits) "
          "| export s | sync job s | load at export/sync |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, export, sync, load in rows:
        cells = []
        for label, _ in SCENARIOS:
            ms, cpu, hits = tab[n, label]
            cells.append(f"{ms:.1f} ({cpu:.1f})" if label == "page 1" else f"{ms:.1f} ({cpu:.1f}; {hits:,})")
        print(f"| {n:,} | {' | '.join(cells)} | {export} | {sync} | {load:.2f} |")


if __name__ == "__main__":
    main()
