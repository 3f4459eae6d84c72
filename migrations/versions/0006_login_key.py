"""Login IDs are unique ignoring case: "JDoe" and "jdoe" are the same user.

"user".login_key holds the login ID case-folded (Python's str.casefold, which folds
every script: SQLite's lower() folds ASCII only, so it cannot be the rule), with a
unique index. Existing IDs that differ only in case stop the upgrade with nothing
changed and the list of them, to be renamed first. The column is added with ALTER
TABLE (no table rebuild), so the SQLite search triggers of 0002 stay in place.

Revision ID: 0006_login_key
Revises: 0005_user_filter_index
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_login_key"
down_revision = "0005_user_filter_index"
branch_labels = None
depends_on = None

BATCH = 2000


def upgrade():
    user = sa.table("user", sa.column("id", sa.Integer), sa.column("login_id", sa.String),
                    sa.column("login_key", sa.String))
    bind = op.get_bind()
    rows = [{"uid": uid, "key": login_id.casefold(), "login_id": login_id}
            for uid, login_id in bind.execute(sa.select(user.c.id, user.c.login_id))]
    seen: dict[str, str] = {}
    clashes = []
    for row in rows:
        if row["key"] in seen:
            clashes.append(f"{seen[row['key']]!r} and {row['login_id']!r}")
        else:
            seen[row["key"]] = row["login_id"]
    if clashes:
        raise RuntimeError(
            "These users have Login IDs that differ only in upper/lower case, which CDS now "
            "treats as the same ID: " + "; ".join(clashes[:20])
            + (f" (and {len(clashes) - 20} more)" if len(clashes) > 20 else "")
            + ". Change one ID of each pair (with the previous CDS version, or in the database) "
              "and upgrade again. Nothing was changed.")
    op.add_column("user", sa.Column("login_key", sa.String(length=340), nullable=True))
    stmt = user.update().where(user.c.id == sa.bindparam("uid")).values(login_key=sa.bindparam("key"))
    for start in range(0, len(rows), BATCH):
        bind.execute(stmt, [{"uid": r["uid"], "key": r["key"]} for r in rows[start:start + BATCH]])
    op.create_index("ix_user_login_key", "user", ["login_key"], unique=True)


def downgrade():
    op.drop_index("ix_user_login_key", table_name="user")
    op.drop_column("user", "login_key")
