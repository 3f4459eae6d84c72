"""The user field table: each field of a user once, with everything CDS says about it.

The form, the CLI options, the JSON API and its OpenAPI properties, the CSV import
and export columns, the sources' field sizes and the LDAP mapping, the connection
form's mapping fields and the client configuration document's user fields are all
built from ``FIELDS``; adding a field here (and its model columns) adds it to each.
The four secrets are defined here too, with the one length rule they share.

This module is a leaf: it imports nothing of CDS, so anything (models included) may
use it. The model columns keep their SQLAlchemy declarations; a test checks that the
columns of ``User`` and ``SourceRecord`` agree with this table (names and sizes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

# Characters no field or secret may hold (they break CSV, logs and SIP headers).
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# What a phone number may look like (user fields and profile numbers alike).
PHONE_RE = re.compile(r"[0-9+*#() .\-]*")


def _login_id_problem(value: str) -> str | None:
    if len(value) < 2 or value != value.strip():
        return "Login ID must be 2 to 113 characters, without leading or trailing spaces."
    return None


def _phone_problem(label: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if not PHONE_RE.fullmatch(value):
            return f"{label} may hold only digits, spaces and + * # ( ) . -"
        return None
    return check


# Plain ASCII addresses in the shape nearly every address has; everything else goes
# to email_validator. Bulk imports validate 100,000 addresses, so the common case is
# decided here with the same outcome email_validator would give.
_PLAIN_EMAIL_RE = re.compile(
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63}")


def email_problem(value: str) -> str | None:
    """Why ``value`` is not a deliverable-looking address, or None (email_validator rules)."""
    if len(value) <= 254 and _PLAIN_EMAIL_RE.fullmatch(value):
        local, domain = value.rsplit("@", 1)
        domain = domain.lower()
        if len(local) <= 64 and "--" not in domain and not any(
                domain == d or domain.endswith("." + d) for d in SPECIAL_USE_DOMAIN_NAMES):
            return None
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def _email_problem(value: str) -> str | None:
    problem = email_problem(value)
    return f"Email address is not a valid e-mail address ({problem})." if problem else None


@dataclass(frozen=True)
class UserField:
    """One field of a user.

    ``label`` is also the CSV column header; ``size`` the column size and the longest
    value accepted; ``source_owned``: a connection's source provides it (read-only for
    imported users, changed by Sync); ``config``: where the client configuration
    document carries it ("section.key"), None when it is not in the document (a
    change then leaves config_version alone); ``check``: the field's own rule beyond
    size and control characters (a message, or None); ``ldap``: the default LDAP
    attribute(s); ``hint``: the form's help text; ``input``: the HTML input type."""
    name: str
    label: str
    size: int
    required: bool = False
    source_owned: bool = True
    config: str | None = None
    check: Callable[[str], str | None] | None = None
    ldap: str = ""
    hint: str = ""
    input: str = "text"

    @property
    def csv_header(self) -> str:
        return self.label

    @property
    def cli_flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: str) -> str | None:
        """What is wrong with this (stripped) value, or None."""
        if not value:
            return f"{self.label} is required." if self.required else None
        if len(value) > self.size:
            return f"{self.label} is longer than {self.size} characters."
        if CONTROL_RE.search(value):
            return f"{self.label} contains control characters."
        return self.check(value) if self.check else None


FIELDS: tuple[UserField, ...] = (
    UserField("login_id", "Login ID", 113, required=True, config="user.login_id",
              check=_login_id_problem, ldap="uid,sAMAccountName", hint="The user's ID, 2–113 characters."),
    UserField("first_name", "Firstname", 100, config="user.first_name", ldap="givenName"),
    UserField("last_name", "Lastname", 100, required=True, config="user.last_name", ldap="sn"),
    UserField("number", "Number", 32, config="user.number", check=_phone_problem("Number"),
              ldap="telephoneNumber", hint="Directory number"),
    UserField("pbx_number", "PBX Number", 32, config="pbx_sip.pbx_number",
              check=_phone_problem("PBX Number")),
    UserField("pbx_sip_username", "PBX SIP User name", 128, config="pbx_sip.username",
              hint="PBX SIP user name / device number"),
    UserField("mbg_sip_username", "MBG SIP User name", 128, config="mbg_sip.username"),
    UserField("mcs_account", "MiCollab Client Service Account", 128,
              config="micollab_client_service.account"),
    UserField("email", "Email address", 254, required=True, config="user.email", check=_email_problem,
              ldap="mail", hint="Deployment e-mails go to this address.", input="email"),
)

FIELD = {f.name: f for f in FIELDS}
FIELD_NAMES = tuple(FIELD)
REQUIRED_FIELDS = tuple(f.name for f in FIELDS if f.required)
# Read-only in the console for imported users, changed by Sync; what a source may provide.
SOURCE_OWNED_FIELDS = tuple(f.name for f in FIELDS if f.source_owned)
# A change of these reaches the client's configuration document: config_version rises.
CONFIG_FIELDS = tuple(f.name for f in FIELDS if f.config)
FIELD_SIZES = {f.name: f.size for f in FIELDS}
FIELD_LABELS = {f.name: f.label for f in FIELDS}

# The CSV format of import, export and the template: header -> key. The user's record
# ID and profile, the fields in table order, then what export adds for the reader
# (ignored on import). The secrets' columns (import only) follow USER_SECRETS.
CSV_COLUMNS = (
    ("ID", "id"),
    (FIELD["login_id"].csv_header, "login_id"),
    ("Profile", "profile"),
    *((f.csv_header, f.name) for f in FIELDS if f.name != "login_id"),
    ("Source", "source"),
    ("Deployed", "deployed"),
    ("Downloaded", "downloaded"),
)

# The four secrets a user carries. Write-only everywhere except the client's
# configuration document, which is the only place they ever leave the CDS.
USER_SECRETS = {
    "mcs_password": "MiCollab Client password",
    "pbx_sip_password": "PBX SIP password",
    "teleworker_sip_password": "Teleworker SIP password",
    "voicemail_pin": "Voicemail PIN",
}
# The longest secret (password, PIN) any surface accepts: form, API, CLI and CSV import.
MAX_SECRET_LENGTH = 256


def secret_problem(name: str, value: str | None) -> str | None:
    """What is wrong with a new value for the secret ``name`` (None clears it), or None:
    the one rule for secrets, whoever writes them."""
    if name not in USER_SECRETS:
        return "Unknown secret."
    if value is not None and (len(value) > MAX_SECRET_LENGTH or CONTROL_RE.search(value)):
        return f"{USER_SECRETS[name]} must be at most {MAX_SECRET_LENGTH} characters, without control characters."
    if value and not value.strip():
        # Stored exactly as given otherwise; only spaces is a slip, not a secret.
        return f"{USER_SECRETS[name]} is only spaces; leave it empty to keep the stored value."
    return None


def validate_user_fields(data: dict) -> dict[str, str]:
    """Check the non-secret fields of a user. Returns {field: message}; empty when valid.

    Only the fields present in ``data`` are checked, so a partial update can be
    validated; values are expected already stripped. Uniqueness of the login id
    needs the database: see ``cds.users.login_ids``."""
    errors: dict[str, str] = {}
    for name, value in data.items():
        spec = FIELD.get(name)
        if spec is None:
            continue
        problem = spec.problem("" if value is None else str(value))
        if problem:
            errors[name] = problem
    return errors
