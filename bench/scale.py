"""How the Users tab, export and sync scale with the number of users (SQLite).

    .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--runs 15] [--skip export,sync]

For each size N:
- Users tab: a SQLite file (/tmp/cds-scale-N.sqlite3, kept and reused) seeded in bulk
  SQL as bench/users_page.py seeds it (bench/_harness.py: names from 50 first and 158
  last names, 5 profiles, 60% deployed, 42% downloaded), then
  the htmx table requests the page makes, median of --runs after 3 warm-ups: page 1,
  a search with hits ('schmidt', about 0.7% of users) and a filter (profile Sales +
  downloaded, about 8%). The hits shown are the count the page reports. The sizes take
  turns request by request; wall and CPU time of this process are reported.
- Export: `bench/export.py --users N` on the same database (all N users as CSV through
  the real app, median of 3).
- Sync: `bench/sync.py --users N --only sync --bulk-seed` (N imported users written in
  bulk SQL, then a source of N users with 10% changed and one Sync data job over all
  of them).
The result a request returns is 50 rows for the page requests whatever N is, and N
rows (or N users compared) for export and sync: a page request that grows with N, or
an export or sync that grows faster than N, is a finding.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as h  # noqa: E402

SCENARIOS = [
    ("page 1", "/users"),
    ("search with hits", "/users?search=schmidt"),
    ("filter", "/users?profile={profile}&downloaded=yes"),
]
TOTAL_RE = re.compile(rb'data-total="(\d+)"')


def users_tab(sizes: list[int], runs: int) -> dict:
    """Median wall and CPU ms per request and the hits, per size and scenario. The sizes
    take turns request by request, so a busy moment of the machine hits all of them."""
    headers = {"HX-Request": "true", "HX-Target": "users-table"}
    clients = {}
    for n in sizes:
        client, profile = h.signed_in_client(f"sqlite:////tmp/cds-scale-{n}.sqlite3", n)
        clients[n] = client, [(label, url.format(profile=profile)) for label, url in SCENARIOS]
    wall = {(n, label): [] for n in sizes for label, _ in SCENARIOS}
    cpu = {(n, label): [] for n in sizes for label, _ in SCENARIOS}
    hits = {}
    for i in range(runs + 3):
        for n, (client, urls) in clients.items():
            for label, url in urls:
                ms, cpu_ms, resp = h.timed_get(client, url, headers)
                if i >= 3:
                    wall[n, label].append(ms)
                    cpu[n, label].append(cpu_ms)
                hits[n, label] = int(TOTAL_RE.search(resp.data).group(1))
    return {key: (statistics.median(wall[key]), statistics.median(cpu[key]), hits[key]) for key in wall}


def run_bench(args: list[str], pattern: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=h.ROOT, capture_output=True, text=True, timeout=3600)
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
            ["bench/sync.py", "--users", str(n), "--only", "sync", "--bulk-seed"], r"^\s+sync job\s+([\d.]+)")
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
