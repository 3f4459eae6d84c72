"""Password hashing, encryption of secrets at rest, and random tokens."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from werkzeug.security import check_password_hash, generate_password_hash


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with this instance's key."""


# --- administrator passwords -------------------------------------------------

MIN_PASSWORD_LENGTH = 10


def hash_password(password: str) -> str:
    # scrypt: memory-hard, werkzeug's default; parameters are stored in the hash.
    return generate_password_hash(password, method="scrypt")


def verify_password(stored_hash: str | None, password: str) -> bool:
    if not stored_hash:
        # Same work as a real check, so a missing account is not told apart by timing.
        check_password_hash(_DUMMY_HASH, password)
        return False
    return check_password_hash(stored_hash, password)


_DUMMY_HASH = generate_password_hash("not-a-password", method="scrypt")


def generate_password(length: int = 16) -> str:
    alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


# --- secrets at rest ---------------------------------------------------------

def make_cipher(key_setting: str) -> MultiFernet:
    """Comma-separated Fernet keys: the first encrypts, all decrypt (key rotation)."""
    return MultiFernet([Fernet(k.strip().encode()) for k in key_setting.split(",") if k.strip()])


def _cipher() -> MultiFernet:
    return current_app.extensions["cds_cipher"]


def encrypt(plaintext: str | None) -> str | None:
    if plaintext is None or plaintext == "":
        return None
    return _cipher().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str | None) -> str | None:
    if not ciphertext:
        return None
    try:
        return _cipher().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable("a stored secret cannot be decrypted with this instance's key") from None


def seal(plaintext: str) -> str:
    """A secret a form must send again (e.g. the password typed before an error),
    carried encrypted in the page: never the typed value itself."""
    return _cipher().encrypt(plaintext.encode()).decode()


def unseal(sealed: str | None, max_age_seconds: int = 3600) -> str | None:
    """The secret ``seal`` wrapped, if it is this instance's and recent; else None."""
    if not sealed:
        return None
    try:
        return _cipher().decrypt(sealed.encode(), ttl=max_age_seconds).decode()
    except (InvalidToken, ValueError):
        return None


def encrypt_secrets(values: dict[str, str | None], cipher: MultiFernet | None = None) -> str | None:
    """A user's secrets as one encrypted JSON object (only those set), or None if none is."""
    present = {name: value for name, value in values.items() if value}
    if not present:
        return None
    plain = json.dumps(present, sort_keys=True, separators=(",", ":")).encode()
    return (cipher or _cipher()).encrypt(plain).decode()


def decrypt_secrets(ciphertext: str | None, cipher: MultiFernet | None = None) -> dict[str, str]:
    """The secrets in an ``encrypt_secrets`` value ({} for None)."""
    if not ciphertext:
        return {}
    try:
        values = json.loads((cipher or _cipher()).decrypt(ciphertext.encode()))
    except (InvalidToken, ValueError):
        raise SecretUnreadable("the stored secrets cannot be decrypted with this instance's key") from None
    if not isinstance(values, dict):
        raise SecretUnreadable("the stored secrets are not in the expected form")
    return values


# --- tokens ------------------------------------------------------------------

def new_token() -> str:
    """256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    # Tokens carry 256 bits of entropy, so a plain SHA-256 is enough to store them.
    return hashlib.sha256(token.encode()).hexdigest()


def token_ref(token: str) -> str:
    """What logs may show of a token: a short prefix of its hash."""
    return token_hash(token)[:10]


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
