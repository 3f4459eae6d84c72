"""Users tab search index: contains-search over 100,000 users without a full scan.

SQLite: an FTS5 table with the trigram tokenizer over the searched columns of
"user" (external content, so nothing is stored twice), kept in step by
triggers. PostgreSQL: a pg_trgm GIN index on the lower-cased searched text.

The search itself (cds/users/query.py) always re-checks with LIKE, so the
index only narrows the rows; it never changes what a search finds.

Note for later migrations: a SQLite batch_alter_table("user") rebuilds the
table and drops these triggers; such a migration must call create_sqlite_search
again (import it from here) after the batch.

Revision ID: 0002_users
Revises: 0001_initial
"""
from alembic import op

revision = "0002_users"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

# The searched columns, in the order of cds/users/query.py SEARCH_COLUMNS.
COLUMNS = ("first_name", "last_name", "number", "email", "mbg_sip_username",
           "pbx_sip_username", "mcs_account", "login_id", "pbx_number")


def pg_search_expression() -> str:
    return "lower(" + " || ' ' || ".join(COLUMNS) + ")"


def create_sqlite_search() -> None:
    cols = ", ".join(COLUMNS)
    new = ", ".join(f"new.{c}" for c in COLUMNS)
    old = ", ".join(f"old.{c}" for c in COLUMNS)
    op.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS user_search USING fts5({cols}, "
               "content='user', content_rowid='id', tokenize='trigram', columnsize=0)")
    op.execute("DROP TRIGGER IF EXISTS user_search_ai")
    op.execute("DROP TRIGGER IF EXISTS user_search_ad")
    op.execute("DROP TRIGGER IF EXISTS user_search_au")
    op.execute(f"CREATE TRIGGER user_search_ai AFTER INSERT ON user BEGIN "
               f"INSERT INTO user_search(rowid, {cols}) VALUES (new.id, {new}); END")
    op.execute(f"CREATE TRIGGER user_search_ad AFTER DELETE ON user BEGIN "
               f"INSERT INTO user_search(user_search, rowid, {cols}) VALUES ('delete', old.id, {old}); END")
    op.execute(f"CREATE TRIGGER user_search_au AFTER UPDATE OF {cols} ON user BEGIN "
               f"INSERT INTO user_search(user_search, rowid, {cols}) VALUES ('delete', old.id, {old}); "
               f"INSERT INTO user_search(rowid, {cols}) VALUES (new.id, {new}); END")
    op.execute("INSERT INTO user_search(user_search) VALUES ('rebuild')")


def upgrade():
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        create_sqlite_search()
    elif dialect == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(f'CREATE INDEX IF NOT EXISTS ix_user_search_trgm ON "user" '
                   f"USING gin (({pg_search_expression()}) gin_trgm_ops)")


def downgrade():
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for trigger in ("user_search_ai", "user_search_ad", "user_search_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS user_search")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_user_search_trgm")
