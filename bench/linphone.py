"""Linphone provisioning fetches per second under waitress, beside a bare endpoint of the
same app in the same run (the method of bench/activate.py).

    .venv/bin/python bench/linphone.py [--users 6000] [--rounds 10] [--concurrency 8] [--threads 8] [--db postgresql://…]

The app is served by waitress (as `flask cds serve` does) in this process; the load
comes from a separate process with keep-alive connections, as liblinphone sends them
(GET, a User-Agent, no Accept header). Phases, each round on its own slice of the
tokens: the bare endpoint (a view returning {"ok": true} through the same app, its
before/after-request hooks included), the first fetch of each provisioning URL
(consumes the token, creates the device) and the device re-fetch every later start
of the app makes. Figures are medians over the rounds; ratios are taken round by round
(bench/_harness.py).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402

CONFIG_URI = re.compile(rb'<entry name="config-uri" overwrite="true">https?://[^/]+([^<]+)</entry>')
PHASES = (h.BARE, "first fetch", "device re-fetch")
MODES = {
    "bare": (h.get_bare, None),
    "first": (lambda conn, token: conn.request("GET", f"/provisioning/linphone/{token}",
                                               headers={"User-Agent": "Unknown"}),
              lambda status, data: CONFIG_URI.search(data).group(1).decode() if status == 200 else None),
    "device": (lambda conn, path: conn.request("GET", path, headers={"User-Agent": "Linphonec/5.1.65",
                                                                     "From": "sip:bench@sip.example.com"}),
               None),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=8, help="waitress threads (THREADS; 8 by default)")
    ap.add_argument("--db", default=None)
    args = ap.parse_args()

    app = h.served_app(args.db, "cds-bench-linphone-")
    with app.app_context():
        from cds.extensions import db
        from cds.models import DeploymentProfile
        from cds.profiles.service import save_profile
        from cds.security import encrypt_secrets
        profile = db.session.scalar(db.select(DeploymentProfile).where(DeploymentProfile.name == "Linphone"))
        if profile is None:
            profile = save_profile(None, {"name": "Linphone", "client": "linphone", "sip_domain": "sip.example.com",
                                          "sip_realm": "sip.example.com", "pbx_sip_host": "pbx.example.com"})
        secrets = encrypt_secrets({"pbx_sip_password": "Pbx-2", "voicemail_pin": "1234"})
        tokens = h.seed_deployed_users(args.users, profile.id, secrets, pbx_sip_username="{i}")
    server, port = h.serve(app, args.threads)

    n, c = args.users, args.concurrency
    rounds = h.Rounds(PHASES)
    h.run_load(__file__, port, "bare", ["x"] * 300, c)  # warm-up
    size = n // args.rounds
    for i in range(args.rounds):
        batch = tokens[i * size:(i + 1) * size]
        rounds.add(h.BARE, h.run_load(__file__, port, "bare", ["x"] * size, c))
        first = h.run_load(__file__, port, "first", batch, c)
        rounds.add("first fetch", first)
        rounds.add("device re-fetch", h.run_load(__file__, port, "device", first["kept"], c))
    server.close()
    rounds.report(f"{n} users in {args.rounds} rounds, {c} concurrent keep-alive clients, waitress "
                  f"{args.threads} threads, {'PostgreSQL' if args.db else 'SQLite'}", bool(args.db))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        h.client_main(sys.argv[2:], MODES)
    else:
        main()
