"""Users tab with 100,000 users: median server time of the table requests.

    .venv/bin/python bench/users_page.py [--users 100000] [--runs 25] [--db PATH | --url URL]

Seeds a fresh SQLite database (or reuses --db / the PostgreSQL --url if it
already holds the users),
then times requests through the real app (Flask test client, signed in, the
same htmx requests the page makes) and prints the median and 90th percentile
of the wall time and the median CPU time of the process (on PostgreSQL the
database server's own work is in the wall time only).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIRST = ("Anna Ben Carla David Emma Felix Greta Hugo Ida Jonas Klara Lukas Mia Noah Olga Paul Rosa "
         "Sven Tina Uwe Vera Walter Xenia Yusuf Zoe Ahmed Bianca Chen Dmitri Elif Fatima Giulia Hannah "
         "Igor Julia Kenji Lena Marco Nina Oskar Priya Quentin Rahel Sofia Tomas Ursula Viktor Wen "
         "Yara Zlatan").split()
LAST = ("Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Koch Richter Klein "
        "Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger Hofmann Hartmann Lange Schmitt Werner "
        "Krause Meier Lehmann Schmid Schulze Maier Köhler Herrmann König Walter Mayer Huber Kaiser "
        "Fuchs Peters Lang Scholz Möller Weiß Jung Hahn Schubert Vogel Friedrich Keller Günther Frank "
        "Berger Winkler Roth Beck Lorenz Baumann Franke Albrecht Schuster Simon Ludwig Böhm Winter "
        "Kraus Martin Schumacher Krämer Vogt Stein Jäger Otto Sommer Groß Seidel Heinrich Brandt Haas "
        "Schreiber Graf Schulte Dietrich Ziegler Kuhn Kühn Pohl Engel Horn Busch Bergmann Thomas Voigt "
        "Sauer Arnold Wolff Pfeiffer Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez "
        "Martinez Hernandez Lopez Gonzalez Wilson Anderson Taylor Moore Jackson Lee Perez Thompson White "
        "Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen Wright Scott Torres Nguyen Hill "
        "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts").split()


def seed(app, n: int) -> None:
    from sqlalchemy import func, insert, select

    from cds.extensions import db
    from cds.models import DeploymentProfile, User, utcnow
    from cds.profiles.service import ensure_builtin_profiles

    ensure_builtin_profiles()
    have = db.session.scalar(select(func.count(User.id)))
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
        if len(batch) == 5000:
            db.session.execute(insert(User), batch)
            batch.clear()
    if batch:
        db.session.execute(insert(User), batch)
    db.session.commit()
    db.session.commit()
    # Fresh statistics (and, on PostgreSQL, the visibility map index-only scans need),
    # as autovacuum would have them on a database that has been running a while.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(db.text("VACUUM ANALYZE" if db.engine.dialect.name == "postgresql" else "ANALYZE"))
    print(f"seeded {n - have} users in {time.perf_counter() - started:.1f} s")


SCENARIOS = [
    ("first page (full page load)", "/users", False),
    ("first page (table fragment)", "/users", True),
    ("page 1000", "/users?page=1000", True),
    ("sort by Lastname, descending", "/users?sort=-last_name", True),
    ("sort by Firstname", "/users?sort=first_name", True),
    ("sort by Profile", "/users?sort=profile", True),
    ("search with hits: 'schmidt'", "/users?search=schmidt", True),
    ("search with hits: 'anna 1234'", "/users?search=anna+1234", True),
    ("search with no hits: 'zzqx'", "/users?search=zzqx", True),
    ("search, every user: 'example'", "/users?search=example", True),
    ("search, two letters: 'mü'", "/users?search=m%C3%BC", True),
    ("filter: not deployed", "/users?deployed=no", True),
    ("filter: force config pending", "/users?force=1", True),
    ("filter: profile + downloaded", "/users?profile={profile}&downloaded=yes", True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--db", help="SQLite file to use (kept between runs)")
    parser.add_argument("--url", help="PostgreSQL URL instead of SQLite, e.g. "
                                      "postgresql://postgres@127.0.0.1:5432/cds_bench")
    args = parser.parse_args()

    from cds import create_app
    from cds.auth.service import create_admin
    from cds.cli import upgrade_database
    from cds.extensions import db
    from cds.models import AdminAccount, DeploymentProfile

    workdir = tempfile.mkdtemp(prefix="cds-bench-")
    path = args.db or os.path.join(workdir, "cds.sqlite3")
    app = create_app({"DATABASE_URL": args.url or "sqlite:///" + path, "SCHEDULER_ENABLED": False,
                      "JOB_EXECUTION": "inline", "LOG_LEVEL": "WARNING"}, instance_path=workdir)
    with app.app_context():
        upgrade_database()
        seed(app, args.users)
        admin = db.session.scalar(db.select(AdminAccount).where(AdminAccount.username == "bench"))
        if admin is None:
            admin = create_admin("bench", "bench password 123", "primary")
        admin_id, epoch = admin.id, admin.session_epoch
        profile = db.session.scalar(db.select(DeploymentProfile.id).where(DeploymentProfile.name == "Sales"))

    client = app.test_client()
    with client.session_transaction() as sess:
        sess["admin_id"], sess["epoch"] = admin_id, epoch
    fragment = {"HX-Request": "true", "HX-Target": "users-table"}

    print(f"{args.users} users on {'PostgreSQL' if args.url else 'SQLite'}, {args.runs} runs each, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  {'':<36} {'median':>7} {'p90':>7} {'CPU':>7}   (ms; CPU = median CPU time of this process)")
    for label, url, htmx in SCENARIOS:
        url = url.format(profile=profile)
        headers = fragment if htmx else {}
        times, cpu = [], []
        for i in range(args.runs + 3):
            started, started_cpu = time.perf_counter(), time.process_time()
            resp = client.get(url, headers=headers)
            elapsed = (time.perf_counter() - started) * 1000
            assert resp.status_code == 200, (url, resp.status_code)
            if i >= 3:
                times.append(elapsed)
                cpu.append((time.process_time() - started_cpu) * 1000)
        times.sort()
        p90 = times[int(len(times) * 0.9) - 1]
        print(f"  {label:<36} {statistics.median(times):7.1f} {p90:7.1f} {statistics.median(cpu):7.1f}")


if __name__ == "__main__":
    main()
