"""Deploy N users (default 10,000) into a local SMTP sink, beside the floor SMTP itself sets.

    .venv/bin/python bench/deploy.py [--users 10000] [--db postgresql://…] [--profile FILE]

A fresh SQLite database (or the given PostgreSQL one, emptied) with N users on
one profile; the SMTP sink (aiosmtpd, bench/smtp_sink.py) runs in its own
process, as a real relay would. The deploy job runs exactly as from the Users
tab or `flask cds deploy --all`: links issued, e-mails with QR codes composed and
handed to SMTP one by one, each state change committed.

The reference, in the same run: N already composed messages of the same size (a
real deployment e-mail, as the sink received it) sent over one SMTP connection to
the same sink with smtplib, in slices that alternate with the deploy job's batches
(100 users, then 100 reference messages, and so on), so that both see the same
machine however its load changes. Deploy throughput (the job's wall time less the
reference slices) is reported as a share of that floor, overall and per 500 users,
with the CPU milliseconds per user of this process and of the QR worker process.
"""
from __future__ import annotations

import argparse
import cProfile
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


def _cpu_of(pid: int) -> float | None:
    """CPU seconds of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


class DescendantCpu:
    """CPU seconds used by this process's descendants (the QR worker processes), sampled
    while they live: they end with the run, before anyone could wait for them. Only the
    process tree below this one is read (not all of /proc), so that sampling costs this
    process, whose CPU is measured too, next to nothing."""

    def __init__(self, exclude: set[int]):
        self.exclude = exclude
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        todo = [c for c in _children(os.getpid()) if c not in self.exclude]
        while todo:
            pid = todo.pop()
            cpu = _cpu_of(pid)
            if cpu is not None:
                self.seen[pid] = max(cpu, self.seen.get(pid, 0.0))
            todo += _children(pid)

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


class Reference:
    """The floor SMTP itself sets: already composed messages handed to the sink over one
    SMTP connection with smtplib (MAIL, RCPT, DATA, body: the four exchanges a deploy
    makes per message), in slices between the deploy's batches, timed on their own."""

    def __init__(self, port: int, message: bytes):
        self.smtp = smtplib.SMTP("127.0.0.1", port)
        self.message = message
        self.sent = 0
        self.wall = self.cpu = 0.0

    def send(self, count: int) -> tuple[float, float]:
        """Hand ``count`` messages over; (wall, CPU) seconds they took."""
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(count):
            self.smtp.sendmail("cds@example.com", [f"user{self.sent % 100_000:05d}@example.com"], self.message)
            self.sent += 1
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        self.wall += wall
        self.cpu += cpu
        return wall, cpu

    def close(self) -> None:
        self.smtp.quit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--db", default=None, help="database URL (default: a new SQLite file)")
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile (CPU time) of the deploy job to FILE "
                    "(the figures then include the profiler's own cost)")
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
        # A profile a client can use (Deploy skips users whose profile lacks the hosts).
        profile.mbg_sip_host, profile.mcs_host = "mbg.example.com", "mcs.example.com"
        db.session.commit()
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
        ref = Reference(port, message)
        ref.send(PILOT)  # its connection warmed up too

        # The deploy job and the reference take turns: after each batch of the job (100
        # users), as many reference messages. Both thus see the same machine, however
        # its load changes during the run; the reference's time is taken out of the job's.
        from cds.jobs.service import ACTIONS
        act = ACTIONS["deploy"]
        deploy_batch = act.run_batch
        rounds: list[tuple[int, float, float, float]] = []  # users, deploy wall, reference wall and CPU
        # CPU time, of the deploy, not the reference.
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        last = [time.perf_counter()]

        def batch_then_reference(job, users):
            outcomes = deploy_batch(job, users)
            # The deploy's part of the round: from the end of the last reference slice
            # to the end of this batch (the job's own bookkeeping between batches included).
            deploy_wall = time.perf_counter() - last[0]
            if profiler:
                profiler.disable()
            ref_wall, ref_cpu = ref.send(len(users))
            if profiler:
                profiler.enable()
            rounds.append((len(users), deploy_wall, ref_wall, ref_cpu))
            last[0] = time.perf_counter()
            return outcomes

        job = create_job("deploy", {"ids": ids[PILOT:]}, actor="bench")
        sink_pid = sink.pid
        act.run_batch = batch_then_reference
        try:
            with DescendantCpu(exclude={sink_pid}) as workers:
                wall0, cpu0 = time.perf_counter(), time.process_time()
                last[0] = wall0
                if profiler:
                    profiler.enable()
                job = run_job(job.id)
                wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                if profiler:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
        finally:
            act.run_batch = deploy_batch
        ref.close()
    load_end = os.getloadavg()
    sink.terminate()
    sink_report = sink.communicate(timeout=30)[0].strip()

    n = args.users
    ref_sent, ref_wall, ref_cpu = (sum(r[i] for r in rounds) for i in (0, 2, 3))
    deploy_wall, deploy_cpu = wall - ref_wall, cpu - ref_cpu
    rate, ref_rate = n / deploy_wall, ref_sent / ref_wall
    # Ratios over windows of 5 batches (500 users), to show the spread within the run.
    windows = []
    for i in range(0, len(rounds), 5):
        part = rounds[i:i + 5]
        users = sum(r[0] for r in part)
        windows.append((users / sum(r[1] for r in part)) / (users / sum(r[2] for r in part)))
    windows.sort()
    db_kind = "PostgreSQL" if args.db else "SQLite"
    print(f"deploy {n} users ({db_kind}): {job.succeeded} sent, {job.failed} failed, {job.skipped} skipped; "
          f"message size {len(message):,} bytes")
    print(f"  deploy:    {deploy_wall:6.1f} s -> {rate:6.0f} users/s (wall of the job less the reference)")
    print(f"  reference: {ref_sent} composed messages over one SMTP connection, between the job's batches: "
          f"{ref_rate:.0f} msgs/s")
    print(f"  deploy / reference: {rate / ref_rate:.2f}  (per 500 users: min {windows[0]:.2f}, "
          f"median {windows[len(windows) // 2]:.2f}, max {windows[-1]:.2f})")
    print(f"  CPU per user: CDS process {deploy_cpu * 1000 / n:.2f} ms, QR worker process(es) "
          f"{workers.total * 1000 / n:.2f} ms; reference {ref_cpu * 1000 / ref_sent:.2f} ms per message")
    print(f"  load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end (2 cores, shared)")
    print(f"  SMTP sink (pilot, deploy, reference): {sink_report}")


if __name__ == "__main__":
    main()
