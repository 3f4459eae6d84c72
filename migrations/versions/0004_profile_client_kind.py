"""A deployment profile names the client its users run, and the SIP account settings a
standard SIP client needs (docs/linphone.md).

Existing profiles keep CDS client protocol v1 ("cds-v1"), so nothing changes for them.

Revision ID: 0004_profile_client
Revises: 0003_user_secrets
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_profile_client"
down_revision = "0003_user_secrets"
branch_labels = None
depends_on = None

COLUMNS = (
    ("client", 16, "cds-v1"),
    ("sip_account", 16, "pbx"),
    ("sip_domain", 255, ""),
    ("sip_realm", 255, ""),
    ("sip_algorithm", 8, "MD5"),
    ("sip_credential", 8, "ha1"),
)


def upgrade():
    # Plain ALTER TABLE ADD COLUMN (no table rebuild) on SQLite and PostgreSQL alike.
    for name, length, default in COLUMNS:
        op.add_column("deployment_profile", sa.Column(name, sa.String(length), nullable=False,
                                                      server_default=default))


def downgrade():
    # ALTER TABLE DROP COLUMN (SQLite 3.35+): a table rebuild would trip the users' foreign key.
    for name, _, _ in reversed(COLUMNS):
        op.drop_column("deployment_profile", name)
