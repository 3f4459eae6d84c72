"""Users tab with 100,000 users: median server time of the table requests.

    .venv/bin/python bench/users_page.py [--users 100000] [--runs 25] [--db PATH | --url URL]

Seeds a fresh SQLite database (or reuses --db / the PostgreSQL --url if it
already holds the users) in bulk SQL (bench/_harness.py: seed_users),
then times requests through the real app (Flask test client, signed in, the
same htmx requests the page makes) and prints the median and 90th percentile
of the wall time and the median CPU time of the process (on PostgreSQL the
database server's own work is in the wall time only).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402


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

    workdir = tempfile.mkdtemp(prefix="cds-bench-")
    path = args.db or os.path.join(workdir, "cds.sqlite3")
    client, profile = h.signed_in_client(args.url or "sqlite:///" + path, args.users)
    fragment = {"HX-Request": "true", "HX-Target": "users-table"}

    print(f"{args.users} users on {'PostgreSQL' if args.url else 'SQLite'}, {args.runs} runs each, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  {'':<36} {'median':>7} {'p90':>7} {'CPU':>7}   (ms; CPU = median CPU time of this process)")
    for label, url, htmx in SCENARIOS:
        url = url.format(profile=profile)
        headers = fragment if htmx else {}
        times, cpu = [], []
        for i in range(args.runs + 3):
            elapsed, elapsed_cpu, _ = h.timed_get(client, url, headers)
            if i >= 3:
                times.append(elapsed)
                cpu.append(elapsed_cpu)
        times.sort()
        p90 = times[int(len(times) * 0.9) - 1]
        print(f"  {label:<36} {statistics.median(times):7.1f} {p90:7.1f} {statistics.median(cpu):7.1f}")


if __name__ == "__main__":
    main()
