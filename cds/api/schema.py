"""The JSON shapes of the records the API answers with, and the shell prints with
``--json``: one definition each. Secrets never appear; of a user's secrets only
set / not set is told."""
from __future__ import annotations

from sqlalchemy import select

from cds.clients import profile_problems
from cds.connections.service import host_of
from cds.extensions import db
from cds.models import USER_SECRETS, Connection, DeploymentProfile, Job, JobItem, User
from cds.profiles.service import PROFILE_FIELDS
from cds.users.fields import FIELD_NAMES as USER_FIELDS

PROFILE_INT_FIELDS = ("mbg_sip_port", "pbx_sip_port", "mcs_port", "link_validity_hours")


def iso(value) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def user_json(user: User) -> dict:
    """Everything about a user except the secrets, of which only set / not set is told."""
    out = {"id": user.id, **{name: getattr(user, name) for name in USER_FIELDS}}
    out.update({
        "profile_id": user.profile_id,
        "profile": user.profile.name if user.profile else None,
        "source": user.source,
        "connection_id": user.connection_id,
        "source_key": user.source_key,
        "deployed_at": iso(user.deployed_at),
        "downloaded_at": iso(user.downloaded_at),
        "force_config": user.force_config,
        "redeploy_required": user.redeploy_required,
        "not_in_source": user.not_in_source,
        "send_error": user.send_error,
        "config_version": user.config_version,
        "secrets": {name: user.has_secret(name) for name in USER_SECRETS},
        "created_at": iso(user.created_at),
        "updated_at": iso(user.updated_at),
    })
    return out


def job_json(job: Job, with_items: bool = False) -> dict:
    out = {
        "id": job.id, "kind": job.kind, "state": job.state, "description": job.description,
        "created_by": job.created_by, "created_at": iso(job.created_at), "run_at": iso(job.run_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "progress": {"total": job.total, "done": job.done, "succeeded": job.succeeded,
                     "skipped": job.skipped, "failed": job.failed, "percent": job.percent},
        "message": job.message,
    }
    if with_items:
        items = db.session.scalars(select(JobItem).where(JobItem.job_id == job.id,
                                                         JobItem.outcome != "ok")
                                   .order_by(JobItem.id).limit(500))
        out["problems"] = [{"user_id": i.user_id, "login_id": i.login_id, "outcome": i.outcome,
                            "message": i.message} for i in items]
    return out


def profile_json(p: DeploymentProfile, users: int | None = None) -> dict:
    out = {"id": p.id, **{k: getattr(p, k) for k in PROFILE_FIELDS},
           "is_default": p.is_default, "is_do_not_deploy": p.is_do_not_deploy,
           "missing": profile_problems(p),
           "created_at": iso(p.created_at), "updated_at": iso(p.updated_at)}
    if users is not None:
        out["users"] = users
    return out


def connection_json(c: Connection) -> dict:
    return {"id": c.id, "name": c.name, "kind": c.kind, "url": c.url, "host": host_of(c),
            "username": c.username, "options": _public_options(c.options or {}),
            "sync_interval_minutes": c.sync_interval_minutes, "enabled": c.enabled,
            "verified": c.verified, "verified_at": iso(c.verified_at),
            "token_expires_at": iso(c.token_expires_at), "last_sync_at": iso(c.last_sync_at),
            "last_sync_ok": c.last_sync_ok, "last_sync_message": c.last_sync_message,
            "next_sync_at": iso(c.next_sync_at), "created_at": iso(c.created_at)}


def _public_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if "password" not in k.lower() and "secret" not in k.lower()}


def import_plan_json(plan) -> dict:
    """A CSV import's preview: what each row would do, and its errors."""
    rows = [{"line": r.line, "action": r.action or None, "login_id": r.login_id, "user_id": r.user_id,
             "changed": r.changed, "errors": r.errors} for r in plan.rows if r.errors or r.action != "unchanged"]
    return {
        "columns": plan.columns, "unknown_columns": plan.unknown_columns,
        "ignored_columns": plan.ignored_columns, "missing_columns": plan.missing_columns,
        "notes": plan.notes, "rows": rows[:1000], "rows_total": len(plan.rows),
        "counts": {"create": plan.count("create"), "update": plan.count("update"),
                   "unchanged": plan.count("unchanged"), "errors": plan.error_count},
        "writable": plan.writable,
    }


def audit_json(e) -> dict:
    return {"id": e.id, "at": iso(e.at), "actor": e.actor, "actor_type": e.actor_type,
            "action": e.action, "user_id": e.user_id, "login_id": e.login_id, "count": e.count,
            "detail": e.detail or {}, "ip": e.ip}
