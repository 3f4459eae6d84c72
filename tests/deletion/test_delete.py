"""Delete: users removed, their devices and links cut off, redirect entries purged, audited."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from cds.extensions import db
from cds.models import AuditEvent, ClientDevice, Deployment, JobItem, RedirectEntry, User, utcnow
from cds.security import new_token, token_hash
from tests.export.test_export import add_user


def give_client(user: User) -> dict:
    """A used link with an installed device, a newer open link, and an expired one."""
    from cds.redirect.service import register_link
    now = utcnow()
    hashes = {}
    for name, fields in (("used", {"used_at": now - timedelta(hours=1)}),
                         ("open", {}),
                         ("expired", {"expires_at": now - timedelta(days=1)})):
        h = token_hash(new_token())
        expires = fields.pop("expires_at", now + timedelta(days=4))
        dep = Deployment(user_id=user.id, token_hash=h, expires_at=expires, **fields)
        db.session.add(dep)
        db.session.flush()
        if name != "expired":
            register_link(h, expires)
        hashes[name] = h
        if name == "used":
            hashes["client_key"] = key = new_token()
            db.session.add(ClientDevice(user_id=user.id, deployment_id=dep.id,
                                        key_hash=token_hash(key), device_id=f"dev-{user.id}"))
    db.session.commit()
    return hashes


def run_delete(app, selection, **params):
    from cds.jobs.service import create_job, submit
    with app.app_context():
        job = create_job("delete", selection, params=params, actor="alice")
        submit(job)
        db.session.refresh(job)
        return job.id, job.state, job.succeeded, job.failed, job.skipped


def test_delete_removes_users_devices_and_redirect_entries(app):
    with app.app_context():
        ann, bob, cy = (add_user(n) for n in ("ann", "bob", "cy"))
        ann_links, bob_links, cy_links = give_client(ann), give_client(bob), give_client(cy)
        ids = [ann.id, bob.id]
        keep = cy.id
    job_id, state, ok, failed, _ = run_delete(app, {"ids": ids})
    assert (state, ok, failed) == ("done", 2, 0)
    with app.app_context():
        assert db.session.scalars(select(User.login_id)).all() == ["cy"]
        # Device credentials and deployments are gone with the users: a client key
        # presented later matches nothing and is told to redeploy.
        assert db.session.scalar(select(func.count(ClientDevice.id)).where(ClientDevice.user_id.in_(ids))) == 0
        assert db.session.scalar(select(func.count(Deployment.id)).where(Deployment.user_id.in_(ids))) == 0
        remaining = set(db.session.scalars(select(RedirectEntry.token_hash)))
        assert remaining == {cy_links["used"], cy_links["open"]}
        assert ann_links["open"] not in remaining and bob_links["used"] not in remaining
        assert db.session.scalar(select(func.count(ClientDevice.id)).where(ClientDevice.user_id == keep)) == 1
        # One audit event per deleted user.
        events = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "user.delete")
                                    .order_by(AuditEvent.id)).all()
        assert [(e.login_id, e.actor) for e in events] == [("ann", "alice"), ("bob", "alice")]
        assert events[0].detail == {"devices_revoked": 1, "links_revoked": 2, "name": "Ann Test",
                                    "job": job_id}
        items = db.session.scalars(select(JobItem).where(JobItem.job_id == job_id)).all()
        assert [(i.login_id, i.outcome) for i in items] == [("ann", "ok"), ("bob", "ok")]
        assert "1 device(s) revoked" in items[0].message


def test_delete_in_remote_redirect_mode_queues_withdrawals(make_app, app):
    from cds.models import RedirectOutbox
    remote = make_app(REDIRECT_MODE="remote", REDIRECT_URL="https://r.example",
                      REDIRECT_API_SECRET="x" * 32)
    with remote.app_context():
        ann = add_user("ann")
        ann_id = ann.id
        links = give_client(ann)
        db.session.execute(RedirectOutbox.__table__.delete())
        db.session.commit()
    run_delete(remote, {"ids": [ann_id]})
    with remote.app_context():
        ops = {(o.op, o.token_hash) for o in db.session.scalars(select(RedirectOutbox))}
        assert {("delete", links["used"]), ("delete", links["open"])} <= ops
        assert {op for op, _ in ops} == {"delete"}


def test_more_than_100_users_need_all_typed(app):
    from cds.deletion.service import DeleteNotConfirmed, check_delete_confirmation
    from cds.jobs.service import create_job
    with app.app_context():
        from cds.profiles.service import default_profile
        pid = default_profile().id
        db.session.add_all(User(login_id=f"u{i:03}", profile_id=pid) for i in range(101))
        db.session.commit()
        with pytest.raises(DeleteNotConfirmed, match='Deleting 101 users cannot be undone: type the word "all"'):
            create_job("delete", {"filter": {}}, params={"confirm": "yes"}, actor="alice")
        with pytest.raises(DeleteNotConfirmed):
            create_job("delete", {"filter": {}}, actor="alice")
        assert db.session.scalar(select(func.count(User.id))) == 101
        check_delete_confirmation(100, None)  # up to 100 the count confirmation is enough
        check_delete_confirmation(101, " All ")
    _, state, ok, _, _ = run_delete(app, {"filter": {}}, confirm="all")
    assert (state, ok) == ("done", 101)
    with app.app_context():
        assert db.session.scalar(select(func.count(User.id))) == 0


def test_unconfirmed_large_job_deletes_nobody(app):
    """Even a job recorded without the check (e.g. by hand) refuses at run time."""
    from cds.jobs.service import run_job
    from cds.models import Job
    from cds.profiles.service import default_profile
    with app.app_context():
        pid = default_profile().id
        db.session.add_all(User(login_id=f"u{i:03}", profile_id=pid) for i in range(101))
        job = Job(kind="delete", params={"selection": {"filter": {}}}, total=101, created_by="alice")
        db.session.add(job)
        db.session.commit()
        run_job(job.id)
        assert (job.succeeded, job.skipped) == (0, 101)
        assert db.session.scalar(select(func.count(User.id))) == 101


def test_one_failure_does_not_stop_the_others(app, monkeypatch):
    from cds.deletion import service
    real = service.delete_user

    def flaky(user, **kw):
        result = real(user, **kw)
        if user.login_id == "bob":
            raise RuntimeError("disk on fire")
        return result

    monkeypatch.setattr(service, "delete_user", flaky)
    with app.app_context():
        ids = [add_user(n).id for n in ("ann", "bob", "cy")]
        give_client(db.session.get(User, ids[1]))
    job_id, state, ok, failed, _ = run_delete(app, {"ids": ids})
    assert (state, ok, failed) == ("done", 2, 1)
    with app.app_context():
        # bob's delete was rolled back whole: user, devices, links and audit event.
        assert db.session.scalars(select(User.login_id)).all() == ["bob"]
        assert db.session.scalar(select(func.count(ClientDevice.id))) == 1
        assert db.session.scalar(select(func.count(RedirectEntry.token_hash))) == 2
        assert [e.login_id for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "user.delete"))] == ["ann", "cy"]
        failed_item = db.session.scalars(select(JobItem).where(JobItem.outcome == "failed")).one()
        assert failed_item.login_id == "bob" and "disk on fire" in failed_item.message


def test_deleted_users_clients_are_told_to_redeploy(app):
    """The installed app of a deleted user gets 401 redeploy_required at its next status check."""
    with app.app_context():
        ann, cy = add_user("ann"), add_user("cy")
        ann_key, cy_key = give_client(ann)["client_key"], give_client(cy)["client_key"]
        ann_id = ann.id
    client = app.test_client()

    def status(key):
        return client.get("/client/v1/status", headers={"Authorization": f"Bearer {key}"})

    assert status(ann_key).status_code == 200
    run_delete(app, {"ids": [ann_id]})
    resp = status(ann_key)
    assert resp.status_code == 401 and resp.get_json()["error"] == "redeploy_required"
    assert status(cy_key).status_code == 200
