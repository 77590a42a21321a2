"""Checking a hookbus delivery in a Python receiver (Standard Webhooks signatures).

Standard library only, so a receiver can import it from ``hookbus_dispatcher`` or copy
this one file::

    from hookbus_dispatcher.verify import InvalidSignature, verify

    try:
        message_id = verify(os.environ["HOOKBUS_ENDPOINT_SECRET"], request.headers, raw_body)
    except InvalidSignature:
        return 401
    # message_id (webhook-id) is the same on every retry: use it to drop repeats.

``headers`` is any mapping of the request's headers; names are matched without regard to
case. ``body`` must be the raw bytes as received, before any JSON parsing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = ["InvalidSignature", "decode_secret", "sign", "verify"]


class InvalidSignature(Exception):
    """The request is not a delivery signed with this secret, or it is too old or too new."""


def decode_secret(secret: str | bytes) -> bytes:
    """The key of a Standard Webhooks secret: ``whsec_`` followed by base64 (bytes are
    taken as the key itself)."""
    if isinstance(secret, bytes):
        return secret
    text = secret.strip().removeprefix("whsec_")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ValueError("not a Standard Webhooks secret: expected 'whsec_' + base64")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``{id}.{timestamp}.{body}`` (HMAC-SHA256)."""
    content = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key, content, hashlib.sha256)).decode()


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise InvalidSignature(f"missing header {name}")


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> str:
    """Check a delivery's ``webhook-signature``; return its ``webhook-id``.

    Raises :class:`InvalidSignature` when no signature in the header matches, or when
    ``webhook-timestamp`` is more than ``tolerance`` seconds from ``now`` (default: the
    current time) either way, which stops an old request from being replayed.
    """
    key = decode_secret(secret)
    message_id = _header(headers, "webhook-id")
    raw_timestamp = _header(headers, "webhook-timestamp")
    if not raw_timestamp.isascii() or not raw_timestamp.isdigit():
        raise InvalidSignature("webhook-timestamp is not a number of seconds")
    timestamp = int(raw_timestamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise InvalidSignature("webhook-timestamp is outside the tolerance")
    expected = sign(key, message_id, timestamp, body).encode()
    matched = False
    # Several signatures during a secret rotation; compare each in constant time.
    for candidate in _header(headers, "webhook-signature").split():
        matched |= hmac.compare_digest(candidate.encode(), expected)
    if not matched:
        raise InvalidSignature("no signature matches")
    return message_id
