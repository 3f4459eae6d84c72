"""The passphrase container a backup is sealed in: the tar.gz encrypted with
AES-256-GCM, under a key derived from the passphrase with scrypt.

MAGIC, one JSON header line (scrypt parameters, salt, nonce prefix, a check value that
tells a wrong passphrase from a damaged file), then chunks of AES-256-GCM: 4-byte
length + ciphertext. Each chunk's nonce holds its number and a last-chunk flag, and the
header is authenticated with every chunk, so reordering, truncation and tampering are
all detected."""
from __future__ import annotations

import base64
import json
import os
import secrets
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cds.backup.format import (CHUNK, ENCRYPTED_MAGIC, SCRYPT_N, SCRYPT_P, SCRYPT_R, ArchiveInvalid,
                               PassphraseRequired, WrongPassphrase)


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> tuple[bytes, bytes]:
    out = Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(passphrase.encode())
    return out[:32], out[32:]


def _nonce(prefix: bytes, number: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", number) + (b"\x01" if last else b"\x00")


def encrypt_file(source: Path, target: Path, passphrase: str) -> None:
    salt, prefix = secrets.token_bytes(16), secrets.token_bytes(7)
    key, check = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    header = ENCRYPTED_MAGIC + json.dumps({
        "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(), "cipher": "AES-256-GCM", "chunk": CHUNK,
        "nonce_prefix": base64.b64encode(prefix).decode(), "check": check.hex(),
    }).encode() + b"\n"
    aead = AESGCM(key)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
        out.write(header)
        number, block = 0, src.read(CHUNK)
        while True:
            following = src.read(CHUNK)
            sealed = aead.encrypt(_nonce(prefix, number, not following), block, header)
            out.write(struct.pack(">I", len(sealed)) + sealed)
            if not following:
                break
            number, block = number + 1, following


def decrypt_file(source: Path, target: Path, passphrase: str | None) -> None:
    damaged = ArchiveInvalid("The backup archive is damaged or truncated (its encrypted data "
                             "does not verify); nothing was changed.")
    with open(source, "rb") as src:
        src.read(len(ENCRYPTED_MAGIC))
        line = src.readline(4096)
        try:
            params = json.loads(line)
            salt = base64.b64decode(params["salt"])
            prefix = base64.b64decode(params["nonce_prefix"])
            n, r, p, check = int(params["n"]), int(params["r"]), int(params["p"]), params["check"]
        except (ValueError, KeyError, TypeError):
            raise damaged from None
        if not passphrase:
            raise PassphraseRequired("This backup is protected by a passphrase; give it to restore.")
        if n > 2 ** 20 or r > 16 or p > 4:
            raise damaged
        key, expected = _derive(passphrase, salt, n, r, p)
        if not secrets.compare_digest(expected.hex(), check):
            raise WrongPassphrase("The passphrase is wrong for this backup; nothing was changed.")
        header = ENCRYPTED_MAGIC + line
        aead = AESGCM(key)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            number, length = 0, src.read(4)
            if len(length) != 4:
                raise damaged
            while True:
                size = struct.unpack(">I", length)[0]
                if size > CHUNK + 16:
                    raise damaged
                sealed = src.read(size)
                following = src.read(4)
                if len(sealed) != size or len(following) not in (0, 4):
                    raise damaged
                try:
                    out.write(aead.decrypt(_nonce(prefix, number, not following), sealed, header))
                except InvalidTag:
                    raise damaged from None
                if not following:
                    break
                number, length = number + 1, following
