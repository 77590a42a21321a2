"""Secrets encrypted at rest: AES-256-GCM (the ``cryptography`` package) under a key ring
the operator provides.

The ring comes from ``HOOKBUS_SECRETS_KEY`` (one key, or several separated by commas or
spaces) or ``HOOKBUS_SECRETS_KEY_FILE`` (a file with one key a line; ``#`` starts a
comment). A key is 32 random bytes in base64 (``openssl rand -base64 32``). The first key
seals; every key opens. A sealed secret carries the id of its key (derived from the key,
so nothing has to be named), which is how a key is rotated: list the new key first and
the old one after it, seal again what the old one sealed, then drop the old one.

Each sealed secret is bound to its place (``context``, e.g. the row it lives in): moved to
another row it no longer opens. Errors name the setting and the key id, never a key or a
secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import ConfigError

KEY_ENV: Final = "HOOKBUS_SECRETS_KEY"
KEY_FILE_ENV: Final = "HOOKBUS_SECRETS_KEY_FILE"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
MAKE_ONE: Final = "make one with `openssl rand -base64 32`"
_SPLIT = re.compile(r"[\s,]+")


class SealingError(ConfigError):
    """A secret cannot be sealed or opened with the keys given; the message names the
    setting (never a key or a secret)."""


class Sealed(NamedTuple):
    """A sealed secret as stored: the id of the key it is sealed under, and the nonce and
    ciphertext (with its tag) in base64."""

    key_id: str
    text: str


def key_id(key: bytes) -> str:
    """A key's id: a digest of the key, safe to store and to show."""
    return hashlib.sha256(b"hookbus secrets key id\x00" + key).hexdigest()[:16]


def new_key() -> str:
    """A new key, as the settings take it."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def parse_key(text: str, where: str) -> bytes:
    """A key from its base64 (standard or URL-safe); ``SealingError`` naming ``where``."""
    raw = text.strip()
    try:
        key = base64.b64decode(raw.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SealingError(f"{where}: not a key ({KEY_BYTES} random bytes in base64; {MAKE_ONE})")
    return key


class Keyring:
    """The keys secrets are sealed and opened with: the first seals, every one opens.
    ``source`` names the setting they came from, for errors."""

    def __init__(self, keys: Sequence[bytes], source: str = KEY_ENV) -> None:
        if not keys:
            raise SealingError(f"{source}: no key given ({MAKE_ONE})")
        self.source = source
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self.current = key_id(keys[0])

    def __repr__(self) -> str:  # never a key
        return f"Keyring(source={self.source!r}, current={self.current!r}, ids={self.ids!r})"

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def seal(self, plaintext: str, context: str) -> Sealed:
        nonce = secrets.token_bytes(NONCE_BYTES)
        box = self._keys[self.current].encrypt(nonce, plaintext.encode(), context.encode())
        return Sealed(self.current, base64.b64encode(nonce + box).decode())

    def open(self, sealed: Sealed, context: str) -> str:
        aead = self._keys.get(sealed.key_id)
        if aead is None:
            raise SealingError(
                f"{self.source}: a secret is sealed under key {sealed.key_id}, which is not"
                f" among the keys given (ids {', '.join(self.ids)}); give that key too"
                " (while rotating, list the new key first and the old ones after it)"
            )
        try:
            raw = base64.b64decode(sealed.text, validate=True)
            plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
            return plain.decode()
        except (binascii.Error, ValueError, InvalidTag, UnicodeDecodeError):
            raise SealingError(
                f"a secret sealed under key {sealed.key_id} ({self.source}) does not open:"
                " it was altered or moved where it is stored"
            ) from None


def load(env: Mapping[str, str] | None = None) -> Keyring | None:
    """The key ring the environment sets, or ``None`` when it sets none."""
    env = os.environ if env is None else env
    inline, path = env.get(KEY_ENV, "").strip(), env.get(KEY_FILE_ENV, "").strip()
    if inline and path:
        raise SealingError(f"{KEY_ENV} and {KEY_FILE_ENV} are both set; give one of them")
    if inline:
        texts, source = _SPLIT.split(inline), KEY_ENV
    elif path:
        source = f"{KEY_FILE_ENV} ({path})"
        try:
            lines = Path(path).expanduser().read_text().splitlines()
        except OSError as exc:
            raise SealingError(f"{source}: cannot read the key file: {exc.strerror}") from None
        texts = [t for line in lines for t in _SPLIT.split(line.split("#", 1)[0])]
    else:
        return None
    keys = [parse_key(t, f"{source}: key {i}") for i, t in enumerate(filter(None, texts), 1)]
    return Keyring(keys, source)


def require(env: Mapping[str, str] | None = None) -> Keyring:
    """The key ring the environment sets; ``SealingError`` naming the settings when none."""
    ring = load(env)
    if ring is None:
        raise SealingError(
            f"{KEY_ENV} (or {KEY_FILE_ENV}) is not set: run-time endpoints' signing secrets"
            f" are stored encrypted under it; {MAKE_ONE}, and give the same key to the"
            " dispatcher"
        )
    return ring


def ensure_key_file(path: Path) -> Path:
    """``path`` holding a key, made (readable by its owner only) when it does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(new_key() + "\n")
    return path
