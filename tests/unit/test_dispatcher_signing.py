"""Signing what the dispatcher sends, checked by the independent ``standardwebhooks``
package and by published vectors; and the verification helper for Python receivers."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from hookbus_dispatcher.signing import SIGNED, Signer, sign_plain
from hookbus_dispatcher.verify import InvalidSignature, decode_secret, sign, verify

# The Standard Webhooks spec libraries' own sign test (TESTING.md "Public test vectors").
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OTHER = "whsec_" + "c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="


def test_sign_matches_the_published_vector() -> None:
    assert sign(decode_secret(VECTOR_SECRET), VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG


def test_standard_headers_verify_with_the_reference_library_for_each_secret() -> None:
    signer = Signer(keys=(decode_secret(OTHER), decode_secret(VECTOR_SECRET)))
    now = int(time.time())
    before = SIGNED.labels("standard")._value.get()
    headers = signer.headers("dlv_abc", now, VECTOR_BODY)
    assert SIGNED.labels("standard")._value.get() == before + 1
    assert headers["webhook-id"] == "dlv_abc"
    assert headers["webhook-timestamp"] == str(now)
    assert len(headers["webhook-signature"].split(" ")) == 2
    # A receiver holding either secret (old or new, mid-rotation) accepts it.
    for secret in (VECTOR_SECRET, OTHER):
        Webhook(secret).verify(VECTOR_BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "d3Jvbmc=").verify(VECTOR_BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(VECTOR_SECRET).verify(VECTOR_BODY + b" ", headers)


def test_plain_signs_timestamp_dot_body_in_hex_under_its_headers() -> None:
    signer = Signer(
        scheme="plain", keys=(b"k1", b"k2"), signature_header="x-sig", timestamp_header="x-ts"
    )
    headers = signer.headers("dlv_abc", 1700000000, b'{"a":1}')
    expected = [
        hmac.new(k, b'1700000000.{"a":1}', hashlib.sha256).hexdigest() for k in (b"k1", b"k2")
    ]
    assert headers == {"x-ts": "1700000000", "x-sig": ",".join(expected)}
    assert sign_plain(b"k1", 1700000000, b'{"a":1}') == expected[0]


def test_a_signer_never_shows_its_keys() -> None:
    signer = Signer(keys=(b"very-secret-key",))
    assert "very-secret-key" not in repr(signer)


# ------------------------------------------------------------------ verify()


def _signed(secret: str, ts: int, body: bytes, msg_id: str = "dlv_1") -> dict[str, str]:
    return Signer(keys=(decode_secret(secret),)).headers(msg_id, ts, body)


def test_verify_accepts_the_published_vector_and_returns_the_message_id() -> None:
    headers = {
        "Webhook-Id": VECTOR_ID,
        "Webhook-Timestamp": str(VECTOR_TS),
        "Webhook-Signature": "v1,bm90LWl0 " + VECTOR_SIG,
    }
    assert verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS + 10) == VECTOR_ID


def test_verify_accepts_what_the_reference_library_signs() -> None:
    wh = Webhook(VECTOR_SECRET)
    from datetime import UTC, datetime

    ts = datetime.fromtimestamp(1700000000, tz=UTC)
    headers = {
        "webhook-id": "msg_x",
        "webhook-timestamp": "1700000000",
        "webhook-signature": wh.sign("msg_x", ts, VECTOR_BODY.decode()),
    }
    assert verify(VECTOR_SECRET, headers, VECTOR_BODY, now=1700000001) == "msg_x"


@pytest.mark.parametrize(
    ("secret", "body", "now"),
    [
        (OTHER, VECTOR_BODY, 1700000000),  # another secret
        (VECTOR_SECRET, VECTOR_BODY + b"\n", 1700000000),  # body changed
        (VECTOR_SECRET, VECTOR_BODY, 1700000000 + 301),  # too old
        (VECTOR_SECRET, VECTOR_BODY, 1700000000 - 301),  # too new
    ],
)
def test_verify_refuses(secret: str, body: bytes, now: int) -> None:
    headers = _signed(VECTOR_SECRET, 1700000000, VECTOR_BODY)
    with pytest.raises(InvalidSignature):
        verify(secret, headers, body, now=now)


def test_verify_refuses_missing_or_malformed_headers() -> None:
    headers = _signed(VECTOR_SECRET, 1700000000, VECTOR_BODY)
    for name in headers:
        partial = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(InvalidSignature, match=name):
            verify(VECTOR_SECRET, partial, VECTOR_BODY, now=1700000000)
    with pytest.raises(InvalidSignature):
        verify(
            VECTOR_SECRET,
            {**headers, "webhook-timestamp": "-1700000000"},
            VECTOR_BODY,
            now=1700000000,
        )


def test_verify_takes_a_wider_tolerance_when_asked() -> None:
    headers = _signed(VECTOR_SECRET, 1700000000, VECTOR_BODY)
    assert verify(VECTOR_SECRET, headers, VECTOR_BODY, tolerance=900, now=1700000600) == "dlv_1"


def test_decode_secret_refuses_what_is_not_base64() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        decode_secret("whsec_not base64!")
    with pytest.raises(ValueError, match="whsec_"):
        decode_secret("whsec_")
