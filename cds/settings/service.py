"""Settings changed from the console, stored in the database over the file/env values.

The configuration file and CDS_* variables give the starting values; what the
primary administrator saves in Settings is stored here and wins from then on
(every process reads it from the shared database). Secret values are encrypted.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import current_app, g
from sqlalchemy import select

from cds import errors
from cds.audit.service import record_event
from cds.extensions import db
from cds.models import Setting
from cds.security import decrypt, encrypt


class SettingError(errors.Invalid):
    """A setting value is not acceptable; the message says why."""


@dataclass(frozen=True)
class SettingDef:
    key: str
    kind: type  # str, int or bool
    secret: bool = False


# Keys the console may change. Defaults come from app.config (cds/config.py),
# or from DEFAULTS below for keys that only exist here.
EDITABLE = {d.key: d for d in (
    SettingDef("PUBLIC_URL", str),
    SettingDef("REDIRECT_URL", str),
    SettingDef("MAIL_SERVER", str),
    SettingDef("MAIL_PORT", int),
    SettingDef("MAIL_USE_TLS", bool),
    SettingDef("MAIL_USE_SSL", bool),
    SettingDef("MAIL_USERNAME", str),
    SettingDef("MAIL_PASSWORD", str, secret=True),
    SettingDef("MAIL_DEFAULT_SENDER", str),
    SettingDef("MAIL_RATE_LIMIT", int),
    SettingDef("JOB_RETENTION_DAYS", int),
    SettingDef("AUTO_REDEPLOY_ON_ID_CHANGE", bool),
    SettingDef("MAIL_TEMPLATE_SUBJECT", str),
    SettingDef("MAIL_TEMPLATE_TEXT", str),
    SettingDef("MAIL_TEMPLATE_HTML", str),
)}

DEFAULTS = {
    "AUTO_REDEPLOY_ON_ID_CHANGE": False,
    # Empty template settings mean: the built-in templates in templates/mail/.
    "MAIL_TEMPLATE_SUBJECT": "",
    "MAIL_TEMPLATE_TEXT": "",
    "MAIL_TEMPLATE_HTML": "",
}


def _decode(definition: SettingDef, row: Setting):
    raw = decrypt(row.value) if definition.secret else row.value
    if raw is None:
        return None
    if definition.kind is bool:
        return raw == "1"
    if definition.kind is int:
        return int(raw)
    return raw


def get_setting(key: str):
    definition = EDITABLE[key]
    row = db.session.get(Setting, key)
    if row is not None:
        return _decode(definition, row)
    if key in current_app.config:
        return current_app.config[key]
    return DEFAULTS.get(key)


def get_settings(*keys: str) -> dict:
    rows = {r.key: r for r in db.session.scalars(select(Setting).where(Setting.key.in_(keys)))}
    out = {}
    for key in keys:
        definition = EDITABLE[key]
        if key in rows:
            out[key] = _decode(definition, rows[key])
        else:
            out[key] = current_app.config.get(key, DEFAULTS.get(key))
    return out


def is_overridden(key: str) -> bool:
    return db.session.get(Setting, key) is not None


def save_settings(values: dict, actor: str | None = None, *, commit: bool = True) -> list[str]:
    """Store the given values; returns the keys that changed. Secrets: None keeps, "" clears."""
    changed = []
    for key, value in values.items():
        definition = EDITABLE.get(key)
        if definition is None:
            raise SettingError(f"{key} cannot be changed from the console.")
        if definition.secret and value is None:
            continue
        if value is None:
            stored = None
        elif definition.kind is bool:
            stored = "1" if value else "0"
        elif definition.kind is int:
            stored = str(int(value))
        else:
            stored = str(value)
        if definition.secret:
            stored = encrypt(stored) if stored else None
        row = db.session.get(Setting, key)
        if row is None:
            row = Setting(key=key, secret=definition.secret)
            db.session.add(row)
        elif (decrypt(row.value) if definition.secret else row.value) == (value if definition.secret else stored):
            continue
        row.value, row.updated_by = stored, actor
        changed.append(key)
    if changed:
        g.pop(_URLS, None)
    if commit:
        db.session.commit()
    return changed


def reset_setting(key: str) -> None:
    """Back to the file/env value."""
    row = db.session.get(Setting, key)
    if row is not None:
        db.session.delete(row)
        db.session.commit()


# --- Settings → General: the values the console form edits ------------------------

GENERAL_KEYS = ("PUBLIC_URL", "REDIRECT_URL", "JOB_RETENTION_DAYS", "AUTO_REDEPLOY_ON_ID_CHANGE")
MAX_RETENTION_DAYS = 3650


def parse_general(form) -> tuple[dict, dict]:
    """Validate the General form: (values, errors by field). Nothing is saved here."""
    values, errors = {}, {}
    for key, label in (("PUBLIC_URL", "The CDS public URL"), ("REDIRECT_URL", "The redirect server URL")):
        raw = str(form.get(key, "") or "").strip().rstrip("/")
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
                or any(c.isspace() for c in raw):
            errors[key] = f"{label} must be an http:// or https:// address, e.g. https://cds.example.com."
        else:
            values[key] = raw
    raw = str(form.get("JOB_RETENTION_DAYS", "") or "").strip()
    if not raw.isdigit() or int(raw) > MAX_RETENTION_DAYS:
        errors["JOB_RETENTION_DAYS"] = f"Enter a number of days from 0 to {MAX_RETENTION_DAYS} (0 keeps every job)."
    else:
        values["JOB_RETENTION_DAYS"] = int(raw)
    values["AUTO_REDEPLOY_ON_ID_CHANGE"] = form.get("AUTO_REDEPLOY_ON_ID_CHANGE") in ("1", "on", "true", "yes")
    return values, errors


def save_general(values: dict, actor: str | None = None) -> list[str]:
    """Store validated General values and audit what changed (old and new: none is secret)."""
    before = get_settings(*GENERAL_KEYS)
    changes = {key: value for key, value in values.items() if value != before.get(key)}
    changed = save_settings(changes, actor=actor, commit=False)
    if changed:
        record_event("settings.change", actor=actor, commit=False, detail={
            key: {"from": before[key], "to": values[key]} for key in changed})
    db.session.commit()
    return changed


# The two URLs, read once per application context (a request, or a job's run): a deploy
# asks for them for every user, and an unset setting is a SELECT each time.
_URLS = "_cds_setting_urls"


def _once(name: str, compute):
    cache = g.setdefault(_URLS, {})
    if name not in cache:
        cache[name] = compute()
    return cache[name]


def public_url() -> str:
    """Where administrators and client apps reach this CDS (Settings over config)."""
    return _once("public", _public_url)


def _public_url() -> str:
    return (get_setting("PUBLIC_URL") or current_app.config["PUBLIC_URL"]).rstrip("/")


def redirect_url() -> str:
    """Base of the links in deployment e-mails: the redirect server's URL if one is set
    (Settings or config), else this CDS's own public URL."""
    return _once("redirect", _redirect_url)


def _redirect_url() -> str:
    row = db.session.get(Setting, "REDIRECT_URL")
    if row is not None and row.value:
        return row.value.rstrip("/")
    if current_app.config.get("REDIRECT_URL_EXPLICIT"):
        return current_app.config["REDIRECT_URL"].rstrip("/")
    return public_url()
