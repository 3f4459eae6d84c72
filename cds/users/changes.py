"""One way to change a user: ``plan_change`` says what a change would do, without doing it.

Every writer of users asks it first — the form, the API and the CLI (``save_user``),
the CSV import, the import from a connection and Sync — and applies what it returns,
one user at a time or in bulk SQL. So the same values are refused with the same
messages everywhere, and config_version rises for the same reasons everywhere (the
client protocol promises a new configuration whenever a field of the document, the
profile or a secret changes).

It is pure: it reads the current user (a User, or a mapping with the same keys) and
the new values, never the database. What needs the database — whether a login ID
belongs to another user, whether a profile exists — is ``cds.users.login_ids`` and
the caller's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cds.users.fields import (CONFIG_FIELDS, FIELD, FIELD_LABELS, FIELD_NAMES, USER_SECRETS,
                              secret_problem, validate_user_fields)

# Who writes: an administrator (form, API, CLI, CSV file), or the user's source
# (Sync, import from a connection), which alone may change the fields it owns.
BY_ADMIN = "admin"
BY_SOURCE = "source"


@dataclass
class Change:
    """What saving ``values`` and ``secrets`` over the current user would do."""
    created: bool
    errors: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)          # field -> new value (create: all)
    secrets: dict[str, str | None] = field(default_factory=dict)  # secret -> new value, None clears
    profile_id: int | None = None                                 # set when the profile changes
    old_login_id: str | None = None                               # set when the login ID changes

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def login_id_changed(self) -> bool:
        return self.old_login_id is not None

    @property
    def raises_config_version(self) -> bool:
        """A field of the client's configuration, the profile or a secret changes (a new
        user starts at version 1: nothing to raise)."""
        if self.created:
            return False
        return bool(self.secrets) or self.profile_id is not None or \
            any(name in CONFIG_FIELDS for name in self.fields)

    @property
    def changed(self) -> list[str]:
        """The names of what changes, for the audit trail and the preview (never a value)."""
        names = [n for n in self.fields if n != "login_id"]
        if self.profile_id is not None:
            names.append("profile")
        names += [f"{n} ({'cleared' if v is None else 'replaced'})" for n, v in self.secrets.items()]
        if "login_id" in self.fields and not self.created:
            names.append("login_id")
        return names

    @property
    def is_empty(self) -> bool:
        return not (self.fields or self.secrets or self.profile_id is not None)


def _text(value) -> str:
    return value.strip() if isinstance(value, str) else str(value or "").strip()


def _has_secret(user, name: str) -> bool:
    has = getattr(user, "has_secret", None)
    return True if has is None else has(name)


def plan_change(user, values: dict, secrets: dict | None = None, *, by: str = BY_ADMIN) -> Change:
    """What writing ``values`` ({field: text}, and ``profile_id``) and ``secrets``
    ({name: value}, None clears) over ``user`` (None: a new user) would change.

    A new user gets every field (those not given are empty); an existing one changes
    only the fields given whose value differs, and only those are checked. The fields a
    source owns change for an imported user only when the source writes them (``by``).
    Values are stripped; secrets are taken exactly as given."""
    secrets = secrets or {}
    created = user is None
    change = Change(created=created)
    current = None if created else user.get if isinstance(user, dict) else user.__getattribute__
    if created:
        change.fields = {name: _text(values.get(name)) for name in FIELD_NAMES}
    else:
        for name, value in values.items():
            if name in FIELD:
                text = _text(value)
                if text != (current(name) or ""):
                    change.fields[name] = text
        owned = [n for n in FIELD_NAMES if n in change.fields and FIELD[n].source_owned]
        if owned and by != BY_SOURCE and current("source") == "connection":
            labels = [FIELD_LABELS[n] for n in owned]
            change.errors["source"] = (f"Imported from a connection: {', '.join(labels)} "
                                       f"{'is' if len(labels) == 1 else 'are'} set by the source "
                                       f"(only the profile and secrets can change here).")
        if "login_id" in change.fields:
            change.old_login_id = current("login_id")
    if change.fields:
        change.errors.update(validate_user_fields(change.fields))

    profile_id = values.get("profile_id")
    if profile_id is not None and (created or profile_id != current("profile_id")):
        change.profile_id = profile_id

    for name, value in secrets.items():
        problem = secret_problem(name, value)
        if problem:
            change.errors[name] = problem
        elif name in USER_SECRETS and not (value is None and (created or not _has_secret(user, name))):
            change.secrets[name] = value
    return change
