"""Client activations and config downloads per second under waitress, beside a bare
JSON endpoint of the same app in the same run.

    .venv/bin/python bench/activate.py [--users 6000] [--rounds 10] [--concurrency 8] [--threads 8] [--db postgresql://…]
    .venv/bin/python bench/activate.py --alone 4 [--users 2000] [--db postgresql://…]

The app is served by waitress (as `flask cds serve` does) in this process; the load
comes from a separate process with keep-alive connections, so it does not share this
process's interpreter lock. Phases: the bare endpoint (a view returning {"ok": true}
through the same app, its before/after-request hooks included), the same behind the
client endpoints' per-address limit, POST /client/v1/activate once per token, GET
/client/v1/config and /client/v1/status once per client key (bench/_harness.py).
--alone K times the database part alone: the group commit running batches of K
activations on one connection, CPU per activation of this process and of PostgreSQL.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402

PHASES = (h.BARE, "bare, rate limited", "activate", "config download", "status")


def _activate(conn, token) -> None:
    body = json.dumps({"token": token, "device": {"id": "bench", "platform": "android", "app_version": "1.0"}})
    conn.request("POST", "/client/v1/activate", body=body, headers={"Content-Type": "application/json"})


def _with_key(path):
    return lambda conn, key: conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})


MODES = {
    "bare": (h.get_bare, None),
    "bare-limited": (lambda conn, item: conn.request("GET", "/bench/bare-limited"), None),
    "activate": (_activate, lambda status, data: json.loads(data)["client_key"] if status == 200 else None),
    "config": (_with_key("/client/v1/config"), None),
    "status": (_with_key("/client/v1/status"), None),
}


def group_commit_alone(tokens: list[str], k: int, postgres: bool) -> None:
    """The database part of activation alone: the group commit runs batches of ``k``
    activations on one connection (no HTTP, no threads); CPU per activation of this
    process and of the PostgreSQL server."""
    import time

    from cds.client import service
    from cds.client.statements import GroupCommit, _Unit
    from cds.models import utcnow
    from cds.security import new_token

    group = GroupCommit(refusals=(service.ClientError,))
    device = {"id": "bench", "platform": "android", "app_version": "1.0"}

    def unit(token):
        now, key = utcnow(), new_token()
        return _Unit(lambda cur: service.use_link(cur, service._FIRST_USE, token, now, "127.0.0.1", device, key,
                                                  check=lambda r: None, build=lambda r: service._document(r, now)))

    group._commit([unit(t) for t in tokens[:40]])  # warm-up: statements compiled and prepared
    rest = tokens[40:]
    pg, cpu, wall = h.postgres_cpu(), time.process_time(), time.perf_counter()
    for i in range(0, len(rest), k):
        batch = [unit(t) for t in rest[i:i + k]]
        group._commit(batch)
        assert all(u.error is None for u in batch), [u.error for u in batch]
    n = len(rest)
    print(f"group commit alone, batches of {k}, {n} activations: wall {(time.perf_counter() - wall) * 1000 / n:.3f} ms, "
          f"CPU {(time.process_time() - cpu) * 1000 / n:.3f} ms"
          + (f", PostgreSQL CPU {(h.postgres_cpu() - pg) * 1000 / n:.3f} ms" if postgres else "")
          + f" per activation (load average {os.getloadavg()[0]:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=8, help="waitress threads (THREADS; 8 by default)")
    ap.add_argument("--db", default=None)
    ap.add_argument("--alone", type=int, metavar="K",
                    help="time the group commit alone, batches of K activations, instead of the served phases")
    args = ap.parse_args()

    app = h.served_app(args.db, "cds-bench-activate-", limited=True)
    with app.app_context():
        from cds.profiles.service import default_profile
        from cds.security import encrypt_secrets
        secrets = encrypt_secrets({"mcs_password": "Mcs-1", "pbx_sip_password": "Pbx-2",
                                   "teleworker_sip_password": "Tw-3", "voicemail_pin": "1234"})
        tokens = h.seed_deployed_users(args.users, default_profile().id, secrets)
        if args.alone:
            return group_commit_alone(tokens, args.alone, bool(args.db))
    server, port = h.serve(app, args.threads)

    n, c = args.users, args.concurrency
    rounds = h.Rounds(PHASES)
    h.run_load(__file__, port, "bare", ["x"] * 300, c)  # warm-up
    size = n // args.rounds
    for i in range(args.rounds):
        batch = tokens[i * size:(i + 1) * size]
        rounds.add(h.BARE, h.run_load(__file__, port, "bare", ["x"] * size, c))
        rounds.add("bare, rate limited", h.run_load(__file__, port, "bare-limited", ["x"] * size, c))
        activated = h.run_load(__file__, port, "activate", batch, c)
        rounds.add("activate", activated)
        rounds.add("config download", h.run_load(__file__, port, "config", activated["kept"], c))
        rounds.add("status", h.run_load(__file__, port, "status", activated["kept"], c))
    server.close()
    rounds.report(f"{n} users in {args.rounds} rounds, {c} concurrent keep-alive clients, waitress "
                  f"{args.threads} threads, {'PostgreSQL' if args.db else 'SQLite'}", bool(args.db),
                  references=(h.BARE, "bare, rate limited"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        h.client_main(sys.argv[2:], MODES)
    else:
        main()
