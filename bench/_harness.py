"""What the benchmarks share.

- Served benchmarks (activate.py, linphone.py): the app under waitress in the bench
  process beside a bare endpoint, the load from a separate process with keep-alive
  connections, phases measured round by round, CPU of this process and of the
  PostgreSQL server per request, medians and ratios to the bare endpoint.
- Users tab benchmarks (users_page.py, scale.py): users seeded in bulk SQL, a signed-in
  test client.
"""
from __future__ import annotations

import http.client
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from statistics import median

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BARE = "bare JSON endpoint"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- served benchmarks: the load generator (its own process) -------------------------

def load(port: int, items: list[str], concurrency: int, request, keep=None) -> dict:
    """Send one request per item over ``concurrency`` keep-alive connections.
    ``request(conn, item)`` sends it; ``keep(status, body)`` returns what to hand back
    (or None). Returns seconds, the status counts and what was kept."""
    lock = threading.Lock()
    queue = list(reversed(items))
    kept: list = []
    codes: dict[int, int] = {}

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        while True:
            with lock:
                if not queue:
                    break
                item = queue.pop()
            request(conn, item)
            resp = conn.getresponse()
            data = resp.read()
            value = keep(resp.status, data) if keep else None
            with lock:
                codes[resp.status] = codes.get(resp.status, 0) + 1
                if value is not None:
                    kept.append(value)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"seconds": time.perf_counter() - started, "codes": codes, "kept": kept}


def client_main(argv: list[str], modes: dict) -> None:
    """The load process: ``script --client PORT MODE CONCURRENCY``, items on stdin.
    ``modes``: mode → (request, keep)."""
    port, mode, concurrency = int(argv[0]), argv[1], int(argv[2])
    request, keep = modes[mode]
    json.dump(load(port, json.load(sys.stdin), concurrency, request, keep), sys.stdout)


def get_bare(conn, item) -> None:
    conn.request("GET", "/bench/bare")


# --- served benchmarks: the server side -----------------------------------------------

def postgres_cpu() -> float:
    """CPU seconds used so far by every postgres process on this machine (the server is
    shared with whatever else uses it, so this is an upper bound for the bench's share)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name.startswith("postgres"):
            total += int(rest[11]) + int(rest[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_load(script: str, port: int, mode: str, items: list[str], concurrency: int) -> dict:
    """One phase: the load process runs ``mode`` over ``items``; adds the CPU seconds this
    process and the PostgreSQL server spent meanwhile."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    pg_before = postgres_cpu()
    proc = subprocess.run([sys.executable, script, "--client", str(port), mode, str(concurrency)],
                          input=json.dumps(items), capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_SELF)
    got = json.loads(proc.stdout)
    got["cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    got["pg_cpu"] = postgres_cpu() - pg_before
    return got


def served_app(db_url: str | None, prefix: str, limited: bool = False):
    """The app as the served benchmarks run it, migrated (logging at WARNING, per-address limit
    raised, a public URL), with the bare endpoint /bench/bare (a view returning
    {"ok": true} through the same app and hooks) and, with ``limited``, the same behind
    the client endpoints' per-address limit at /bench/bare-limited."""
    import logging

    from flask import Blueprint, jsonify

    from cds import create_app, web
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    tmp = tempfile.mkdtemp(prefix=prefix)
    app = create_app({"DATABASE_URL": db_url or f"sqlite:///{tmp}/cds.sqlite3", "SCHEDULER_ENABLED": False,
                      "LOG_LEVEL": "WARNING", "CLIENT_LIMIT_PER_ADDRESS": "10000000/minute",
                      "PUBLIC_URL": "https://cds.example.com"}, instance_path=tmp)
    bare = Blueprint("bench", __name__)
    bare.add_url_rule("/bench/bare", "bare", lambda: jsonify(ok=True))
    app.register_blueprint(bare)
    web.PUBLIC_BLUEPRINTS.add("bench")
    if limited:
        from cds.client.routes import per_address_limit
        guarded = Blueprint("bench_limited", __name__)
        guarded.before_request(per_address_limit)
        guarded.add_url_rule("/bench/bare-limited", "bare_limited", lambda: jsonify(ok=True))
        app.register_blueprint(guarded)
        web.PUBLIC_BLUEPRINTS.add("bench_limited")
    with app.app_context():
        from cds.cli import upgrade_database
        upgrade_database()
    return app


def seed_deployed_users(n: int, profile_id: int, secrets_enc: str, **columns) -> list[str]:
    """An empty database (profiles kept) with ``n`` users on the profile, each with a
    deployment link; their tokens. Inside an app context."""
    from sqlalchemy import insert, select

    from cds.deploy.service import issue_deployments
    from cds.extensions import db
    from cds.models import User
    for table in reversed(db.metadata.sorted_tables):
        if table.name not in ("deployment_profile", "alembic_version"):
            db.session.execute(table.delete())
    db.session.commit()
    db.session.execute(insert(User), [
        {"login_id": f"user{i:05d}", "profile_id": profile_id, "first_name": "Bench", "last_name": f"{i}",
         "email": f"user{i:05d}@example.com", "secrets_enc": secrets_enc,
         **{k: v.format(i=i) for k, v in columns.items()}} for i in range(n)])
    db.session.commit()
    users = list(db.session.scalars(select(User).order_by(User.id)))
    tokens = [t for _, _, t in issue_deployments(users, actor="bench")]
    db.session.commit()
    return tokens


def serve(app, threads: int):
    """waitress (as `flask cds serve` runs it) in a thread of this process; the server and port."""
    from cds.serving import create_server
    port = int(os.environ.get("BENCH_PORT", "0")) or free_port()
    server = create_server(app, host="127.0.0.1", port=port, threads=threads)
    threading.Thread(target=server.run, daemon=True).start()
    return server, port


class Rounds:
    """Per-phase figures of every round: rate, CPU ms per request of this process and of
    PostgreSQL, status counts. A round measures every phase on its own slice of the
    work, so a machine that slows down mid-run shifts all phases of a round alike;
    the figures are medians over the rounds, ratios taken round by round."""

    def __init__(self, phases: tuple[str, ...]):
        self.phases = phases
        self.rates = {p: [] for p in phases}
        self.cpu = {p: [] for p in phases}
        self.pg_cpu = {p: [] for p in phases}
        self.codes = {p: {} for p in phases}
        self.load_start = os.getloadavg()

    def add(self, phase: str, got: dict) -> None:
        count = sum(got["codes"].values())
        self.rates[phase].append(count / got["seconds"])
        self.cpu[phase].append(got["cpu"] * 1000 / count)
        self.pg_cpu[phase].append(got["pg_cpu"] * 1000 / count)
        for code, k in got["codes"].items():
            self.codes[phase][code] = self.codes[phase].get(code, 0) + k

    def of(self, phase: str, reference: str) -> float:
        return median(r / b for r, b in zip(self.rates[phase], self.rates[reference]))

    def report(self, title: str, postgres: bool, references: tuple[str, ...] = (BARE,)) -> None:
        load = os.getloadavg()
        print(f"{title}; medians over the rounds; load average {self.load_start[0]:.2f} at start, "
              f"{load[0]:.2f} at end (2 cores)")
        print("  (CPU = ms per request of this process" + ("; PG = of all postgres processes)" if postgres else ")"))
        for phase in self.phases:
            line = (f"  {phase:20s} {median(self.rates[phase]):6.0f} req/s   CPU {median(self.cpu[phase]):4.2f}"
                    + (f"  PG {median(self.pg_cpu[phase]):4.2f}" if postgres else "")
                    + f"   (status {self.codes[phase]})")
            if phase not in references:
                line += "   " + ", ".join(f"{self.of(phase, ref):.0%} of {ref.replace(' JSON endpoint', '')}"
                                         for ref in references)
            print(line)


# --- Users tab benchmarks ---------------------------------------------------------------

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
PROFILES = ("Sales", "Support", "Engineering", "Teleworkers")


def _names(name: str, values: list[str]) -> str:
    """A VALUES table (k, name, lower-case, login key) of ``values``."""
    from cds.models import login_key
    rows = ", ".join("({}, '{}', '{}', '{}')".format(k, v, v.lower(), login_key(v.lower()))
                     for k, v in enumerate(values))
    return f"{name}(k, name, low, lkey) AS (VALUES {rows})"


def seed_users(n: int) -> None:
    """Up to ``n`` users in the current app's database, in bulk SQL (a million in well
    under a minute): names from FIRST and LAST, 5 profiles, 60% deployed, 42% downloaded,
    2% Force Config, 1% redeploy required, spread by a multiplicative hash of the row
    number, so every run (and every size) has the same mix. On SQLite the Users tab's
    search index is filled in one statement, as a bulk import does. Then ANALYZE."""
    from sqlalchemy import func, select

    from cds.extensions import db
    from cds.models import DeploymentProfile, User, utcnow
    from cds.profiles.service import ensure_builtin_profiles

    ensure_builtin_profiles()
    have = db.session.scalar(select(func.count()).select_from(User))
    if have >= n:
        return
    for name in PROFILES:
        if not db.session.scalar(select(DeploymentProfile.id).where(DeploymentProfile.name == name)):
            db.session.add(DeploymentProfile(name=name, mbg_sip_host="mbg.example.com"))
    db.session.commit()
    profiles = sorted(db.session.scalars(select(DeploymentProfile.id)))[:5]
    started = time.perf_counter()
    profile_rows = ", ".join(f"({k}, {pid})" for k, pid in enumerate(profiles))
    # h: a well-spread number per row; its "digits" in different bases pick each column.
    insert_users_sql(f"""
        WITH RECURSIVE seq(i) AS (SELECT :start UNION ALL SELECT i + 1 FROM seq WHERE i < :stop),
        {_names("fn", FIRST)}, {_names("ln", LAST)}, pr(k, id) AS (VALUES {profile_rows}),
        seeded AS (SELECT i, (i * 2654435761) % 4294967296 AS h FROM seq)
        INSERT INTO "user" (login_id, login_key, profile_id, first_name, last_name, number, pbx_number,
                            pbx_sip_username, mbg_sip_username, mcs_account, email, source, deployed_at,
                            downloaded_at, force_config, redeploy_required, not_in_source, config_version,
                            created_at, updated_at)
        SELECT fn.low || '.' || ln.low || '.' || CAST(i AS TEXT), fn.lkey || '.' || ln.lkey || '.' || CAST(i AS TEXT),
               pr.id, fn.name, ln.name, CAST(100000 + i AS TEXT), CAST(200000 + i AS TEXT),
               CAST(200000 + i AS TEXT), 'mbg' || CAST(100000 + i AS TEXT),
               fn.low || CAST(i AS TEXT) || '@mcs.example.com',
               fn.low || '.' || ln.low || CAST(i AS TEXT) || '@example.com', 'manual',
               CASE WHEN (h / 7) % 100 < 60 THEN :now END,
               CASE WHEN (h / 7) % 100 < 42 THEN :now END,
               (h / 700) % 100 < 2, (h / 70000) % 100 < 1, FALSE, 1, :now, :now
        FROM seeded JOIN fn ON fn.k = h % {len(FIRST)} JOIN ln ON ln.k = (h / {len(FIRST)}) % {len(LAST)}
                    JOIN pr ON pr.k = (h / {len(FIRST) * len(LAST)}) % {len(profiles)}
        ORDER BY i""", {"start": have, "stop": n - 1, "now": utcnow()})
    db.session.commit()
    analyze()
    print(f"  seeded {n - have:,} users in {time.perf_counter() - started:.1f} s", flush=True)


def insert_users_sql(statement: str, params: dict) -> None:
    """Run an INSERT INTO "user" … SELECT (the caller commits). On SQLite the Users tab's
    search index (FTS5, migration 0002) is then filled in one statement, with its per-row
    trigger set aside meanwhile, as a bulk import does (cds.imports.service.insert_users)."""
    from sqlalchemy import func, select, text

    from cds.extensions import db
    from cds.models import User
    trigger = None
    if db.engine.dialect.name == "sqlite":
        trigger = db.session.scalar(text("SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                                         "AND name = 'user_search_ai'"))
    if trigger:
        db.session.execute(text("DROP TRIGGER user_search_ai"))
    before = db.session.scalar(select(func.max(User.id))) or 0
    db.session.execute(text(statement), params)
    if trigger:
        cols = [r[1] for r in db.session.execute(text("PRAGMA table_info(user_search)"))]
        names = ", ".join(f'"{c}"' for c in cols)
        db.session.execute(text(f'INSERT INTO user_search(rowid, {names}) SELECT id, {names} '
                                f'FROM "user" WHERE id > :before'), {"before": before})
        db.session.execute(text(trigger))


def analyze() -> None:
    """Fresh statistics (and on PostgreSQL the visibility map index-only scans need), as
    a database that has been running a while has them."""
    from sqlalchemy import text

    from cds.extensions import db
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE" if db.engine.dialect.name == "sqlite" else "VACUUM ANALYZE"))


def signed_in_client(url: str, users: int):
    """A Flask test client signed in as an administrator of the app on ``url`` (migrated,
    then seeded up to ``users``), and the Sales profile's id."""
    from cds import create_app
    from cds.auth.service import create_admin
    from cds.cli import upgrade_database
    from cds.extensions import db
    from cds.models import AdminAccount, DeploymentProfile

    workdir = tempfile.mkdtemp(prefix="cds-bench-")
    app = create_app({"DATABASE_URL": url, "SCHEDULER_ENABLED": False, "JOB_EXECUTION": "inline",
                      "LOG_LEVEL": "WARNING"}, instance_path=workdir)
    with app.app_context():
        upgrade_database()
        seed_users(users)
        admin = db.session.scalar(db.select(AdminAccount).where(AdminAccount.username == "bench"))
        if admin is None:
            admin = create_admin("bench", "bench password 123", "primary")
        admin_id, epoch = admin.id, admin.session_epoch
        profile = db.session.scalar(db.select(DeploymentProfile.id).where(DeploymentProfile.name == "Sales"))
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["admin_id"], sess["epoch"] = admin_id, epoch
    return client, profile


def timed_get(client, url: str, headers: dict) -> tuple[float, float, object]:
    """Wall and CPU milliseconds of one request, and its response (which must be 200)."""
    started, started_cpu = time.perf_counter(), time.process_time()
    resp = client.get(url, headers=headers)
    wall, cpu = (time.perf_counter() - started) * 1000, (time.process_time() - started_cpu) * 1000
    assert resp.status_code == 200, (url, resp.status_code)
    return wall, cpu, resp
