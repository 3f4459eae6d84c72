"""Client activations and config downloads per second under waitress, beside a bare
JSON endpoint of the same app in the same run.

    .venv/bin/python bench/activate.py [--users 6000] [--rounds 10] [--concurrency 8] [--threads 8] [--db postgresql://…]

The app is served by waitress (as `flask cds serve` does) in this process; the load
comes from a separate process with keep-alive connections, so it does not share this
process's interpreter lock. Phases: the bare endpoint (a view returning {"ok": true}
through the same app, its before/after-request hooks included), POST
/client/v1/activate once per token, GET /client/v1/config and /client/v1/status once
per client key.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from statistics import median

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# --- the load generator (runs in its own process) ---------------------------------

def load(port: int, mode: str, items: list[str], concurrency: int) -> tuple[float, list[str], dict]:
    lock = threading.Lock()
    queue = list(reversed(items))
    keys: list[str] = []
    codes: dict[int, int] = {}

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        while True:
            with lock:
                if not queue:
                    break
                item = queue.pop()
            if mode in ("bare", "bare-limited"):
                conn.request("GET", f"/bench/{mode}")
            elif mode == "activate":
                body = json.dumps({"token": item, "device": {"id": "bench", "platform": "android",
                                                             "app_version": "1.0"}})
                conn.request("POST", "/client/v1/activate", body=body,
                             headers={"Content-Type": "application/json"})
            else:
                conn.request("GET", f"/client/v1/{mode}", headers={"Authorization": f"Bearer {item}"})
            resp = conn.getresponse()
            data = resp.read()
            with lock:
                codes[resp.status] = codes.get(resp.status, 0) + 1
                if mode == "activate" and resp.status == 200:
                    keys.append(json.loads(data)["client_key"])
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, keys, codes


def client_main(argv) -> None:
    port, mode, concurrency = int(argv[0]), argv[1], int(argv[2])
    items = json.load(sys.stdin)
    seconds, keys, codes = load(port, mode, items, concurrency)
    json.dump({"seconds": seconds, "keys": keys, "codes": codes}, sys.stdout)


def _postgres_cpu() -> float:
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


def run_client(port: int, mode: str, items: list[str], concurrency: int) -> dict:
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF)
    pg_before = _postgres_cpu()
    proc = subprocess.run([sys.executable, __file__, "--client", str(port), mode, str(concurrency)],
                          input=json.dumps(items), capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_SELF)
    got = json.loads(proc.stdout)
    got["cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    got["pg_cpu"] = _postgres_cpu() - pg_before
    return got


# --- the server side ------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=8, help="waitress threads (THREADS; 8 by default)")
    ap.add_argument("--db", default=None)
    args = ap.parse_args()

    import logging
    import waitress
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    from flask import Blueprint, jsonify

    from cds import create_app, web
    from cds.extensions import db

    tmp = tempfile.mkdtemp(prefix="cds-bench-activate-")
    app = create_app({"DATABASE_URL": args.db or f"sqlite:///{tmp}/cds.sqlite3", "SCHEDULER_ENABLED": False,
                      "LOG_LEVEL": "WARNING", "CLIENT_LIMIT_PER_ADDRESS": "10000000/minute",
                      "PUBLIC_URL": "https://cds.example.com"}, instance_path=tmp)
    from cds.client.routes import per_address_limit
    bare = Blueprint("bench", __name__)
    bare.add_url_rule("/bench/bare", "bare", lambda: jsonify(ok=True))
    app.register_blueprint(bare)
    # The same endpoint behind the same per-address limit as the client endpoints.
    limited = Blueprint("bench_limited", __name__)
    limited.before_request(per_address_limit)
    limited.add_url_rule("/bench/bare-limited", "bare_limited", lambda: jsonify(ok=True))
    app.register_blueprint(limited)
    web.PUBLIC_BLUEPRINTS.update(("bench", "bench_limited"))

    with app.app_context():
        from sqlalchemy import insert, select
        from cds.cli import upgrade_database
        from cds.deploy.service import issue_deployments
        from cds.models import User
        from cds.profiles.service import default_profile
        from cds.security import encrypt_secrets
        upgrade_database()
        for table in reversed(db.metadata.sorted_tables):
            if table.name not in ("deployment_profile", "alembic_version"):
                db.session.execute(table.delete())
        db.session.commit()
        profile = default_profile()
        secrets = encrypt_secrets({"mcs_password": "Mcs-1", "pbx_sip_password": "Pbx-2",
                                   "teleworker_sip_password": "Tw-3", "voicemail_pin": "1234"})
        db.session.execute(insert(User), [
            {"login_id": f"user{i:05d}", "profile_id": profile.id, "first_name": "Bench", "last_name": f"{i}",
             "email": f"user{i:05d}@example.com", "secrets_enc": secrets} for i in range(args.users)])
        db.session.commit()
        users = list(db.session.scalars(select(User).order_by(User.id)))
        tokens = [t for _, _, t in issue_deployments(users, actor="bench")]
        db.session.commit()

    port = int(os.environ.get("BENCH_PORT", "0")) or _free_port()
    threads = args.threads
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=args.threads)
    threading.Thread(target=server.run, daemon=True).start()

    # Rounds: each measures every phase on its own slice of the tokens, so a machine
    # that slows down or speeds up mid-run shifts all phases of a round alike; the
    # figures are the medians over the rounds.
    n, c, rounds = args.users, args.concurrency, args.rounds
    load_start = os.getloadavg()
    run_client(port, "bare", ["x"] * 300, c)  # warm-up
    phases = ("bare JSON endpoint", "bare, rate limited", "activate", "config download", "status")
    rates: dict[str, list[float]] = {name: [] for name in phases}
    cpu: dict[str, list[float]] = {name: [] for name in phases}
    pg_cpu: dict[str, list[float]] = {name: [] for name in phases}
    codes: dict[str, dict] = {name: {} for name in phases}
    size = n // rounds
    for i in range(rounds):
        batch = tokens[i * size:(i + 1) * size]
        got = {"bare JSON endpoint": run_client(port, "bare", ["x"] * size, c),
               "bare, rate limited": run_client(port, "bare-limited", ["x"] * size, c),
               "activate": run_client(port, "activate", batch, c)}
        keys = got["activate"]["keys"]
        got["config download"] = run_client(port, "config", keys, c)
        got["status"] = run_client(port, "status", keys, c)
        for name, r in got.items():
            count = sum(r["codes"].values())
            rates[name].append(count / r["seconds"])
            cpu[name].append(r["cpu"] * 1000 / count)
            pg_cpu[name].append(r["pg_cpu"] * 1000 / count)
            for code, k in r["codes"].items():
                codes[name][code] = codes[name].get(code, 0) + k
    server.close()

    bare = rates["bare JSON endpoint"]
    limited = rates["bare, rate limited"]
    load = os.getloadavg()
    print(f"{n} users in {rounds} rounds, {c} concurrent keep-alive clients, waitress "
          f"{threads} threads, {'PostgreSQL' if args.db else 'SQLite'}; medians over the rounds; "
          f"load average {load_start[0]:.2f} at start, {load[0]:.2f} at end (2 cores)")
    print("  (CPU = ms per request of this process; PG = of all postgres processes)")
    for name in phases:
        line = (f"  {name:20s} {median(rates[name]):6.0f} req/s   CPU {median(cpu[name]):4.2f}"
                + (f"  PG {median(pg_cpu[name]):4.2f}" if args.db else "")
                + f"   (status {codes[name]})")
        if "bare" not in name:
            of_bare = median(r / b for r, b in zip(rates[name], bare))
            of_limited = median(r / b for r, b in zip(rates[name], limited))
            line += f"   {of_bare:.0%} of bare, {of_limited:.0%} of bare rate-limited"
        print(line)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        main()
