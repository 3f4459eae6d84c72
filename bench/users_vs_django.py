"""The Users tab against Django admin's changelist, measured side by side in one run.

    .venv/bin/python bench/users_vs_django.py [--rounds 5] [--per-round 6] [--users 100000]
                                              [--peer PATH] [--home /tmp/django-peer]

The peer is the Django 5.2 project in shared/peers/django-admin (same table, 5 profiles,
search on 7 fields, the same filters, 50 rows a page). If it is not set up yet, this
script sets it up under --home exactly as its README says (a virtualenv with its
requirements from the package index, `migrate`, `seed_users`); nothing of it enters
the repository.

CDS is seeded from the peer's own rows (same names, numbers, e-mail addresses,
profiles, sources, deployed/downloaded times and flags), so every scenario returns
the same number of hits on both sides; both databases are ANALYZEd. Then the two are
timed in alternating rounds: in each round, each scenario is requested --per-round
times from Django (its test Client, in a worker process running the peer's
interpreter), from CDS as a full page and from CDS as the htmx fragment the page
asks for (Flask's test client, in this process). Medians over all rounds; the ratio
column is the one that matters on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "/admin/deploy/deployuser/"

# (label, Django query string, CDS query string); {std} is the "Standard" profile's id.
SCENARIOS = [
    ("page 1", "", ""),
    ("page 1000", "?p=1000", "?page=1000"),
    ("sort by last name, descending", "?o=-3", "?sort=-last_name"),
    ("search with ~1,000 hits", "?q=smith", "?search=smith"),
    ("search without hits", "?q=zzqx", "?search=zzqx"),
    ("filter profile + state", "?profile__id__exact={std}&deployed=yes",
     "?profile={std}&deployed=yes"),
    ("filter + search", "?profile__id__exact={std}&deployed=yes&q=smith",
     "?profile={std}&deployed=yes&search=smith"),
]


# --------------------------------------------------------------------- the peer's side
def peer_worker() -> None:
    """Runs under the peer's interpreter, in the peer's folder: times requests on demand.

    Reads one JSON object a line ({"url": ..., "n": ...}) and answers one line with
    the wall times in ms and what the last page showed."""
    sys.path.insert(0, os.getcwd())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peerproj.settings")
    import django
    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from deploy.models import Profile
    user_model = get_user_model()
    if not user_model.objects.filter(username="admin").exists():
        user_model.objects.create_superuser("admin", "admin@example.com", "admin-pass")
    client = Client()
    assert client.login(username="admin", password="admin-pass")
    count_re = re.compile(r'<p class="paginator">.*?(\d+) deploy users?', re.S)
    print(json.dumps({"ready": True, "django": django.get_version(),
                      "standard": Profile.objects.get(name="Standard").pk}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        times = []
        for _ in range(cmd["n"]):
            started = time.perf_counter()
            resp = client.get(cmd["url"])
            times.append((time.perf_counter() - started) * 1000)
            assert resp.status_code == 200, (cmd["url"], resp.status_code)
        found = count_re.search(resp.content.decode())
        print(json.dumps({"times": times, "count": int(found.group(1)) if found else None}), flush=True)


def find_peer(given: str | None) -> str:
    candidates = [given] if given else [
        os.path.join(ROOT, "..", "shared", "peers", "django-admin"),
        os.path.join(ROOT, "..", "..", "shared", "peers", "django-admin"),
        "/work/shared/peers/django-admin"]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "manage.py")):
            return os.path.abspath(path)
    sys.exit("The Django peer (shared/peers/django-admin) was not found; give --peer PATH.")


def setup_peer(peer: str, home: str, users: int) -> str:
    """The peer's README, step by step, skipping what is already done. Returns its python."""
    os.makedirs(home, exist_ok=True)
    python = os.path.join(home, "venv", "bin", "python")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PEER_DB=os.path.join(home, "db.sqlite3"))
    if not os.path.exists(python):
        print(f"setting up the Django peer in {home} ...", flush=True)
        subprocess.run(["python3.11", "-m", "venv", os.path.join(home, "venv")], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "-r",
                        os.path.join(peer, "requirements.txt")], check=True, timeout=600)
    db_path = env["PEER_DB"]
    have = 0
    if os.path.exists(db_path):
        with sqlite3.connect(db_path) as conn:
            try:
                have = conn.execute("SELECT count(*) FROM deploy_deployuser").fetchone()[0]
            except sqlite3.OperationalError:
                have = 0
    if have != users:
        subprocess.run(["timeout", "120", python, "manage.py", "migrate", "-v0"], cwd=peer, env=env,
                       check=True)
        subprocess.run(["timeout", "600", python, "manage.py", "seed_users", "--count", str(users)],
                       cwd=peer, env=env, check=True)
    return python


class Peer:
    def __init__(self, python: str, peer: str, home: str):
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PEER_DB=os.path.join(home, "db.sqlite3"),
                   DJANGO_SETTINGS_MODULE="peerproj.settings")
        self.proc = subprocess.Popen(["timeout", "3600", python, os.path.abspath(__file__), "--peer-worker"],
                                     cwd=peer, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def get(self, url: str, n: int) -> dict:
        self.proc.stdin.write(json.dumps({"url": url, "n": n}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Django worker stopped on {url}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------- the CDS side
def seed_cds_from_peer(app, peer_db: str, users: int) -> None:
    """Copy the peer's rows into CDS (a fresh database, or one already holding them)."""
    from sqlalchemy import func, select

    from cds.extensions import db
    from cds.models import Connection, DeploymentProfile, User, utcnow
    from cds.profiles.service import ensure_builtin_profiles

    ensure_builtin_profiles()
    if db.session.scalar(select(func.count(User.id))) == users:
        return
    started = time.perf_counter()
    src = sqlite3.connect(peer_db)
    names = [r[0] for r in src.execute("SELECT name FROM deploy_profile ORDER BY id")]
    for name in names:
        if not db.session.scalar(select(DeploymentProfile.id).where(DeploymentProfile.name == name)):
            db.session.add(DeploymentProfile(name=name, mbg_sip_host="mbg.example.com"))
    # The peer's "ldap" and "mbg" sources are two connections here.
    for name, kind in (("Directory", "ldap"), ("MBG", "mbg")):
        if not db.session.scalar(select(Connection.id).where(Connection.name == name)):
            db.session.add(Connection(name=name, kind=kind, url=f"https://{kind}.example.com"))
    db.session.commit()
    profile_ids = dict(db.session.execute(select(DeploymentProfile.name, DeploymentProfile.id)).all())
    peer_profiles = dict(src.execute("SELECT id, name FROM deploy_profile"))
    conn_ids = {"ldap": db.session.scalar(select(Connection.id).where(Connection.name == "Directory")),
                "mbg": db.session.scalar(select(Connection.id).where(Connection.name == "MBG"))}
    db.session.execute(User.__table__.delete())
    db.session.commit()

    def when(text):
        if not text:
            return None
        from datetime import datetime
        return datetime.fromisoformat(text).replace(tzinfo=None)

    now = utcnow()
    rows = src.execute(
        "SELECT login_id, first_name, last_name, number, mbg_sip_username, micollab_account, email, "
        "profile_id, source, deployed_at, downloaded_at, force_config, redeploy_required, created_at "
        "FROM deploy_deployuser ORDER BY id")
    from cds.imports.service import insert_users
    batch = []
    for (login, first, last, number, mbg, mcs, email, pid, source, deployed, downloaded, force,
         redeploy, created) in rows:
        connection = conn_ids.get(source)
        batch.append(dict(
            login_id=login, profile_id=profile_ids[peer_profiles[pid]], first_name=first,
            last_name=last, number=number, pbx_number="", pbx_sip_username="",
            mbg_sip_username=mbg, mcs_account=mcs, email=email,
            source="connection" if connection else source, connection_id=connection,
            source_key=login if connection else None,
            deployed_at=when(deployed), downloaded_at=when(downloaded), force_config=bool(force),
            redeploy_required=bool(redeploy), not_in_source=False, config_version=1,
            created_at=when(created), updated_at=now))
        if len(batch) == 5000:
            insert_users(batch)
            batch.clear()
    if batch:
        insert_users(batch)
    db.session.commit()
    src.close()
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(db.text("ANALYZE"))
    print(f"CDS seeded from the peer's rows in {time.perf_counter() - started:.1f} s", flush=True)


def cds_app(db_path: str):
    import tempfile
    sys.path.insert(0, ROOT)
    from cds import create_app
    workdir = tempfile.mkdtemp(prefix="cds-vs-django-")
    return create_app({"DATABASE_URL": "sqlite:///" + db_path, "SCHEDULER_ENABLED": False,
                       "JOB_EXECUTION": "inline", "LOG_LEVEL": "WARNING"}, instance_path=workdir)


def cds_client(app):
    from cds.auth.service import create_admin
    from cds.extensions import db
    from cds.models import AdminAccount
    with app.app_context():
        admin = db.session.scalar(db.select(AdminAccount).where(AdminAccount.username == "bench"))
        if admin is None:
            admin = create_admin("bench", "bench password 123", "primary")
        admin_id, epoch = admin.id, admin.session_epoch
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["admin_id"], sess["epoch"] = admin_id, epoch
    return client


FRAGMENT = {"HX-Request": "true", "HX-Target": "users-table"}
TOTAL_RE = re.compile(rb'data-total="(\d+)"')


def time_cds(client, url: str, n: int, fragment: bool) -> dict:
    headers = FRAGMENT if fragment else {}
    times = []
    for _ in range(n):
        started = time.perf_counter()
        resp = client.get(url, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        assert resp.status_code == 200, (url, resp.status_code)
    found = TOTAL_RE.search(resp.data)
    return {"times": times, "count": int(found.group(1)) if found else None}


def main() -> None:
    if "--peer-worker" in sys.argv:
        return peer_worker()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--peer", help="the peer's source folder (shared/peers/django-admin)")
    ap.add_argument("--home", default="/tmp/django-peer", help="where the peer's venv and database live")
    ap.add_argument("--db", default="/tmp/cds-vs-django.sqlite3", help="CDS's SQLite file (kept)")
    ap.add_argument("--profile", metavar="SCENARIO", help="profile CDS on one scenario (its label "
                    "or number, 1-7) with cProfile instead of benchmarking; prints the top functions")
    args = ap.parse_args()

    peer = find_peer(args.peer)
    python = setup_peer(peer, args.home, args.users)
    app = cds_app(args.db)
    with app.app_context():
        from cds.cli import upgrade_database
        from cds.extensions import db
        from cds.models import DeploymentProfile
        upgrade_database()
        seed_cds_from_peer(app, os.path.join(args.home, "db.sqlite3"), args.users)
        std_cds = db.session.scalar(db.select(DeploymentProfile.id).where(DeploymentProfile.name == "Standard"))
    client = cds_client(app)

    if args.profile:
        return profile_cds(client, args.profile, std_cds, args.per_round * args.rounds)

    django = Peer(python, peer, args.home)
    std_dj = django.info["standard"]
    urls = [(label, BASE + dj.format(std=std_dj), "/users" + cds.format(std=std_cds))
            for label, dj, cds in SCENARIOS]
    load_start = os.getloadavg()
    print(f"Django {django.info['django']} vs CDS, {args.users:,} users on SQLite; "
          f"{args.rounds} rounds x {args.per_round} requests per scenario and side after "
          f"{args.warmup} warm-ups; load average at start {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f}", flush=True)
    samples = {label: {"django": [], "page": [], "fragment": []} for label, _, _ in urls}
    counts = {}
    try:
        for label, dj_url, cds_url in urls:
            d = django.get(dj_url, args.warmup)
            time_cds(client, cds_url, args.warmup, False)
            c = time_cds(client, cds_url, args.warmup, True)
            counts[label] = (d["count"], c["count"])
        for rnd in range(args.rounds):
            for label, dj_url, cds_url in urls:
                # Alternate who goes first, so a slow moment hits both sides alike.
                order = ("django", "page", "fragment") if rnd % 2 == 0 else ("fragment", "page", "django")
                for side in order:
                    if side == "django":
                        got = django.get(dj_url, args.per_round)
                    else:
                        got = time_cds(client, cds_url, args.per_round, side == "fragment")
                    samples[label][side].extend(got["times"])
    finally:
        django.close()
    load_end = os.getloadavg()

    print()
    print("| scenario | hits (Django / CDS) | Django ms | CDS page ms | CDS fragment ms "
          "| page ÷ Django | fragment ÷ Django | fragment ÷ page |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for label, _, _ in urls:
        med = {side: statistics.median(v) for side, v in samples[label].items()}
        page_r, frag_r = med["page"] / med["django"], med["fragment"] / med["django"]
        worst = max(worst, page_r, frag_r)
        dj_count, cds_count = counts[label]
        print(f"| {label} | {dj_count:,} / {cds_count:,} | {med['django']:.1f} | {med['page']:.1f} | "
              f"{med['fragment']:.1f} | {page_r:.2f} | {frag_r:.2f} | {med['fragment'] / med['page']:.2f} |")
    print(f"\nworst ratio {worst:.2f}; load average at end {load_end[0]:.2f} {load_end[1]:.2f} "
          f"{load_end[2]:.2f} (2 cores, shared)")


def profile_cds(client, which: str, std: int, n: int) -> None:
    import cProfile
    import pstats
    pick = [s for i, s in enumerate(SCENARIOS, 1) if which in (str(i), s[0])]
    if not pick:
        sys.exit(f"no scenario {which!r}")
    label, _, cds = pick[0]
    url = "/users" + cds.format(std=std)
    for fragment in (False, True):
        time_cds(client, url, 3, fragment)
        prof = cProfile.Profile()
        prof.enable()
        time_cds(client, url, n, fragment)
        prof.disable()
        print(f"=== {label} ({'fragment' if fragment else 'page'}), {n} requests: {url}")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
