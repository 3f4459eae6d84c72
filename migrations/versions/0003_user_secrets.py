"""A user's four secrets in one encrypted value.

"user".mcs_password_enc, pbx_sip_password_enc, teleworker_sip_password_enc and
voicemail_pin_enc (each its own Fernet token) become "user".secrets_enc, one Fernet
token of a JSON object holding the secrets that are set. A client's configuration
download then decrypts once instead of four times.

The rows are re-encrypted with the instance's encryption key; a restore migrating
an older archive passes the archive's key in the Alembic config attributes
("cds_cipher"). The columns are added and dropped with ALTER TABLE (no table
rebuild), so the SQLite search triggers of 0002 stay in place.

Revision ID: 0003_user_secrets
Revises: 0002_users
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_user_secrets"
down_revision = "0002_users"
branch_labels = None
depends_on = None

NAMES = ("mcs_password", "pbx_sip_password", "teleworker_sip_password", "voicemail_pin")
BATCH = 2000


def _cipher():
    cipher = op.get_context().config.attributes.get("cds_cipher") if op.get_context().config else None
    if cipher is None:
        from flask import current_app
        cipher = current_app.extensions["cds_cipher"]
    return cipher


def _user():
    return sa.table("user", sa.column("id", sa.Integer), sa.column("secrets_enc", sa.Text),
                    *(sa.column(f"{name}_enc", sa.Text) for name in NAMES))


def _read(names, convert) -> list[dict]:
    """convert() of the named columns of every user with any of them set. Runs before
    any change, so a secret that cannot be decrypted stops the migration with nothing done."""
    from cryptography.fernet import InvalidToken

    from cds.security import SecretUnreadable

    user = _user()
    columns = [user.c[name] for name in names]
    out = []
    for row in op.get_bind().execute(sa.select(user.c.id, *columns).where(
            sa.or_(*(c.is_not(None) for c in columns)))):
        try:
            out.append({"uid": row[0], **convert(row[1:])})
        except (InvalidToken, SecretUnreadable):
            raise RuntimeError(
                f"The secrets of user {row[0]} cannot be decrypted with this instance's encryption "
                "key. Start CDS with the key they were encrypted with (CDS_ENCRYPTION_KEY or "
                "instance/encryption.key) and upgrade again. Nothing was changed.") from None
    return out


def _write(rows: list[dict], values) -> None:
    user = _user()
    stmt = user.update().where(user.c.id == sa.bindparam("uid")).values(values)
    for start in range(0, len(rows), BATCH):
        op.get_bind().execute(stmt, rows[start:start + BATCH])


def upgrade():
    from cds.security import encrypt_secrets

    cipher = _cipher()

    def convert(values):
        plain = {name: cipher.decrypt(v.encode()).decode() for name, v in zip(NAMES, values) if v}
        return {"new": encrypt_secrets(plain, cipher)}

    rows = _read([f"{name}_enc" for name in NAMES], convert)
    op.add_column("user", sa.Column("secrets_enc", sa.Text(), nullable=True))
    _write(rows, {"secrets_enc": sa.bindparam("new")})
    for name in NAMES:
        op.drop_column("user", f"{name}_enc")


def downgrade():
    from cds.security import decrypt_secrets

    cipher = _cipher()

    def convert(values):
        plain = decrypt_secrets(values[0], cipher)
        return {f"v_{name}": cipher.encrypt(plain[name].encode()).decode() if plain.get(name) else None
                for name in NAMES}

    rows = _read(["secrets_enc"], convert)
    for name in NAMES:
        op.add_column("user", sa.Column(f"{name}_enc", sa.Text(), nullable=True))
    _write(rows, {f"{name}_enc": sa.bindparam(f"v_{name}") for name in NAMES})
    op.drop_column("user", "secrets_enc")
