"""Connection forms. Passwords are write-only: a form never carries the stored value."""
from flask_wtf import FlaskForm
from wtforms import (BooleanField, HiddenField, IntegerField, PasswordField, SelectField,
                     StringField, TextAreaField)
from wtforms.validators import InputRequired, NumberRange, Optional

from cds.models import CONNECTION_KINDS
from cds.security import seal, unseal
from cds.sources import LIMIT_DEFAULTS, LIMIT_RANGES
from cds.sources.ldap import DEFAULT_FILTER, DEFAULT_KEY_ATTRIBUTE, DEFAULT_MAPPING, MAPPABLE_FIELDS
from cds.users.fields import FIELD_LABELS


def _strip(value):
    return value.strip() if isinstance(value, str) else value


MAPPING_LABELS = {name: FIELD_LABELS[name] for name in MAPPABLE_FIELDS}


class SettingsFields:
    """What any administrator may change: everything but the address and credentials."""
    name = StringField("Name", filters=[_strip])
    sync_interval_minutes = IntegerField("Sync every (minutes)", default=60, validators=[
        InputRequired("The sync interval is required."),
        NumberRange(5, 10080, "The sync interval must be 5 to 10080 minutes (a week).")])
    enabled = BooleanField("Enabled (periodic sync)", default=True)
    timeout = IntegerField("Timeout (seconds)", default=30, validators=[
        Optional(), NumberRange(1, 600, "The timeout must be 1 to 600 seconds.")])
    page_size = IntegerField("Page size", default=500, validators=[
        Optional(), NumberRange(1, 5000, "The page size must be 1 to 5000.")])
    verify_tls = BooleanField("Verify the server certificate", default=True)
    # Limits of one read of the source (empty: cds.sources.LIMIT_DEFAULTS).
    max_records = IntegerField("Most users", validators=[
        Optional(), NumberRange(*LIMIT_RANGES["max_records"], "Enter 1 to 5,000,000 users.")])
    max_pages = IntegerField("Most pages", validators=[
        Optional(), NumberRange(*LIMIT_RANGES["max_pages"], "Enter 1 to 1,000,000 pages.")])
    max_megabytes = IntegerField("Most data (MB)", validators=[
        Optional(), NumberRange(*LIMIT_RANGES["max_megabytes"], "Enter 1 to 16,384 MB.")])
    max_seconds = IntegerField("Longest read (seconds)", validators=[
        Optional(), NumberRange(*LIMIT_RANGES["max_seconds"], "Enter 1 to 86,400 seconds (a day).")])
    ca_cert_pem = TextAreaField("CA certificate (PEM, for a private CA)", filters=[_strip])
    # LDAP / Active Directory
    base_dn = StringField("Base DN", filters=[_strip])
    search_filter = StringField("Search filter", filters=[_strip])
    key_attribute = StringField("Key attribute", filters=[_strip])
    # map_<field>: one attribute-mapping input per mappable field, added below the class.

    def options(self, kind: str) -> dict:
        opts = {"timeout": self.timeout.data or 30, "page_size": self.page_size.data or 500,
                "verify_tls": bool(self.verify_tls.data), "ca_cert_pem": self.ca_cert_pem.data or ""}
        for name in LIMIT_DEFAULTS:
            if getattr(self, name).data is not None:
                opts[name] = getattr(self, name).data
        if kind == "ldap":
            opts.update(base_dn=self.base_dn.data or "", search_filter=self.search_filter.data or "",
                        key_attribute=self.key_attribute.data or "",
                        mapping={f: getattr(self, f"map_{f}").data or "" for f in MAPPABLE_FIELDS})
        return opts

    def mapping_fields(self):
        return [getattr(self, f"map_{f}") for f in MAPPABLE_FIELDS]

    def add_errors(self, errors: dict) -> None:
        for name, message in errors.items():
            field = getattr(self, name, None) or self.name
            if message not in field.errors:
                field.errors = list(field.errors) + [message]


for _name in MAPPABLE_FIELDS:
    setattr(SettingsFields, f"map_{_name}", StringField(MAPPING_LABELS[_name], filters=[_strip]))


class ConnectionEditForm(SettingsFields, FlaskForm):
    pass


class KeptPassword:
    """The password typed before an error is kept for the next attempt, sealed (encrypted
    with the instance key) in a hidden field: the page never holds the password itself."""
    password = PasswordField("Password")
    password_kept = HiddenField()

    def typed_password(self) -> str:
        return self.password.data or unseal(self.password_kept.data) or ""

    def keep_password(self) -> None:
        typed = self.typed_password()
        self.password_kept.data = seal(typed) if typed else ""


class ConnectionCreateForm(KeptPassword, SettingsFields, FlaskForm):
    kind = SelectField("Kind", choices=list(CONNECTION_KINDS.items()), default="mbg")
    url = StringField("URL", filters=[_strip])
    username = StringField("User name / bind DN", filters=[_strip])


class AuthorizeForm(KeptPassword, FlaskForm):
    url = StringField("URL", filters=[_strip])
    username = StringField("User name / bind DN", filters=[_strip])

    def add_errors(self, errors: dict) -> None:
        for name, message in errors.items():
            field = getattr(self, name, None) or self.password
            if message not in field.errors:
                field.errors = list(field.errors) + [message]


def form_data(conn) -> dict:
    """A connection's settings as form data (never its password or token)."""
    opts = conn.options or {}
    mapping = opts.get("mapping") or {}
    data = {"name": conn.name, "sync_interval_minutes": conn.sync_interval_minutes,
            "enabled": conn.enabled, "timeout": opts.get("timeout", 30),
            "page_size": opts.get("page_size", 500), "verify_tls": opts.get("verify_tls", True),
            "ca_cert_pem": opts.get("ca_cert_pem", ""), "base_dn": opts.get("base_dn", ""),
            "search_filter": opts.get("search_filter", ""),
            "key_attribute": opts.get("key_attribute", "")}
    for name in LIMIT_DEFAULTS:
        data[name] = opts.get(name)
    for f in MAPPABLE_FIELDS:
        data[f"map_{f}"] = mapping.get(f, DEFAULT_MAPPING.get(f, ""))
    return data


def create_defaults() -> dict:
    """A new connection's form: the usual interval and transport, the default mapping."""
    data = {"sync_interval_minutes": 60, "enabled": True, "timeout": 30, "page_size": 500,
            "verify_tls": True}
    for f in MAPPABLE_FIELDS:
        data[f"map_{f}"] = DEFAULT_MAPPING.get(f, "")
    return data


def ldap_defaults() -> dict:
    """Placeholders that tell the administrator what an empty field means."""
    return {"search_filter": DEFAULT_FILTER, "key_attribute": DEFAULT_KEY_ATTRIBUTE,
            **{f"map_{f}": DEFAULT_MAPPING.get(f, "(not mapped)") for f in MAPPABLE_FIELDS}}
