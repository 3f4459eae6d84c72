"""Deploy N users (default 10,000) into a local SMTP sink, beside the floor SMTP itself sets.

    .venv/bin/python bench/deploy.py [--users 10000] [--db postgresql://…]

A fresh SQLite database (or the given PostgreSQL one, emptied) with N users on
one profile; the SMTP sink (aiosmtpd, bench/smtp_sink.py) runs in its own
process, as a real relay would. The deploy job runs exactly as from the Users
tab or `flask cds deploy --all`: links issued, e-mails with QR codes composed and
handed to SMTP one by one, each state change committed.

The reference, in the same run: N already composed messages of the same size (a
real deployment e-mail, as the sink received it) sent over one SMTP connection to
the same sink with smtplib, before and after the deploy. Deploy throughput is
reported as a share of that floor, with the CPU milliseconds per user of this
process and of the QR worker process.
"""
from __future__ import annotations

import argparse
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PILOT = 200  # users deployed first: warms up, and gives the reference its message


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_of(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


class DescendantCpu:
    """CPU seconds used by this process's descendants (the QR worker processes), sampled
    while they live: they end with the run, before anyone could wait for them."""

    def __init__(self, exclude: set[int]):
        self.exclude = exclude
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        parents = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (got := _cpu_of(int(name))):
                parents[int(name)] = got
        for pid, (_, cpu) in parents.items():
            p, hops = pid, 0
            while p in parents and p != me and hops < 5:
                p, hops = parents[p][0], hops + 1
            if p == me and pid != me and pid not in self.exclude:
                self.seen[pid] = max(cpu, self.seen.get(pid, 0.0))

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def total(self) -> float:
        return sum(self.seen.values())


def reference(port: int, message: bytes, count: int) -> float:
    """Seconds to hand ``count`` composed messages to the sink over one connection."""
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for i in range(count):
            smtp.sendmail("cds@example.com", [f"user{i:05d}@example.com"], message)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--db", default=None, help="database URL (default: a new SQLite file)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="cds-bench-deploy-")
    first_message = os.path.join(tmp, "first.eml")
    port = free_port()
    sink = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "smtp_sink.py"), str(port),
                             first_message], stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"

    from cds import create_app
    from cds.extensions import db
    app = create_app({"DATABASE_URL": args.db or f"sqlite:///{tmp}/cds.sqlite3", "SCHEDULER_ENABLED": False,
                      "JOB_EXECUTION": "inline", "LOG_LEVEL": "WARNING",
                      "PUBLIC_URL": "https://cds.example.com",
                      "REDIRECT_URL": "https://deploy.example.com"}, instance_path=tmp)
    load_start = os.getloadavg()
    with app.app_context():
        from sqlalchemy import insert, select
        from cds.cli import upgrade_database
        from cds.jobs.service import create_job, run_job
        from cds.models import User
        from cds.profiles.service import default_profile
        from cds.settings.service import save_settings
        upgrade_database()
        for table in reversed(db.metadata.sorted_tables):
            if table.name not in ("deployment_profile", "alembic_version"):
                db.session.execute(table.delete())
        db.session.commit()
        save_settings({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": port})
        profile = default_profile()
        from cds.security import encrypt_secrets
        secret = encrypt_secrets({"mcs_password": "Secret-123"})
        db.session.execute(insert(User), [
            {"login_id": f"user{i:05d}", "profile_id": profile.id, "first_name": "Bench",
             "last_name": f"User {i:05d}", "email": f"user{i:05d}@example.com", "number": f"{2000 + i}",
             "secrets_enc": secret} for i in range(PILOT + args.users)])
        db.session.commit()
        ids = list(db.session.scalars(select(User.id).order_by(User.id)))

        # Pilot: the QR worker and the SMTP connection warmed up, and one real message.
        run_job(create_job("deploy", {"ids": ids[:PILOT]}, actor="bench").id)
        with open(first_message, "rb") as fh:
            message = fh.read()
        before = reference(port, message, args.users)

        job = create_job("deploy", {"ids": ids[PILOT:]}, actor="bench")
        sink_pid = sink.pid
        with DescendantCpu(exclude={sink_pid}) as workers:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            job = run_job(job.id)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        after = reference(port, message, args.users)
    load_end = os.getloadavg()
    sink.terminate()
    sink_report = sink.communicate(timeout=30)[0].strip()

    n = args.users
    rate = n / wall
    ref_rate = 2 * n / (before + after)
    db_kind = "PostgreSQL" if args.db else "SQLite"
    print(f"deploy {n} users ({db_kind}): {job.succeeded} sent, {job.failed} failed, {job.skipped} skipped; "
          f"message size {len(message):,} bytes")
    print(f"  deploy:    {wall:6.1f} s -> {rate:6.0f} users/s")
    print(f"  reference: {n} composed messages over one SMTP connection: {n / before:.0f} msgs/s before, "
          f"{n / after:.0f} after (mean {ref_rate:.0f}/s)")
    print(f"  deploy / reference: {rate / ref_rate:.2f}")
    print(f"  CPU per user: CDS process {cpu * 1000 / n:.2f} ms, QR worker process(es) "
          f"{workers.total * 1000 / n:.2f} ms")
    print(f"  load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end (2 cores, shared)")
    print(f"  SMTP sink (pilot + deploy + 2 references): {sink_report}")


if __name__ == "__main__":
    main()
