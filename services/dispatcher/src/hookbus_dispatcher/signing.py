"""Signing what the dispatcher sends to an endpoint: Standard Webhooks, or the plain scheme.

``standard`` (https://www.standardwebhooks.com): ``webhook-id`` (the delivery id, the same
on every attempt), ``webhook-timestamp`` (seconds, when the attempt is made) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one per
active secret, separated by spaces, so a receiver holding either secret accepts the
request while secrets rotate.

``plain`` (the scheme of Rust's webhook-dispatcher and many home-grown receivers): a
timestamp header and a signature header holding the lowercase hex HMAC-SHA256 of
``"{timestamp}.{body}"`` (one per secret, separated by commas); the key is the secret's
text as given.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final, Literal

import msgspec
from prometheus_client import Counter

from .verify import sign as sign_standard

Scheme = Literal["standard", "plain"]

SIGNED: Final = Counter(
    "hookbus_deliveries_signed_total", "Delivery attempts sent signed, by scheme", ["scheme"]
)


def sign_plain(key: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


class Signer(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint's signing: its scheme, its keys (decoded), and the plain scheme's headers."""

    scheme: Scheme = "standard"
    keys: tuple[bytes, ...]
    signature_header: str = "x-webhook-signature"
    timestamp_header: str = "x-webhook-timestamp"

    def __repr__(self) -> str:  # keys must never reach a log through a repr
        return f"Signer(scheme={self.scheme!r}, keys=<{len(self.keys)} redacted>)"

    def headers(self, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The headers that sign ``body`` as message ``message_id`` at ``timestamp``."""
        SIGNED.labels(self.scheme).inc()
        if self.scheme == "plain":
            signatures = ",".join(sign_plain(k, timestamp, body) for k in self.keys)
            return {self.timestamp_header: str(timestamp), self.signature_header: signatures}
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(
                sign_standard(k, message_id, timestamp, body) for k in self.keys
            ),
        }
