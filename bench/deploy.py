"""Deploy N users (default 10,000) into a local SMTP sink and report users/s and CPU ms per user.

    .venv/bin/python bench/deploy.py [--users 10000] [--db postgresql://…]

A fresh SQLite database (or the given PostgreSQL one, emptied) with N users on
one profile; the SMTP sink (aiosmtpd, bench/smtp_sink.py) runs in its own
process, as a real relay would. The deploy job runs exactly as from the Users
tab or `flask cds deploy --all`: links issued, e-mails with QR codes composed and
handed to SMTP one by one, each state change committed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--db", default=None, help="database URL (default: a new SQLite file)")
    args = ap.parse_args()

    port = free_port()
    sink = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "smtp_sink.py"), str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"

    tmp = tempfile.mkdtemp(prefix="cds-bench-deploy-")
    from cds import create_app
    from cds.extensions import db
    app = create_app({"DATABASE_URL": args.db or f"sqlite:///{tmp}/cds.sqlite3", "SCHEDULER_ENABLED": False,
                      "JOB_EXECUTION": "inline", "LOG_LEVEL": "WARNING",
                      "PUBLIC_URL": "https://cds.example.com",
                      "REDIRECT_URL": "https://deploy.example.com"}, instance_path=tmp)
    with app.app_context():
        from sqlalchemy import insert
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
             "secrets_enc": secret} for i in range(args.users)])
        db.session.commit()

        job = create_job("deploy", {"filter": {}}, actor="bench")
        wall0, cpu0 = time.perf_counter(), time.process_time()
        job = run_job(job.id)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    from cds.mail.qr import qr_png
    c0 = time.process_time()
    for i in range(300):
        qr_png(f"https://deploy.example.com/r/{i:043d}")
    qr_ms = (time.process_time() - c0) * 1000 / 300
    load = os.getloadavg()[0]
    sink.terminate()
    sink_report = sink.communicate(timeout=30)[0].strip()
    db_kind = "PostgreSQL" if args.db else "SQLite"
    print(f"deploy {args.users} users ({db_kind}): {job.succeeded} sent, {job.failed} failed, "
          f"{job.skipped} skipped")
    print(f"  wall {wall:.1f} s -> {args.users / wall:.0f} users/s")
    print(f"  CPU of the CDS process {cpu * 1000 / args.users:.2f} ms/user, plus {qr_ms:.2f} ms/user "
          f"drawing QR codes in the worker process")
    print(f"  load average at the end: {load:.1f} (2 cores)")
    print(f"  SMTP sink: {sink_report}")


if __name__ == "__main__":
    main()
