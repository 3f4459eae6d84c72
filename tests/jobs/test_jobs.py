"""The Jobs tab: running, scheduled (cancellable), finished with per-user failures,
periodic syncs; pruning after the retention set in Settings."""
from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import func, select, update

from cds.extensions import db
from cds.models import AuditEvent, Connection, Job, JobItem, User, utcnow
from tests.export.test_export import add_user


def schedule_delete(app, login_ids, hours=2, actor="alice"):
    from cds.jobs.service import create_job
    with app.app_context():
        ids = [db.session.scalar(select(User.id).where(User.login_id == n)) for n in login_ids]
        job = create_job("delete", {"ids": ids}, run_at=utcnow() + timedelta(hours=hours), actor=actor)
        return job.id


def finished_job(description="Deploy: 3 selected users", days_ago=0, failed=0, ok=0, skipped=0,
                 state="done", created_by="alice"):
    now = utcnow() - timedelta(days=days_ago)
    job = Job(kind="delete", state=state, description=description, params={"selection": {"ids": [1]}},
              created_by=created_by, created_at=now, started_at=now, finished_at=now,
              total=failed + ok + skipped, done=failed + ok + skipped,
              succeeded=ok, failed=failed, skipped=skipped)
    db.session.add(job)
    db.session.flush()
    for i in range(failed):
        db.session.add(JobItem(job_id=job.id, user_id=i + 1, login_id=f"user{i:03}", outcome="failed",
                               message="SMTP server refused the recipient"))
    for i in range(skipped):
        db.session.add(JobItem(job_id=job.id, user_id=1000 + i, login_id=f"skip{i:03}", outcome="skipped",
                               message="Profile is Do Not Deploy"))
    db.session.commit()
    return job.id


def test_jobs_page_lists_scheduled_finished_and_syncs(admin_client, app):
    with app.app_context():
        add_user("ann"), add_user("bob")
        finished_job("Deploy: all 7 users", ok=5, failed=2)
        db.session.add(Connection(name="MBG East", kind="mbg", url="https://mbg.example",
                                  sync_interval_minutes=90, next_sync_at=utcnow() + timedelta(minutes=30),
                                  last_sync_at=utcnow(), last_sync_ok=False,
                                  last_sync_message="Timed out after 30 s"))
        db.session.commit()
    schedule_delete(app, ["ann", "bob"])
    page = admin_client.get("/jobs").get_data(as_text=True)
    assert "No job is running" in page
    assert "Delete: 2 selected users" in page and ">Cancel</button>" in page
    assert "Deploy: all 7 users" in page and 'outcome=failed">2</a>' in page
    assert "MBG East" in page and "1 h 30 min" in page and "Timed out after 30 s" in page
    assert "kept 30 days" in page
    # htmx refresh of the lists returns only the fragment.
    fragment = admin_client.get("/jobs", headers={"HX-Request": "true", "HX-Target": "job-lists"})
    text = fragment.get_data(as_text=True)
    assert text.lstrip().startswith("<div id=\"job-lists\"") and "<html" not in text


def test_running_job_shows_progress(admin_client, app):
    with app.app_context():
        db.session.add(Job(kind="delete", state="running", description="Delete: all 40 users",
                           params={"selection": {"filter": {}}}, total=40, done=10, succeeded=10,
                           heartbeat_at=utcnow(), started_at=utcnow(), created_by="bob"))
        db.session.commit()
    page = admin_client.get("/jobs").get_data(as_text=True)
    assert "Delete: all 40 users" in page and "10 of 40 done" in page
    assert 'hx-trigger="every 1s"' in page and ">Stop</button>" in page


def test_cancelled_scheduled_job_never_runs(admin_client, app):
    from cds.jobs.service import run_due
    with app.app_context():
        add_user("ann"), add_user("bob")
    cancelled = schedule_delete(app, ["ann"])
    other = schedule_delete(app, ["bob"])
    resp = admin_client.post(f"/jobs/{cancelled}/cancel",
                             headers={"HX-Request": "true", "HX-Target": "job-lists"})
    assert resp.status_code == 200
    text = resp.get_data(as_text=True)
    assert "Cancelled: Delete: Ann Test (ann)" in text  # the toast, out of band
    assert f'id="scheduled-{cancelled}"' not in text and f'id="scheduled-{other}"' in text
    with app.app_context():
        # Both run times pass; the scheduler tick starts only the one not cancelled.
        db.session.execute(update(Job).values(run_at=utcnow() - timedelta(minutes=1)))
        db.session.commit()
        run_due(app)
        deadline = time.monotonic() + 20
        while db.session.get(Job, other).state != "done" and time.monotonic() < deadline:
            time.sleep(0.05)
            db.session.expire_all()
        run_due(app)
        assert db.session.get(Job, other).state == "done"
        job = db.session.get(Job, cancelled)
        assert job.state == "cancelled" and job.started_at is None and job.done == 0
        assert job.message == "Cancelled before it ran."
        assert db.session.scalars(select(User.login_id)).all() == ["ann"]
        event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "job.cancel")).one()
        assert event.actor == "alice" and event.count == 1 and event.detail["job"] == cancelled
    # Cancelling it again is a conflict with a clear message.
    resp = admin_client.post(f"/jobs/{cancelled}/cancel", headers={"HX-Request": "true"})
    assert resp.status_code == 409 and "has already finished (cancelled)" in resp.get_data(as_text=True)
    assert admin_client.post("/jobs/9999/cancel").status_code == 404


def test_cancel_without_htmx_redirects(admin_client, app):
    with app.app_context():
        add_user("ann")
    job_id = schedule_delete(app, ["ann"])
    resp = admin_client.post(f"/jobs/{job_id}/cancel", data={"next": "detail"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/jobs/{job_id}")
    page = admin_client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "cancelled" in page and "Cancelled: Delete: Ann Test (ann)" in page


def test_readonly_sees_jobs_but_cannot_cancel(readonly_client, app):
    with app.app_context():
        add_user("ann")
    job_id = schedule_delete(app, ["ann"])
    page = readonly_client.get("/jobs").get_data(as_text=True)
    assert "Delete: Ann Test (ann)" in page and ">Cancel</button>" not in page
    assert readonly_client.post(f"/jobs/{job_id}/cancel").status_code == 403
    with app.app_context():
        assert db.session.get(Job, job_id).state == "scheduled"


def test_job_detail_lists_failures_paginated(admin_client, app):
    with app.app_context():
        job_id = finished_job("Deploy: all 160 users", ok=5, failed=130, skipped=25)
    page = admin_client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "Deploy: all 160 users" in page and "155 users" in page
    assert "130 × SMTP server refused the recipient" in page  # the summary's reasons
    assert "user000" in page and "user099" in page and "user100" not in page
    second = admin_client.get(f"/jobs/{job_id}?page=2",
                              headers={"HX-Request": "true", "HX-Target": "job-items"}).get_data(as_text=True)
    assert "<html" not in second and "user100" in second and "skip024" in second
    skipped = admin_client.get(f"/jobs/{job_id}?outcome=skipped").get_data(as_text=True)
    assert "skip000" in skipped and "user000" not in skipped and "Profile is Do Not Deploy" in skipped
    assert admin_client.get("/jobs/9999").status_code == 404


def test_old_finished_jobs_are_pruned_after_the_retention_setting(app):
    from cds.jobs.service import prune_finished
    from cds.settings.service import save_settings
    with app.app_context():
        old = finished_job("old", days_ago=6, failed=3)
        recent = finished_job("recent", days_ago=4, failed=1)
        db.session.add(Job(kind="delete", state="scheduled", description="waiting",
                           run_at=utcnow() + timedelta(days=1), created_at=utcnow() - timedelta(days=60),
                           params={"selection": {"ids": [1]}}, total=1))
        db.session.commit()
        assert prune_finished(app) == 0  # 30 days by default
        save_settings({"JOB_RETENTION_DAYS": 5}, actor="alice")
        assert prune_finished(app) == 1
        assert db.session.get(Job, old) is None and db.session.get(Job, recent) is not None
        assert db.session.scalar(select(func.count(JobItem.id)).where(JobItem.job_id == old)) == 0
        assert db.session.scalar(select(func.count(Job.id)).where(Job.state == "scheduled")) == 1
        save_settings({"JOB_RETENTION_DAYS": 0}, actor="alice")  # 0: keep every job
        db.session.execute(update(Job).values(finished_at=utcnow() - timedelta(days=999)))
        db.session.commit()
        assert prune_finished(app) == 0


def test_minutes_filter():
    from cds.jobs.routes import minutes_text
    assert [minutes_text(v) for v in (15, 60, 90, 1440, 1500, 0)] == \
        ["15 min", "1 h", "1 h 30 min", "1 day", "1 day 1 h", "–"]


def test_a_job_walks_its_selection_in_batches_in_id_order(app):
    """A selection of ids and one of all users give the same batches; ids of users deleted
    since, even a whole batch's worth, are passed over."""
    from cds.users.selection import next_users
    with app.app_context():
        users = [add_user(f"walk{i}") for i in range(9)]
        ids = [u.id for u in users]
        for user in users[2:6]:
            db.session.delete(user)
        db.session.commit()
        everyone = sorted(set(db.session.scalars(select(User.id))))

        def walk(selection: dict) -> list[list[int]]:
            batches, last = [], 0
            while batch := next_users(selection, last, 2):
                batches.append([u.id for u in batch])
                last = batch[-1].id
            return batches

        kept = [i for i in ids if i not in ids[2:6]]
        assert walk({"ids": list(reversed(ids)) + [2**31 - 1]}) == [kept[:2], kept[2:4], kept[4:]]
        assert sum(walk({"filter": {}}), []) == everyone
        assert walk({"ids": []}) == []
