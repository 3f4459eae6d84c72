"""Linphone provisioning fetches per second under waitress, beside a bare endpoint of the
same app in the same run (the method of bench/activate.py).

    .venv/bin/python bench/linphone.py [--users 6000] [--rounds 10] [--concurrency 8] [--threads 8] [--db postgresql://…]

The app is served by waitress (as `flask cds serve` does) in this process; the load
comes from a separate process with keep-alive connections, as liblinphone sends them
(GET, a User-Agent, no Accept header). Phases, each round on its own slice of the
tokens: the bare endpoint (a view returning {"ok": true} through the same app, its
before/after-request hooks included), the first fetch of each provisioning URL
(consumes the token, creates the device) and the device re-fetch every later start
of the app makes. Figures are medians over the rounds; ratios are taken round by round.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from statistics import median

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG_URI = re.compile(rb'<entry name="config-uri" overwrite="true">https?://[^/]+([^<]+)</entry>')


# --- the load generator (runs in its own process) ---------------------------------

def load(port: int, mode: str, items: list[str], concurrency: int) -> tuple[float, list[str], dict]:
    lock = threading.Lock()
    queue = list(reversed(items))
    devices: list[str] = []
    codes: dict[int, int] = {}

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        while True:
            with lock:
                if not queue:
                    break
                item = queue.pop()
            if mode == "bare":
                conn.request("GET", "/bench/bare")
            elif mode == "first":
                conn.request("GET", f"/provisioning/linphone/{item}", headers={"User-Agent": "Unknown"})
            else:
                conn.request("GET", item, headers={"User-Agent": "Linphonec/5.1.65",
                                                   "From": "sip:bench@sip.example.com"})
            resp = conn.getresponse()
            data = resp.read()
            with lock:
                codes[resp.status] = codes.get(resp.status, 0) + 1
                if mode == "first" and resp.status == 200:
                    devices.append(CONFIG_URI.search(data).group(1).decode())
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, devices, codes


def client_main(argv) -> None:
    port, mode, concurrency = int(argv[0]), argv[1], int(argv[2])
    items = json.load(sys.stdin)
    seconds, devices, codes = load(port, mode, items, concurrency)
    json.dump({"seconds": seconds, "devices": devices, "codes": codes}, sys.stdout)


def run_client(port: int, mode: str, items: list[str], concurrency: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--client", str(port), mode, str(concurrency)],
                          input=json.dumps(items), capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


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

    tmp = tempfile.mkdtemp(prefix="cds-bench-linphone-")
    app = create_app({"DATABASE_URL": args.db or f"sqlite:///{tmp}/cds.sqlite3", "SCHEDULER_ENABLED": False,
                      "LOG_LEVEL": "WARNING", "CLIENT_LIMIT_PER_ADDRESS": "10000000/minute",
                      "PUBLIC_URL": "https://cds.example.com"}, instance_path=tmp)
    bare = Blueprint("bench", __name__)
    bare.add_url_rule("/bench/bare", "bare", lambda: jsonify(ok=True))
    app.register_blueprint(bare)
    web.PUBLIC_BLUEPRINTS.add("bench")

    with app.app_context():
        from sqlalchemy import insert, select
        from cds.cli import upgrade_database
        from cds.deploy.service import issue_deployments
        from cds.models import User
        from cds.profiles.service import save_profile
        from cds.security import encrypt_secrets
        upgrade_database()
        for table in reversed(db.metadata.sorted_tables):
            if table.name not in ("alembic_version",):
                db.session.execute(table.delete())
        db.session.commit()
        profile = save_profile(None, {"name": "Linphone", "client": "linphone", "sip_domain": "sip.example.com",
                                      "sip_realm": "sip.example.com", "pbx_sip_host": "pbx.example.com"})
        secrets = encrypt_secrets({"pbx_sip_password": "Pbx-2", "voicemail_pin": "1234"})
        db.session.execute(insert(User), [
            {"login_id": f"user{i:05d}", "profile_id": profile.id, "first_name": "Bench", "last_name": f"{i}",
             "email": f"user{i:05d}@example.com", "pbx_sip_username": f"{10000 + i}", "secrets_enc": secrets}
            for i in range(args.users)])
        db.session.commit()
        users = list(db.session.scalars(select(User).order_by(User.id)))
        tokens = [t for _, _, t in issue_deployments(users, actor="bench")]
        db.session.commit()

    port = int(os.environ.get("BENCH_PORT", "0")) or _free_port()
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=args.threads)
    threading.Thread(target=server.run, daemon=True).start()

    n, c, rounds = args.users, args.concurrency, args.rounds
    run_client(port, "bare", ["x"] * 300, c)  # warm-up
    phases = ("bare JSON endpoint", "first fetch", "device re-fetch")
    rates: dict[str, list[float]] = {name: [] for name in phases}
    codes: dict[str, dict] = {name: {} for name in phases}
    size = n // rounds
    for i in range(rounds):
        batch = tokens[i * size:(i + 1) * size]
        got = {"bare JSON endpoint": run_client(port, "bare", ["x"] * size, c),
               "first fetch": run_client(port, "first", batch, c)}
        got["device re-fetch"] = run_client(port, "device", got["first fetch"]["devices"], c)
        for name, r in got.items():
            count = sum(r["codes"].values())
            rates[name].append(count / r["seconds"])
            for code, k in r["codes"].items():
                codes[name][code] = codes[name].get(code, 0) + k
    server.close()

    bare_rates = rates["bare JSON endpoint"]
    print(f"{n} users in {rounds} rounds, {c} concurrent keep-alive clients, waitress "
          f"{args.threads} threads, {'PostgreSQL' if args.db else 'SQLite'}; medians over the rounds")
    for name in phases:
        line = f"  {name:20s} {median(rates[name]):6.0f} req/s   (status {codes[name]})"
        if name != "bare JSON endpoint":
            line += f"   {median(r / b for r, b in zip(rates[name], bare_rates)):.0%} of bare"
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
