"""Every table of CDS. All times are naive UTC (see ``utcnow``)."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cds.extensions import db
from cds.security import decrypt, decrypt_secrets, encrypt, encrypt_secrets


def utcnow() -> datetime:
    """Naive UTC, the one form of time stored in the database (SQLite and PostgreSQL alike)."""
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def include_in_autogenerate(obj, name, type_, reflected, compare_to) -> bool:
    """Schema objects the migrations own that no model describes: APScheduler's job
    store, and the Users search index of migration 0002_users (an FTS5 table and
    its shadow tables on SQLite, a trigram index on PostgreSQL)."""
    if type_ == "table" and (name == "apscheduler_jobs" or name.startswith("user_search")):
        return False
    return not (type_ == "index" and name == "ix_user_search_trgm")


ROLES = ("primary", "admin", "readonly")
ROLE_LABELS = {"primary": "Primary administrator", "admin": "Administrator", "readonly": "Read-only"}


class AdminAccount(db.Model):
    __tablename__ = "admin_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="admin")
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]
    # Bumped on password reset / disable, so existing sessions end.
    session_epoch: Mapped[int] = mapped_column(default=0)

    @property
    def can_write(self) -> bool:
        return self.role in ("primary", "admin")

    @property
    def is_primary(self) -> bool:
        return self.role == "primary"


class ApiToken(db.Model):
    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="admin")
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


TRANSPORTS = ("UDP", "TCP", "TLS")
CLIENT_TYPES = ("mobile", "desktop", "web")
# Which of the user's SIP accounts a SIP client registers with, how it proves it.
SIP_ACCOUNTS = ("pbx", "teleworker")
SIP_ALGORITHMS = ("MD5", "SHA-256")
SIP_CREDENTIALS = ("ha1", "password")
DO_NOT_DEPLOY = "Do Not Deploy"


class DeploymentProfile(db.Model):
    __tablename__ = "deployment_profile"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    client_types: Mapped[str] = mapped_column(String(64), default="mobile,desktop,web")
    mbg_sip_host: Mapped[str] = mapped_column(String(255), default="")
    mbg_sip_port: Mapped[int] = mapped_column(default=5061)
    mbg_sip_transport: Mapped[str] = mapped_column(String(8), default="TLS")
    pbx_sip_host: Mapped[str] = mapped_column(String(255), default="")
    pbx_sip_port: Mapped[int] = mapped_column(default=5060)
    pbx_sip_transport: Mapped[str] = mapped_column(String(8), default="UDP")
    mcs_host: Mapped[str] = mapped_column(String(255), default="")
    mcs_port: Mapped[int] = mapped_column(default=443)
    voicemail_number: Mapped[str] = mapped_column(String(32), default="")
    link_validity_hours: Mapped[int] = mapped_column(default=96)
    central_email: Mapped[str] = mapped_column(String(254), default="")
    # The client its users run (a key of cds.clients.KINDS) and the SIP account settings
    # a standard SIP client needs (docs/linphone.md).
    client: Mapped[str] = mapped_column(String(16), default="cds-v1", server_default="cds-v1")
    sip_account: Mapped[str] = mapped_column(String(16), default="pbx", server_default="pbx")
    sip_domain: Mapped[str] = mapped_column(String(255), default="", server_default="")
    sip_realm: Mapped[str] = mapped_column(String(255), default="", server_default="")
    sip_algorithm: Mapped[str] = mapped_column(String(8), default="MD5", server_default="MD5")
    sip_credential: Mapped[str] = mapped_column(String(8), default="ha1", server_default="ha1")
    email_subject: Mapped[str] = mapped_column(String(200), default="")
    email_body: Mapped[str] = mapped_column(Text, default="")
    # The built-in "Do Not Deploy" profile: never sent anything, never renamed or deleted.
    is_do_not_deploy: Mapped[bool] = mapped_column(default=False)
    is_default: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    users: Mapped[list["User"]] = relationship(back_populates="profile")

    def client_type_list(self) -> list[str]:
        return [c for c in self.client_types.split(",") if c]


# The four secrets a user carries. Write-only everywhere except the client's
# configuration document, which is the only place they ever leave the CDS.
USER_SECRETS = {
    "mcs_password": "MiCollab Client password",
    "pbx_sip_password": "PBX SIP password",
    "teleworker_sip_password": "Teleworker SIP password",
    "voicemail_pin": "Voicemail PIN",
}

SOURCE_MANUAL = "manual"
SOURCE_CSV = "csv"
SOURCE_CONNECTION = "connection"

# Fields a source owns: read-only in the console for imported users, changed by Sync.
SOURCE_OWNED_FIELDS = ("login_id", "first_name", "last_name", "number", "pbx_number",
                       "pbx_sip_username", "mbg_sip_username", "mcs_account", "email")


class User(db.Model):
    __tablename__ = "user"
    id: Mapped[int] = mapped_column(primary_key=True)
    login_id: Mapped[str] = mapped_column(String(113), unique=True)
    profile_id: Mapped[int] = mapped_column(db.ForeignKey("deployment_profile.id"), index=True)
    first_name: Mapped[str] = mapped_column(String(100), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    number: Mapped[str] = mapped_column(String(32), default="")
    pbx_number: Mapped[str] = mapped_column(String(32), default="")
    pbx_sip_username: Mapped[str] = mapped_column(String(128), default="")
    mbg_sip_username: Mapped[str] = mapped_column(String(128), default="")
    mcs_account: Mapped[str] = mapped_column(String(128), default="")
    email: Mapped[str] = mapped_column(String(254), default="")

    # The four USER_SECRETS, encrypted together as one JSON object (security.encrypt_secrets):
    # a client's configuration download decrypts once, not four times.
    secrets_enc: Mapped[str | None] = mapped_column(Text)

    source: Mapped[str] = mapped_column(String(16), default=SOURCE_MANUAL)
    connection_id: Mapped[int | None] = mapped_column(
        db.ForeignKey("connection.id", ondelete="SET NULL"), index=True)
    source_key: Mapped[str | None] = mapped_column(String(255))

    deployed_at: Mapped[datetime | None]
    downloaded_at: Mapped[datetime | None]
    force_config: Mapped[bool] = mapped_column(default=False)
    redeploy_required: Mapped[bool] = mapped_column(default=False)
    not_in_source: Mapped[bool] = mapped_column(default=False)
    send_error: Mapped[str | None] = mapped_column(Text)
    send_error_at: Mapped[datetime | None]
    # Bumped whenever the configuration a client would download changes.
    config_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    profile: Mapped[DeploymentProfile] = relationship(back_populates="users")
    connection: Mapped["Connection | None"] = relationship()

    __table_args__ = (
        UniqueConstraint("connection_id", "source_key", name="uq_user_connection_source_key"),
        # Sorting by a column is a walk of its index; "id" keeps the order stable.
        Index("ix_user_last_name", "last_name", "id"),
        Index("ix_user_first_name", "first_name", "id"),
        Index("ix_user_number", "number", "id"),
        Index("ix_user_mbg_sip_username", "mbg_sip_username", "id"),
        Index("ix_user_mcs_account", "mcs_account", "id"),
        Index("ix_user_email", "email", "id"),
        Index("ix_user_deployed_at", "deployed_at", "id"),
        Index("ix_user_downloaded_at", "downloaded_at", "id"),
        Index("ix_user_profile_sort", "profile_id", "id"),
        # The filters' columns (migration 0005): counting what a filter matches reads
        # this index, not the table.
        Index("ix_user_filters", "profile_id", "deployed_at", "downloaded_at", "force_config",
              "redeploy_required", "not_in_source", "source", "connection_id"),
    )

    def secrets(self) -> dict[str, str]:
        """The secrets that are set, decrypted."""
        return decrypt_secrets(self.secrets_enc)

    def set_secret(self, name: str, value: str | None) -> None:
        """Replace one secret (None or "" clears it)."""
        if name not in USER_SECRETS:
            raise KeyError(name)
        self.secrets_enc = encrypt_secrets({**self.secrets(), name: value})

    def get_secret(self, name: str) -> str | None:
        if name not in USER_SECRETS:
            raise KeyError(name)
        return self.secrets().get(name)

    def has_secret(self, name: str) -> bool:
        return self.get_secret(name) is not None

    @property
    def is_imported(self) -> bool:
        return self.source == SOURCE_CONNECTION

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.first_name, self.last_name) if p) or self.login_id


CONNECTION_KINDS = {
    "mbg": "MBG",
    "mcs": "MiCollab Client Service",
    "usa": "Users and Services",
    "ldap": "LDAP / Active Directory",
}


class Connection(db.Model):
    __tablename__ = "connection"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(512))
    username: Mapped[str] = mapped_column(String(255), default="")
    password_enc: Mapped[str | None] = mapped_column(Text)
    # Access token handed out by the source, and when it stops working.
    token_enc: Mapped[str | None] = mapped_column(Text)
    token_expires_at: Mapped[datetime | None]
    # Kind-specific settings (LDAP base DN, filter, attribute mapping, StartTLS…).
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    sync_interval_minutes: Mapped[int] = mapped_column(default=60)
    enabled: Mapped[bool] = mapped_column(default=True)
    verified: Mapped[bool] = mapped_column(default=False)
    verified_at: Mapped[datetime | None]
    last_sync_at: Mapped[datetime | None]
    last_sync_ok: Mapped[bool | None]
    last_sync_message: Mapped[str | None] = mapped_column(Text)
    next_sync_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def set_password(self, value: str | None) -> None:
        self.password_enc = encrypt(value)

    def get_password(self) -> str | None:
        return decrypt(self.password_enc)


class SourceRecord(db.Model):
    """A user record as a connection last reported it (the Import Users view)."""
    __tablename__ = "source_record"
    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(
        db.ForeignKey("connection.id", ondelete="CASCADE"), index=True)
    source_key: Mapped[str] = mapped_column(String(255))
    login_id: Mapped[str] = mapped_column(String(113), default="")
    first_name: Mapped[str] = mapped_column(String(100), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    number: Mapped[str] = mapped_column(String(32), default="")
    pbx_number: Mapped[str] = mapped_column(String(32), default="")
    pbx_sip_username: Mapped[str] = mapped_column(String(128), default="")
    mbg_sip_username: Mapped[str] = mapped_column(String(128), default="")
    mcs_account: Mapped[str] = mapped_column(String(128), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    fetched_at: Mapped[datetime] = mapped_column(default=utcnow)

    connection: Mapped[Connection] = relationship()
    __table_args__ = (UniqueConstraint("connection_id", "source_key",
                                       name="uq_source_record_connection_key"),)


SEND_PENDING = "pending"      # issued, not yet handed to SMTP
SEND_SENDING = "sending"      # handed to SMTP; outcome not yet recorded
SEND_SENT = "sent"            # SMTP accepted it
SEND_RETRY = "retry"          # temporary failure, the scheduler retries it
SEND_FAILED = "failed"        # permanent failure
SEND_UNKNOWN = "unknown"      # interrupted mid-send: never resent automatically


class Deployment(db.Model):
    """One issued link. Only the hash of its token is stored."""
    __tablename__ = "deployment"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("user.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    issued_by: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime]
    recipient: Mapped[str] = mapped_column(String(254), default="")
    send_state: Mapped[str] = mapped_column(String(16), default=SEND_PENDING)
    send_attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    send_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    used_at: Mapped[datetime | None]
    used_device_id: Mapped[str | None] = mapped_column(String(128))
    used_ip: Mapped[str | None] = mapped_column(String(64))
    superseded_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    job_id: Mapped[int | None] = mapped_column(db.ForeignKey("job.id", ondelete="SET NULL"), index=True)

    user: Mapped[User] = relationship()

    def status(self, now: datetime | None = None) -> str:
        return link_state(self, now or utcnow())


def link_state(link, now: datetime) -> str:
    """A deployment link's state, from a Deployment or a row with the same columns."""
    if link.used_at:
        return "used"
    if link.revoked_at:
        return "revoked"
    if link.superseded_at:
        return "superseded"
    if link.expires_at <= now:
        return "expired"
    return "valid"


class ClientDevice(db.Model):
    __tablename__ = "client_device"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("user.id", ondelete="CASCADE"), index=True)
    deployment_id: Mapped[int | None] = mapped_column(
        db.ForeignKey("deployment.id", ondelete="SET NULL"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(128), default="")
    platform: Mapped[str] = mapped_column(String(32), default="")
    app_version: Mapped[str] = mapped_column(String(32), default="")
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None]
    last_ip: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship()


JOB_SCHEDULED = "scheduled"
JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"
JOB_CANCELLED = "cancelled"
JOB_FINISHED_STATES = (JOB_DONE, JOB_FAILED, JOB_CANCELLED)


class Job(db.Model):
    """A bulk action or scheduled run, with progress the pages poll."""
    __tablename__ = "job"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=JOB_QUEUED, index=True)
    # What to act on: {"ids": [...]} or {"filter": {...}}, plus action options.
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    description: Mapped[str] = mapped_column(String(255), default="")
    run_at: Mapped[datetime | None] = mapped_column(index=True)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Which process runs it, and when it last said so (a silent runner is presumed dead).
    runner: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None]
    total: Mapped[int] = mapped_column(default=0)
    done: Mapped[int] = mapped_column(default=0)
    succeeded: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    summary: Mapped[dict] = mapped_column(JSON, default=dict)
    message: Mapped[str | None] = mapped_column(Text)

    @property
    def finished(self) -> bool:
        return self.state in JOB_FINISHED_STATES

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else (100 if self.finished else 0)


class JobItem(db.Model):
    """The outcome of one job for one user: the resume point and the per-user report."""
    __tablename__ = "job_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(db.ForeignKey("job.id", ondelete="CASCADE"))
    user_id: Mapped[int | None]
    login_id: Mapped[str] = mapped_column(String(113), default="")
    outcome: Mapped[str] = mapped_column(String(16))  # ok, skipped, failed
    message: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_job_item_job_user", "job_id", "user_id"),)


class AuditEvent(db.Model):
    """Who did what, when, from where. Never holds a secret or a token."""
    __tablename__ = "audit_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    actor_type: Mapped[str] = mapped_column(String(16), default="admin")  # admin, api, client, system
    action: Mapped[str] = mapped_column(String(64), index=True)
    # No foreign key: the trail outlives the user it mentions.
    user_id: Mapped[int | None] = mapped_column(index=True)
    login_id: Mapped[str | None] = mapped_column(String(113))
    count: Mapped[int | None]
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(64))


class RedirectEntry(db.Model):
    """The redirect store: a token hash, where to send it, until when. Nothing else."""
    __tablename__ = "redirect_entry"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    cds_url: Mapped[str] = mapped_column(String(512))
    expires_at: Mapped[datetime] = mapped_column(index=True)


class RedirectOutbox(db.Model):
    """Registrations and withdrawals still owed to a separate redirect server."""
    __tablename__ = "redirect_outbox"
    id: Mapped[int] = mapped_column(primary_key=True)
    op: Mapped[str] = mapped_column(String(8))  # put, delete
    token_hash: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)


class Setting(db.Model):
    """Settings changed from the console (SMTP, URLs, templates…), over the config file."""
    __tablename__ = "setting"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[bool] = mapped_column(default=False)  # value is encrypted
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64))
