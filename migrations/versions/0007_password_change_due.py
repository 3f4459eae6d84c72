"""An administrator signed in with a one-time password is asked to choose their own.

"admin_account".password_change_due is set for the first administrator's printed
password and for passwords a primary administrator sets or generates for someone
else; it is cleared when the administrator changes their own password.

Revision ID: 0007_password_change_due
Revises: 0006_login_key
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_password_change_due"
down_revision = "0006_login_key"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("admin_account", sa.Column("password_change_due", sa.Boolean(), nullable=False,
                                             server_default=sa.false()))


def downgrade():
    op.drop_column("admin_account", "password_change_due")
