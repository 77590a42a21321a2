"""Unit tests for hookbus_receiver.signatures (pure webhook verification)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jwt
import pytest
import stripe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookbus_receiver.signatures import (
    HMAC_PRESETS,
    REASONS,
    SELFTEST_VECTORS,
    JwtKey,
    VerificationError,
    decode_standard_secret,
    load_jwt_keys,
    selftest,
    sign_github,
    sign_hookdeck,
    sign_standard_webhooks,
    verify_github,
    verify_gitlab_token,
    verify_hmac,
    verify_hookdeck,
    verify_jwt,
    verify_standard_webhooks,
    verify_token,
)

SECRET = b"first-secret-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
OTHER = b"second-secret-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
WRONG = b"wrong-secret-ffffffffffffffffffffffffffffffff"
BODY = b'{"action":"opened","number":42}'
HS_KEY = b"jwt-hs256-secret-0123456789abcdef0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000

GH = SELFTEST_VECTORS["github-sha256"]
SW = SELFTEST_VECTORS["standard-webhooks"]
SW_SECRET = decode_standard_secret(SW["secret"])


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(VerificationError) as info:
        call()
    assert info.value.reason in REASONS
    assert str(info.value) == info.value.reason
    return info.value.reason


def outcome(call: Callable[[], object]) -> str | None:
    """None when ``call`` passed, else the reason; any other exception propagates."""
    try:
        call()
    except VerificationError as exc:
        return exc.reason if str(exc) == exc.reason else f"message differs: {exc}"
    return None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --------------------------------------------------------------------------- GitHub


def test_github_published_vector() -> None:
    secret, body = GH["secret"].encode(), GH["body"].encode()
    assert secret == b"It's a Secret to Everybody"
    assert sign_github(body, secret) == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )
    verify_github({"x-hub-signature-256": GH["signature"]}, body, [secret])


def test_github_uppercase_hex_is_accepted() -> None:
    value = "sha256=" + sign_github(BODY, SECRET).removeprefix("sha256=").upper()
    verify_github({"x-hub-signature-256": value}, BODY, [SECRET])


def test_github_rotation_second_secret_matches() -> None:
    headers = {"x-hub-signature-256": sign_github(BODY, OTHER)}
    verify_github(headers, BODY, [SECRET, OTHER])
    assert reason_of(lambda: verify_github(headers, BODY, [SECRET])) == "bad_signature"


def test_github_tampered_body_and_wrong_secret() -> None:
    headers = {"x-hub-signature-256": sign_github(BODY, SECRET)}
    assert reason_of(lambda: verify_github(headers, BODY + b" ", [SECRET])) == "bad_signature"
    assert reason_of(lambda: verify_github(headers, BODY, [WRONG])) == "bad_signature"


@pytest.mark.parametrize("headers", [{}, {"x-hub-signature-256": ""}, {"x-hub-signature-256": " "}])
def test_github_missing_header(headers: dict[str, str]) -> None:
    assert reason_of(lambda: verify_github(headers, BODY, [SECRET])) == "missing_header"


@pytest.mark.parametrize(
    "value",
    [
        "sha1=" + "a" * 64,  # wrong prefix
        "SHA256=" + "a" * 64,  # prefix is case-sensitive
        "a" * 64,  # no prefix
        "sha256=" + "g" * 64,  # not hex
        "sha256=abcd",  # too short
        "sha256=" + "a" * 66,  # too long
        "sha256=",
        "sha256=" + "a" * 62 + " a",
    ],
)
def test_github_malformed_signature(value: str) -> None:
    headers = {"x-hub-signature-256": value}
    assert reason_of(lambda: verify_github(headers, BODY, [SECRET])) == "malformed_signature"


def test_github_sha1_only_when_allowed() -> None:
    sha1 = "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest()
    headers = {"x-hub-signature": sha1}
    verify_github(headers, BODY, [SECRET], allow_sha1=True)
    assert reason_of(lambda: verify_github(headers, BODY, [SECRET])) == "missing_header"
    bad = {"x-hub-signature": "sha1=" + hmac.new(WRONG, BODY, hashlib.sha1).hexdigest()}
    assert reason_of(lambda: verify_github(bad, BODY, [SECRET], allow_sha1=True)) == "bad_signature"


def test_github_no_downgrade_to_sha1_when_sha256_present() -> None:
    sha1 = "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest()
    headers = {"x-hub-signature": sha1, "x-hub-signature-256": sign_github(BODY, WRONG)}
    call = partial(verify_github, headers, BODY, [SECRET], allow_sha1=True)
    assert reason_of(call) == "bad_signature"


def test_empty_secrets_never_verify() -> None:
    headers = {"x-hub-signature-256": sign_github(BODY, b"")}
    assert reason_of(lambda: verify_github(headers, BODY, [])) == "no_secrets"
    assert reason_of(lambda: verify_github(headers, BODY, [b""])) == "no_secrets"
    assert reason_of(lambda: verify_gitlab_token({"x-gitlab-token": "x"}, [b""])) == "no_secrets"


# --------------------------------------------------------------------------- GitLab


def test_gitlab_token() -> None:
    verify_gitlab_token({"x-gitlab-token": SECRET.decode()}, [SECRET])
    verify_gitlab_token({"x-gitlab-token": OTHER.decode()}, [SECRET, OTHER])
    headers = {"x-gitlab-token": WRONG.decode()}
    assert reason_of(lambda: verify_gitlab_token(headers, [SECRET, OTHER])) == "bad_token"
    prefix = {"x-gitlab-token": SECRET.decode()[:-1]}
    assert reason_of(lambda: verify_gitlab_token(prefix, [SECRET])) == "bad_token"
    assert reason_of(lambda: verify_gitlab_token({}, [SECRET])) == "missing_header"


# --------------------------------------------------------------------------- Standard Webhooks


def sw_headers(
    signature: str, *, msg_id: str = SW["id"], ts: str = SW["timestamp"]
) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": signature}


SW_BODY = SW["body"].encode()
SW_TS = int(SW["timestamp"])


def test_standard_webhooks_published_vector() -> None:
    assert SW_BODY == b'{"test": 2432232314}'
    assert sign_standard_webhooks(SW["id"], SW_TS, SW_BODY, SW_SECRET) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    msg_id = verify_standard_webhooks(sw_headers(SW["signature"]), SW_BODY, [SW_SECRET], now=SW_TS)
    assert msg_id == "msg_p5jXN8AQM9LWM0D4loKWxJek"


def test_decode_standard_secret_prefix_is_optional() -> None:
    bare = SW["secret"].removeprefix("whsec_")
    assert decode_standard_secret(bare) == decode_standard_secret(SW["secret"])
    assert decode_standard_secret(SW["secret"]) == base64.b64decode(bare)


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_not base64!", "whsec_@@@@"])
def test_decode_standard_secret_rejects_garbage_without_echoing(secret: str) -> None:
    with pytest.raises(ValueError, match="Standard Webhooks secret") as info:
        decode_standard_secret(secret)
    if secret.removeprefix("whsec_"):
        assert secret.removeprefix("whsec_") not in str(info.value)


def test_standard_webhooks_junk_entries_next_to_valid_one() -> None:
    signature = " ".join(
        [
            "v1a,abc",
            "v2,Zm9v",
            "v1,!!!notbase64!!!",
            "junk",
            "v1,",
            "v1," + b64(b"x" * 32),
            SW["signature"],
            "v0,trailing",
        ]
    )
    verify_standard_webhooks(sw_headers(signature), SW_BODY, [SW_SECRET], now=SW_TS)


def test_standard_webhooks_only_junk_is_malformed() -> None:
    headers = sw_headers("v1a,abc v2,Zm9v v1,@@@ v1," + b64(b"short"))
    call = partial(verify_standard_webhooks, headers, SW_BODY, [SW_SECRET], now=SW_TS)
    assert reason_of(call) == "malformed_signature"


@pytest.mark.parametrize("version", ["v2", "v1a", "V1", "v0"])
def test_standard_webhooks_other_versions_are_not_v1(version: str) -> None:
    good = SW["signature"].removeprefix("v1,")
    headers = sw_headers(f"{version},{good}")
    call = partial(verify_standard_webhooks, headers, SW_BODY, [SW_SECRET], now=SW_TS)
    assert reason_of(call) == "malformed_signature"


def test_standard_webhooks_rotation_second_secret_matches() -> None:
    sig = sign_standard_webhooks("msg_1", NOW, BODY, OTHER)
    headers = sw_headers(sig, msg_id="msg_1", ts=str(NOW))
    assert verify_standard_webhooks(headers, BODY, [SECRET, OTHER], now=NOW) == "msg_1"
    call = partial(verify_standard_webhooks, headers, BODY, [SECRET], now=NOW)
    assert reason_of(call) == "bad_signature"


def test_standard_webhooks_tampering() -> None:
    sig = SW["signature"]
    tampered_body = partial(
        verify_standard_webhooks, sw_headers(sig), SW_BODY + b" ", [SW_SECRET], now=SW_TS
    )
    tampered_id = partial(
        verify_standard_webhooks,
        sw_headers(sig, msg_id="msg_other"),
        SW_BODY,
        [SW_SECRET],
        now=SW_TS,
    )
    tampered_ts = partial(
        verify_standard_webhooks,
        sw_headers(sig, ts=str(SW_TS + 1)),
        SW_BODY,
        [SW_SECRET],
        now=SW_TS,
    )
    wrong_secret = partial(verify_standard_webhooks, sw_headers(sig), SW_BODY, [WRONG], now=SW_TS)
    for call in (tampered_body, tampered_id, tampered_ts, wrong_secret):
        assert reason_of(call) == "bad_signature"


@pytest.mark.parametrize(
    ("offset", "tolerance", "ok"),
    [
        (0, 300, True),
        (300, 300, True),
        (-300, 300, True),
        (301, 300, False),
        (-301, 300, False),
        (3600, 300, False),
        (3600, 3600, True),
    ],
)
def test_standard_webhooks_timestamp_tolerance(offset: int, tolerance: float, ok: bool) -> None:
    def call() -> str:
        return verify_standard_webhooks(
            sw_headers(SW["signature"]),
            SW_BODY,
            [SW_SECRET],
            now=SW_TS + offset,
            tolerance=tolerance,
        )

    if ok:
        assert call() == SW["id"]
    else:
        assert reason_of(call) == "stale_timestamp"


@pytest.mark.parametrize(
    "ts",
    [
        "abc",
        "1614265330.0",
        "-1614265330",
        "+1614265330",
        "1_614_265_330",
        "١٦١٤٢٦٥٣٣٠",
        "0x60376e72",
        "9" * 40,
    ],
)
def test_standard_webhooks_malformed_timestamp(ts: str) -> None:
    headers = sw_headers(SW["signature"], ts=ts)
    call = partial(verify_standard_webhooks, headers, SW_BODY, [SW_SECRET], now=SW_TS)
    assert reason_of(call) == "malformed_timestamp"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_webhooks_missing_header(missing: str) -> None:
    headers = sw_headers(SW["signature"])
    del headers[missing]
    call = partial(verify_standard_webhooks, headers, SW_BODY, [SW_SECRET], now=SW_TS)
    assert reason_of(call) == "missing_header"


def test_standard_webhooks_custom_header_names() -> None:
    headers = {
        "svix-id": SW["id"],
        "svix-timestamp": SW["timestamp"],
        "svix-signature": SW["signature"],
    }
    msg_id = verify_standard_webhooks(
        headers,
        SW_BODY,
        [SW_SECRET],
        now=SW_TS,
        id_header="Svix-Id",
        timestamp_header="svix-timestamp",
        signature_header="svix-signature",
    )
    assert msg_id == SW["id"]


# --------------------------------------------------------------------------- Hookdeck


def test_hookdeck_matches_independent_stdlib_and_verifies() -> None:
    expected = base64.b64encode(hmac.new(SECRET, BODY, hashlib.sha256).digest()).decode()
    assert sign_hookdeck(BODY, SECRET) == expected
    verify_hookdeck({"x-hookdeck-signature": expected}, BODY, [SECRET])


def test_hookdeck_rotation_header_two() -> None:
    old, new = sign_hookdeck(BODY, OTHER), sign_hookdeck(BODY, SECRET)
    verify_hookdeck({"x-hookdeck-signature": old, "x-hookdeck-signature-2": new}, BODY, [SECRET])
    verify_hookdeck({"x-hookdeck-signature-2": new}, BODY, [SECRET])
    verify_hookdeck(
        {"x-hookdeck-signature": "junk!!", "x-hookdeck-signature-2": new}, BODY, [SECRET]
    )
    verify_hookdeck({"x-hookdeck-signature": old}, BODY, [SECRET, OTHER])


def test_hookdeck_failures() -> None:
    good = sign_hookdeck(BODY, SECRET)
    assert reason_of(lambda: verify_hookdeck({}, BODY, [SECRET])) == "missing_header"
    assert (
        reason_of(lambda: verify_hookdeck({"x-hookdeck-signature": good}, BODY + b"x", [SECRET]))
        == "bad_signature"
    )
    assert (
        reason_of(lambda: verify_hookdeck({"x-hookdeck-signature": good}, BODY, [WRONG, OTHER]))
        == "bad_signature"
    )
    for junk in ("%%%notbase64", b64(b"too-short"), "abc", good + "AAAA"):
        headers = {"x-hookdeck-signature": junk}
        assert reason_of(partial(verify_hookdeck, headers, BODY, [SECRET])) == "malformed_signature"


# --------------------------------------------------------------------------- generic HMAC


def test_hmac_hex_with_prefix() -> None:
    digest = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    verify_hmac({"x-sig": "sha256=" + digest}, BODY, [SECRET], header="X-Sig", prefix="sha256=")
    verify_hmac(
        {"x-sig": "sha256=" + digest.upper()}, BODY, [SECRET], header="x-sig", prefix="sha256="
    )
    verify_hmac({"x-sig": digest}, BODY, [WRONG, SECRET], header="x-sig")


@pytest.mark.parametrize(
    "value",
    ["sha1=" + "a" * 64, "a" * 64, "sha256=" + "z" * 64, "sha256=" + "a" * 40, "sha256="],
)
def test_hmac_wrong_prefix_or_malformed_hex(value: str) -> None:
    headers = {"x-sig": value}
    call = partial(verify_hmac, headers, BODY, [SECRET], header="x-sig", prefix="sha256=")
    assert reason_of(call) == "malformed_signature"


def test_hmac_sha1_and_tampering() -> None:
    value = hmac.new(SECRET, BODY, hashlib.sha1).hexdigest()
    verify_hmac({"x-sig": value}, BODY, [SECRET], header="x-sig", algorithm="sha1")
    call = partial(
        verify_hmac, {"x-sig": value}, BODY + b"!", [SECRET], header="x-sig", algorithm="sha1"
    )
    assert reason_of(call) == "bad_signature"
    missing = partial(verify_hmac, {}, BODY, [SECRET], header="x-sig")
    assert reason_of(missing) == "missing_header"


def _sha512_ts(secret: bytes, ts: int, body: bytes, sep: bytes = b":") -> str:
    return b64(hmac.new(secret, str(ts).encode() + sep + body, hashlib.sha512).digest())


def _verify_ts(
    headers: dict[str, str], body: bytes = BODY, now: float | None = NOW, **kw: Any
) -> None:
    verify_hmac(
        headers,
        body,
        [SECRET, OTHER],
        header="x-sig",
        algorithm="sha512",
        encoding="base64",
        signed="timestamp+body",
        timestamp_header="x-ts",
        separator=":",
        now=now,
        **kw,
    )


def test_hmac_base64_sha512_timestamped() -> None:
    _verify_ts({"x-sig": _sha512_ts(SECRET, NOW, BODY), "x-ts": str(NOW)})
    _verify_ts({"x-sig": _sha512_ts(OTHER, NOW, BODY), "x-ts": str(NOW)})  # rotation
    unpadded = _sha512_ts(SECRET, NOW, BODY).rstrip("=")
    _verify_ts({"x-sig": unpadded, "x-ts": str(NOW)})


def test_hmac_timestamped_failures() -> None:
    good = _sha512_ts(SECRET, NOW, BODY)
    assert reason_of(lambda: _verify_ts({"x-sig": good, "x-ts": str(NOW)}, now=NOW + 301)) == (
        "stale_timestamp"
    )
    assert reason_of(lambda: _verify_ts({"x-sig": good, "x-ts": "soon"})) == "malformed_timestamp"
    assert reason_of(lambda: _verify_ts({"x-sig": good})) == "missing_header"
    assert reason_of(lambda: _verify_ts({"x-sig": good, "x-ts": str(NOW + 1)})) == "bad_signature"
    assert reason_of(lambda: _verify_ts({"x-sig": good, "x-ts": str(NOW)}, BODY + b".")) == (
        "bad_signature"
    )
    dot = _sha512_ts(SECRET, NOW, BODY, sep=b".")
    assert reason_of(lambda: _verify_ts({"x-sig": dot, "x-ts": str(NOW)})) == "bad_signature"
    for junk in ("***", b64(b"x" * 32), "a" * 128):
        headers = {"x-sig": junk, "x-ts": str(NOW)}
        assert reason_of(partial(_verify_ts, headers)) == "malformed_signature"


def test_hmac_timestamp_defaults_to_current_time() -> None:
    ts = int(time.time())
    _verify_ts({"x-sig": _sha512_ts(SECRET, ts, BODY), "x-ts": str(ts)}, now=None)
    old = ts - 10_000
    headers = {"x-sig": _sha512_ts(SECRET, old, BODY), "x-ts": str(old)}
    assert reason_of(lambda: _verify_ts(headers, now=None)) == "stale_timestamp"


def test_hmac_timestamp_mode_requires_timestamp_header() -> None:
    with pytest.raises(ValueError, match="timestamp_header"):
        verify_hmac({"x-sig": "00"}, BODY, [SECRET], header="x-sig", signed="timestamp+body")


# --------------------------------------------------------------- fields layout: Stripe, Convoy

STRIPE_SECRET = "whsec_test_0123456789abcdefghijklmnopqrstuv"  # used whole, as Stripe does
STRIPE_OLD = "whsec_test_rotated_out_9876543210zyxwvutsrq"


def verify_stripe(
    value: str, body: bytes = BODY, secrets: tuple[str, ...] = (STRIPE_SECRET,), **kw: Any
) -> None:
    keys = [s.encode() for s in secrets]
    verify_hmac({"stripe-signature": value}, body, keys, **HMAC_PRESETS["stripe"], **kw)


def stripe_header(body: bytes, secret: str, ts: int) -> str:
    """The header as Stripe's own library builds it (its documented helper for tests)."""
    return stripe.WebhookSignature.generate_signature_header(body.decode(), secret, ts)


def stripe_accepts(value: str, body: bytes, secret: str) -> bool:
    """Stripe's own verification, at the current time, with its default tolerance."""
    try:
        stripe.WebhookSignature.verify_header(body, value, secret, stripe.Webhook.DEFAULT_TOLERANCE)
    except stripe.SignatureVerificationError:
        return False
    return True


def test_stripe_preset_is_stripes_documented_scheme() -> None:
    assert HMAC_PRESETS["stripe"] == {
        "header": "stripe-signature", "format": "fields", "algorithm": "sha256",
        "encoding": "hex", "prefix": "", "signed": "timestamp+body", "timestamp_header": None,
        "separator": ".", "timestamp_field": "t", "signature_field": "v1",
    }  # fmt: skip


def test_stripe_headers_from_stripes_library_verify() -> None:
    value = stripe_header(BODY, STRIPE_SECRET, NOW)
    assert value.startswith(f"t={NOW},v1=")
    verify_stripe(value, now=NOW)
    verify_stripe(value, now=NOW + 300)  # Stripe's tolerance, to the second
    verify_stripe(value, secrets=(STRIPE_OLD, STRIPE_SECRET), now=NOW)  # rotation, our side
    assert reason_of(lambda: verify_stripe(value, now=NOW + 301)) == "stale_timestamp"
    assert reason_of(lambda: verify_stripe(value, BODY + b" ", now=NOW)) == "bad_signature"
    wrong = partial(verify_stripe, value, secrets=(STRIPE_OLD,), now=NOW)
    assert reason_of(wrong) == "bad_signature"
    # The secret is the whole whsec_… string, not base64 to decode (unlike Standard Webhooks).
    without_prefix = partial(verify_stripe, value, secrets=(STRIPE_SECRET[6:],), now=NOW)
    assert reason_of(without_prefix) == "bad_signature"


def stripe_cases(body: bytes, ts: int) -> list[tuple[str, str, bytes, str | None]]:
    """(case, header, body, our reason or None) over the scheme Stripe documents."""
    good = stripe_header(body, STRIPE_SECRET, ts)
    sig = good.split("v1=")[1]
    old = stripe_header(body, STRIPE_OLD, ts).split("v1=")[1]
    other = hmac.new(b"x", b"y", hashlib.sha256).hexdigest()
    return [
        ("as Stripe sends it", good, body, None),
        ("rolling secret: a v1 per secret, old first", f"t={ts},v1={old},v1={sig}", body, None),
        ("rolling secret: new first", f"t={ts},v1={sig},v1={old}", body, None),
        ("a test-mode v0 beside the v1", f"{good},v0={other}", body, None),
        ("only v0, though it matches", f"t={ts},v0={sig}", body, "malformed_signature"),
        ("v1 signed with another secret", f"t={ts},v1={old}", body, "bad_signature"),
        ("body tampered", good, body + b" ", "bad_signature"),
        ("timestamp changed", f"t={ts - 1},v1={sig}", body, "bad_signature"),
        ("no timestamp", f"v1={sig}", body, "malformed_signature"),
        ("stale", stripe_header(body, STRIPE_SECRET, ts - 400), body, "stale_timestamp"),
        ("truncated signature", f"t={ts},v1={sig[:-2]}", body, "malformed_signature"),
        ("body signed without the timestamp", f"t={ts},v1={hmac.new(STRIPE_SECRET.encode(), body, hashlib.sha256).hexdigest()}", body, "bad_signature"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", [c[0] for c in stripe_cases(BODY, NOW)])
def test_stripe_scheme_agrees_with_stripes_own_verification(case: str) -> None:
    # Real time: Stripe's library checks the timestamp against its own clock.
    ts = int(time.time())
    _, value, body, reason = next(c for c in stripe_cases(BODY, ts) if c[0] == case)

    ours = outcome(lambda: verify_stripe(value, body, now=ts))

    assert ours == reason
    assert stripe_accepts(value, body, STRIPE_SECRET) is (reason is None)


def test_stripe_timestamp_from_the_future_is_refused_too() -> None:
    # Stripe's library only refuses old timestamps; like Standard Webhooks, we refuse
    # both ways, so a signature made ahead of time cannot be used later.
    value = stripe_header(BODY, STRIPE_SECRET, NOW + 301)
    assert reason_of(lambda: verify_stripe(value, now=NOW)) == "stale_timestamp"
    verify_stripe(value, now=NOW, tolerance=400)


@pytest.mark.parametrize(
    "value",
    [
        f"t={NOW},t={NOW},v1=" + "a" * 64,  # two timestamps: which one was signed?
        "v1=" + "a" * 64,
        f"t={NOW}",
        f"t={NOW},v1=",
        f"t={NOW},v1=" + "z" * 64,
        f"t={NOW},v1=" + "a" * 63,
        f"t={NOW},V1=" + "a" * 64,  # field names are exact
        f"t={NOW};v1=" + "a" * 64,
        "sha256=" + "a" * 64,
        ",,,",
    ],
)
def test_fields_layout_malformed(value: str) -> None:
    assert reason_of(lambda: verify_stripe(value, now=NOW)) == "malformed_signature"


@pytest.mark.parametrize("ts", ["soon", "-5", "1e9", "Infinity", "", "17000000000000000"])
def test_fields_layout_malformed_timestamp(ts: str) -> None:
    value = f"t={ts},v1=" + "a" * 64
    assert reason_of(lambda: verify_stripe(value, now=NOW)) == "malformed_timestamp"


def test_fields_layout_whitespace_and_junk_fields() -> None:
    sig = stripe_header(BODY, STRIPE_SECRET, NOW).split("v1=")[1]
    verify_stripe(f" t = {NOW} , junk, v1=zz , v1 = {sig.upper()} ,", now=NOW)
    assert reason_of(lambda: verify_stripe("", now=NOW)) == "missing_header"
    assert reason_of(lambda: verify_stripe("t=1", secrets=("",), now=NOW)) == "no_secrets"


# Convoy's published signature test vectors (its pkg/signature test data): "advanced"
# signatures sign "<t>,<body>"; the hash and encoding are project settings.
CONVOY_SECRET = b"convoy-webhook-secret"
CONVOY_BODY = b'{"event":"charge.success","amount":1000,"currency":"NGN"}'
CONVOY_SIG = "77b8b9269f25a199846a55a2bd25b3fba151c70fdae60bb1dcd87fbbc943c55c"
CONVOY_VECTORS = [
    ("sha256", "hex", f"t=1700000000,v1={CONVOY_SIG}", 3153600000, None),
    ("sha256", "base64", "t=1700000000,v1=d7i5Jp8loZmEalWivSWz+6FRxw/a5gux3Nh/u8lDxVw=", 3153600000, None),
    ("sha512", "hex", "t=1700000000,v1=b2122e252cd2582cf225cb2b8d4ceede9e34329e2fe95c02619c3ed5d4a3d9a73e6beaf2dff8e76d71a693ae198cee40685eed12ad4ee2e033dc2d0399ede057", 3153600000, None),
    ("sha512", "base64", "t=1700000000,v1=shIuJSzSWCzyJcsrjUzu3p40Mp4v6VwCYZw+1dSj2ac+a+ry3/jnbXGmk64ZjO5AaF7tEq1O4uAz3C0Dme3gVw==", 3153600000, None),
    ("sha256", "hex", "t=1700000000,v1=77b8b9269f25a199846a55a2bd25b3fba151c70fdae60bb1dcd87fbbc943c550", 3153600000, "bad_signature"),
    ("sha256", "hex", f"t=1700000000,v1={CONVOY_SIG}", 300, "stale_timestamp"),
    ("sha256", "hex", f"v1={CONVOY_SIG},t=1700000000", 3153600000, None),
    ("sha256", "hex", f"t=1700000000,v1=449623e4897bbde05e35358293f97b8c2f697367ffa3e7466e98178dfba44d19,v1={CONVOY_SIG}", 3153600000, None),
    ("sha256", "hex", "t=1700000000,v1=449623e4897bbde05e35358293f97b8c2f697367ffa3e7466e98178dfba44d19,v1=c7eff1833c41a2ce2e195599451b240cd282b1bc9fa387e428a9fd5a5dc74933", 3153600000, "bad_signature"),
    ("sha256", "hex", f"t=Infinity,v1={CONVOY_SIG}", 3153600000, "malformed_timestamp"),
    ("sha256", "hex", "t=1700000000,v1=1234567890", 3153600000, "malformed_signature"),
    ("sha256", "hex", f"v1={CONVOY_SIG},v2={CONVOY_SIG}", 3153600000, "malformed_signature"),
]  # fmt: skip


@pytest.mark.parametrize(("algorithm", "encoding", "value", "tolerance", "reason"), CONVOY_VECTORS)
def test_convoy_published_vectors(
    algorithm: str, encoding: str, value: str, tolerance: int, reason: str | None
) -> None:
    def check() -> None:
        verify_hmac(
            {"x-convoy-signature": value}, CONVOY_BODY, [b"other", CONVOY_SECRET],
            header="X-Convoy-Signature", format="fields", algorithm=algorithm,
            encoding=encoding, separator=",", tolerance=tolerance, now=1_700_000_000 + 400,
        )  # fmt: skip

    assert outcome(check) == reason


def test_fields_layout_with_other_field_names() -> None:
    digest = hmac.new(SECRET, f"{NOW}:".encode() + BODY, hashlib.sha512).digest()
    value = f"ts={NOW},sig={b64(digest)},t=junk"
    verify_hmac(
        {"x-sig": value}, BODY, [SECRET], header="x-sig", format="fields", algorithm="sha512",
        encoding="base64", separator=":", timestamp_field="ts", signature_field="sig", now=NOW,
    )  # fmt: skip
    call = partial(verify_hmac, {"x-sig": value}, BODY, [SECRET], header="x-sig", format="fields")
    assert reason_of(call) == "malformed_signature"  # t=junk, and no v1 field


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"prefix": "v1="}, "prefix"),
        ({"timestamp_header": "x-ts"}, "timestamp_header"),
        ({"timestamp_field": "v1"}, "different"),
        ({"signature_field": ""}, "different"),
    ],
)
def test_fields_layout_refuses_options_it_does_not_use(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        verify_hmac({"x-sig": "t=1,v1=00"}, BODY, [SECRET], header="x-sig", format="fields", **kw)


# --------------------------------------------------------------------------- static tokens


def test_bearer_token() -> None:
    verify_token({"authorization": "Bearer " + SECRET.decode()}, [SECRET], mode="bearer")
    verify_token({"authorization": "bearer  " + OTHER.decode()}, [SECRET, OTHER], mode="bearer")
    wrong = {"authorization": "Bearer " + WRONG.decode()}
    assert reason_of(lambda: verify_token(wrong, [SECRET], mode="bearer")) == "bad_token"
    basic = {"authorization": "Basic " + SECRET.decode()}
    assert reason_of(lambda: verify_token(basic, [SECRET], mode="bearer")) == "malformed_token"
    bare = {"authorization": SECRET.decode()}
    assert reason_of(lambda: verify_token(bare, [SECRET], mode="bearer")) == "malformed_token"
    assert reason_of(lambda: verify_token({}, [SECRET], mode="bearer")) == "missing_header"


def test_basic_token() -> None:
    creds = b"hook-user:" + SECRET
    verify_token({"authorization": "Basic " + b64(creds)}, [b"x:y", creds], mode="basic")
    wrong = {"authorization": "Basic " + b64(b"hook-user:" + WRONG)}
    assert reason_of(lambda: verify_token(wrong, [creds], mode="basic")) == "bad_token"
    for junk in ("Basic %%%", "Basic " + b64(b"no-colon-here"), "Bearer " + b64(creds)):
        headers = {"authorization": junk}
        assert reason_of(partial(verify_token, headers, [creds], mode="basic")) == (
            "malformed_token"
        )


def test_header_token() -> None:
    verify_token({"x-api-key": SECRET.decode()}, [SECRET], mode="header", header_name="X-Api-Key")
    wrong = {"x-api-key": WRONG.decode()}
    call = partial(verify_token, wrong, [SECRET], mode="header", header_name="x-api-key")
    assert reason_of(call) == "bad_token"
    missing = partial(verify_token, {}, [SECRET], mode="header", header_name="x-api-key")
    assert reason_of(missing) == "missing_header"
    with pytest.raises(ValueError, match="header_name"):
        verify_token({}, [SECRET], mode="header")


# --------------------------------------------------------------------------- JWT


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return RSA_KEY


@pytest.fixture(scope="module")
def rsa_key_2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return EC_KEY


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


CLAIMS: dict[str, Any] = {
    "iss": "https://issuer.example",
    "aud": "hookbus",
    "sub": "ci-bot",
    "exp": NOW + 600,
    "nbf": NOW - 10,
    "iat": NOW - 10,
    "repo": "org/app",
}
HS_KEYS = [JwtKey(kid=None, key=HS_KEY)]


def hs_token(claims: dict[str, Any] | None = None, **headers: Any) -> str:
    return jwt.encode(
        CLAIMS if claims is None else claims, HS_KEY, algorithm="HS256", headers=headers or None
    )


def crafted(header: dict[str, Any], payload: bytes, key: bytes = HS_KEY) -> str:
    h, p = b64u(json.dumps(header).encode()), b64u(payload)
    sig = hmac.new(key, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64u(sig)}"


def test_jwt_hs256_returns_claims() -> None:
    claims = verify_jwt(
        bearer(hs_token()),
        keys=HS_KEYS,
        issuer=CLAIMS["iss"],
        audience="hookbus",
        subject="ci-bot",
        required_claims={"repo": "org/app", "iat": None},
        now=NOW,
    )
    assert claims == CLAIMS


def test_jwt_rs256_with_pem(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(CLAIMS, rsa_key, algorithm="RS256")
    keys = load_jwt_keys(public_pem(rsa_key))
    assert len(keys) == 1
    assert keys[0].kid is None
    assert verify_jwt(bearer(token), keys=keys, now=NOW)["sub"] == "ci-bot"
    # PEM text straight into JwtKey works as well
    assert verify_jwt(bearer(token), keys=[JwtKey(None, public_pem(rsa_key))], now=NOW) == CLAIMS


def test_jwt_es256_with_key_object(ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = jwt.encode(CLAIMS, ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    keys = [JwtKey(kid="ec-1", key=ec_key.public_key())]
    assert verify_jwt(bearer(token), keys=keys, now=NOW) == CLAIMS
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(CLAIMS, other, algorithm="ES256", headers={"kid": "ec-1"})
    assert reason_of(lambda: verify_jwt(bearer(forged), keys=keys, now=NOW)) == "bad_jwt"


def jwks_text(*entries: tuple[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]) -> str:
    keys = []
    for kid, private in entries:
        if isinstance(private, rsa.RSAPrivateKey):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        keys.append({**jwk, "kid": kid, "use": "sig"})
    return json.dumps({"keys": keys}, indent=2)


def test_jwks_document_and_kid_selection(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    keys = load_jwt_keys(jwks_text(("a", rsa_key), ("b", rsa_key_2), ("c", ec_key)))
    assert [k.kid for k in keys] == ["a", "b", "c"]
    for kid, private, alg in (
        ("a", rsa_key, "RS256"),
        ("b", rsa_key_2, "RS256"),
        ("c", ec_key, "ES256"),
    ):
        token = jwt.encode(CLAIMS, private, algorithm=alg, headers={"kid": kid})
        assert verify_jwt(bearer(token), keys=keys, now=NOW) == CLAIMS
    # no kid in the token: every compatible key is tried
    assert verify_jwt(bearer(jwt.encode(CLAIMS, rsa_key_2, algorithm="RS256")), keys=keys, now=NOW)
    unknown = jwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "zzz"})
    assert reason_of(lambda: verify_jwt(bearer(unknown), keys=keys, now=NOW)) == "unknown_kid"
    swapped = jwt.encode(CLAIMS, rsa_key_2, algorithm="RS256", headers={"kid": "a"})
    assert reason_of(lambda: verify_jwt(bearer(swapped), keys=keys, now=NOW)) == "bad_jwt"


def test_jwks_skips_encryption_keys_and_pins_alg(rsa_key: rsa.RSAPrivateKey) -> None:
    doc = json.loads(jwks_text(("sig", rsa_key), ("enc", rsa_key)))
    doc["keys"][1]["use"] = "enc"
    doc["keys"][0]["alg"] = "RS256"
    keys = load_jwt_keys(json.dumps(doc))
    assert [(k.kid, k.algorithm) for k in keys] == [("sig", "RS256")]
    ps = jwt.encode(CLAIMS, rsa_key, algorithm="PS256", headers={"kid": "sig"})
    call = partial(verify_jwt, bearer(ps), keys=keys, algorithms=["PS256"], now=NOW)
    assert reason_of(call) == "bad_jwt"


@pytest.mark.parametrize(
    ("keys_from", "strict", "token_kid", "reason"),
    [
        # A JWKS names its keys: strict is its default (sources.py), so unknown ids fail.
        ("jwks", True, "a", None),
        ("jwks", True, None, None),
        ("jwks", True, "zzz", "unknown_kid"),
        ("jwks", False, "zzz", None),  # lenient: the JWKS's key without an id is tried
        # PEM keys have no id: by default (lenient) a token naming one still verifies.
        ("pem", False, "zzz", None),
        ("pem", False, None, None),
        ("pem", True, "zzz", "unknown_kid"),
        ("pem", True, None, None),
        ("secret", False, "zzz", None),
        ("secret", True, "zzz", "unknown_kid"),
        ("secret", True, None, None),
    ],
)
def test_strict_kid_for_each_kind_of_key(
    rsa_key: rsa.RSAPrivateKey, keys_from: str, strict: bool, token_kid: str | None,
    reason: str | None,
) -> None:  # fmt: skip
    if keys_from == "jwks":
        doc = json.loads(jwks_text(("a", rsa_key), ("unnamed", rsa_key)))
        del doc["keys"][1]["kid"]
        keys = load_jwt_keys(json.dumps(doc))
        assert [k.kid for k in keys] == ["a", None]
    elif keys_from == "pem":
        keys = load_jwt_keys(public_pem(rsa_key))
    else:
        keys = HS_KEYS
    signing_key = HS_KEY if keys_from == "secret" else rsa_key
    alg = "HS256" if keys_from == "secret" else "RS256"
    headers = {"kid": token_kid} if token_kid is not None else None
    token = jwt.encode(CLAIMS, signing_key, algorithm=alg, headers=headers)

    got = outcome(lambda: verify_jwt(bearer(token), keys=keys, strict_kid=strict, now=NOW))

    assert got == reason


def test_strict_kid_still_checks_the_named_keys_signature(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    keys = load_jwt_keys(jwks_text(("a", rsa_key), ("b", rsa_key_2)))
    swapped = jwt.encode(CLAIMS, rsa_key_2, algorithm="RS256", headers={"kid": "a"})
    call = partial(verify_jwt, bearer(swapped), keys=keys, strict_kid=True, now=NOW)
    assert reason_of(call) == "bad_jwt"


def test_pem_bundle_and_certificate(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hookbus test")])
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .sign(ec_key, hashes.SHA256())
    )
    bundle = public_pem(rsa_key) + "\n" + cert.public_bytes(serialization.Encoding.PEM).decode()
    keys = load_jwt_keys(bundle)
    assert [k.family for k in keys] == ["RSA", "EC"]
    # the token's kid matches no key id, so the kid-less (PEM) keys are tried
    token = jwt.encode(CLAIMS, ec_key, algorithm="ES256", headers={"kid": "whatever"})
    assert verify_jwt(bearer(token), keys=keys, now=NOW) == CLAIMS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no JWT key material"),
        ("not a key", "expected a PEM"),
        ("[1, 2]", "expected a PEM"),
        ("{not json", "not valid JSON"),
        ('{"keys": {}}', "must be a list"),
        ('{"keys": [1]}', "not an object"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "unsupported kty"),
        ('{"keys": [{"kty": "RSA", "kid": "r", "n": "!!", "e": "AQAB"}]}', "not a valid JWK"),
        ('{"keys": [{"kty": "RSA", "kid": 5}]}', "'kid' must be a string"),
        ('{"keys": []}', "no signature keys"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "could not load PEM"),
        ("-----BEGIN PUBLIC KEY-----\nunterminated", "malformed PEM"),
    ],
)
def test_load_jwt_keys_rejects_garbage(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_jwt_keys(text)
    assert "c2VjcmV0" not in str(info.value)


def test_jwt_key_validation(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="does not match"):
        JwtKey(kid="x", key=HS_KEY, algorithm="RS256")
    with pytest.raises(TypeError, match="unsupported"):
        JwtKey(kid="x", key=12345)
    with pytest.raises(ValueError, match="empty"):
        JwtKey(kid="x", key=b"")
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="public key"):
        JwtKey(kid="x", key=private_pem)
    # a private key object is reduced to its public half
    assert isinstance(JwtKey(kid="x", key=rsa_key).key, rsa.RSAPublicKey)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": NOW}, "expired"),
        ({"exp": NOW - 1}, "expired"),
        ({"nbf": NOW + 60}, "not_yet_valid"),
        ({"iat": NOW + 60}, "not_yet_valid"),
        ({"iss": "https://evil.example"}, "bad_claims"),
        ({"aud": "someone-else"}, "bad_claims"),
        ({"aud": ["a", "b"]}, "bad_claims"),
        ({"sub": "other"}, "bad_claims"),
        ({"repo": "org/other"}, "bad_claims"),
        ({"exp": "tomorrow"}, "bad_claims"),
        ({"nbf": True}, "bad_claims"),
    ],
)
def test_jwt_claim_failures(changes: dict[str, Any], reason: str) -> None:
    token = hs_token({**CLAIMS, **changes})
    call = partial(
        verify_jwt,
        bearer(token),
        keys=HS_KEYS,
        issuer=CLAIMS["iss"],
        audience="hookbus",
        subject="ci-bot",
        required_claims={"repo": "org/app"},
        now=NOW,
    )
    assert reason_of(call) == reason


def test_jwt_audience_list_and_leeway() -> None:
    token = hs_token({**CLAIMS, "aud": ["x", "hookbus"], "exp": NOW - 5})
    call = partial(verify_jwt, bearer(token), keys=HS_KEYS, audience="hookbus", now=NOW)
    assert reason_of(call) == "expired"
    assert verify_jwt(bearer(token), keys=HS_KEYS, audience="hookbus", now=NOW, leeway=10)


def test_jwt_required_claims() -> None:
    token = hs_token({"sub": "x", "admin": True, "level": 1})
    ok = verify_jwt(bearer(token), keys=HS_KEYS, required_claims={"admin": True, "level": None})
    assert ok["level"] == 1
    for required in ({"missing": None}, {"admin": 1}, {"level": True}, {"admin": False}):
        call = partial(verify_jwt, bearer(token), keys=HS_KEYS, required_claims=required)
        assert reason_of(call) == "bad_claims"


def test_jwt_non_finite_numeric_claim() -> None:
    token = crafted({"alg": "HS256", "typ": "JWT"}, b'{"exp": NaN}')
    assert reason_of(lambda: verify_jwt(bearer(token), keys=HS_KEYS, now=NOW)) == "bad_claims"


def test_jwt_algorithm_restrictions(rsa_key: rsa.RSAPrivateKey) -> None:
    token = hs_token()
    call = partial(verify_jwt, bearer(token), keys=HS_KEYS, algorithms=["RS256"], now=NOW)
    assert reason_of(call) == "bad_jwt"
    # alg=none is never accepted, even if asked for
    none = b64u(b'{"alg":"none"}') + "." + b64u(json.dumps(CLAIMS).encode()) + "."
    call = partial(verify_jwt, bearer(none), keys=HS_KEYS, algorithms=["none", "HS256"], now=NOW)
    assert reason_of(call) == "bad_jwt"
    # algorithm confusion: HS256 "signed" with the RSA public key PEM as the HMAC secret
    pem = public_pem(rsa_key)
    confused = crafted({"alg": "HS256"}, json.dumps(CLAIMS).encode(), key=pem.encode())
    keys = [JwtKey(kid=None, key=pem)]
    call = partial(verify_jwt, bearer(confused), keys=keys, algorithms=["HS256", "RS256"], now=NOW)
    assert reason_of(call) == "bad_jwt"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "crit": ["exp"]},
        {"alg": "HS256", "b64": False, "crit": ["b64"]},
        {"alg": "HS256", "kid": 7},
        {"alg": ["HS256"]},
        {"typ": "JWT"},
    ],
)
def test_jwt_rejects_odd_headers(header: dict[str, Any]) -> None:
    token = crafted(header, json.dumps(CLAIMS).encode())
    assert reason_of(lambda: verify_jwt(bearer(token), keys=HS_KEYS, now=NOW)) == "bad_jwt"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_header"),
        ({"authorization": ""}, "missing_header"),
        ({"authorization": "Basic abc"}, "malformed_token"),
        ({"authorization": "Bearer"}, "malformed_token"),
        ({"authorization": "Bearer not-a-jwt"}, "bad_jwt"),
        ({"authorization": "Bearer a.b"}, "bad_jwt"),
        ({"authorization": "Bearer a.b.c.d"}, "bad_jwt"),
        ({"authorization": "Bearer ===.===.==="}, "bad_jwt"),
        ({"authorization": "Bearer " + b64u(b"[1]") + ".e30.AAAA"}, "bad_jwt"),
        ({"authorization": "Bearer " + b64u(b"\xff\xfe") + ".e30.AAAA"}, "bad_jwt"),
        ({"authorization": "Bearer " + "a" * 20_000 + ".b.c"}, "bad_jwt"),
    ],
)
def test_jwt_malformed_input(headers: dict[str, str], reason: str) -> None:
    assert reason_of(lambda: verify_jwt(headers, keys=HS_KEYS, now=NOW)) == reason


def test_jwt_tampered_payload_and_no_keys() -> None:
    h, _, s = hs_token().split(".")
    forged = f"{h}.{b64u(json.dumps({**CLAIMS, 'sub': 'root'}).encode())}.{s}"
    assert reason_of(lambda: verify_jwt(bearer(forged), keys=HS_KEYS, now=NOW)) == "bad_jwt"
    wrong = [JwtKey(kid=None, key=WRONG)]
    assert reason_of(lambda: verify_jwt(bearer(hs_token()), keys=wrong, now=NOW)) == "bad_jwt"
    assert reason_of(lambda: verify_jwt(bearer(hs_token()), keys=[], now=NOW)) == "no_secrets"


def test_jwt_custom_header_and_rotation() -> None:
    keys = [JwtKey(kid=None, key=WRONG), JwtKey(kid=None, key=HS_KEY)]
    token = hs_token()
    assert verify_jwt({"x-jwt": token}, keys=keys, header="X-JWT", now=NOW) == CLAIMS
    assert verify_jwt({"x-jwt": "Bearer " + token}, keys=keys, header="x-jwt", now=NOW) == CLAIMS


def test_jwt_default_now_is_current_time() -> None:
    fresh = hs_token({"exp": int(time.time()) + 60})
    assert verify_jwt(bearer(fresh), keys=HS_KEYS)["exp"]
    stale = hs_token({"exp": int(time.time()) - 60})
    assert reason_of(lambda: verify_jwt(bearer(stale), keys=HS_KEYS)) == "expired"


# --------------------------------------------------------------------------- no leaks


def test_failures_never_leak_secrets_tokens_or_signatures() -> None:
    token = hs_token({**CLAIMS, "exp": NOW - 1})
    forged_token = hs_token(CLAIMS)[:-4] + "AAAA"
    gh_sig = sign_github(BODY, SECRET)
    hd_sig = sign_hookdeck(BODY, SECRET)
    sw_sig = sign_standard_webhooks("msg_1", NOW, BODY, SECRET)
    stripe_sig = stripe_header(BODY, STRIPE_SECRET, NOW)
    basic = b64(b"user:" + WRONG)
    calls: list[Callable[[], object]] = [
        lambda: verify_github({"x-hub-signature-256": gh_sig}, BODY + b"x", [SECRET, OTHER]),
        lambda: verify_gitlab_token({"x-gitlab-token": WRONG.decode()}, [SECRET]),
        lambda: verify_standard_webhooks(
            sw_headers(sw_sig, msg_id="msg_1", ts=str(NOW)), BODY, [OTHER], now=NOW
        ),
        lambda: verify_hookdeck({"x-hookdeck-signature": hd_sig}, BODY, [OTHER]),
        lambda: verify_hmac({"x-sig": gh_sig}, BODY, [OTHER], header="x-sig", prefix="sha256="),
        lambda: verify_stripe(stripe_sig, secrets=(STRIPE_OLD,), now=NOW),
        lambda: verify_token(
            {"authorization": "Bearer " + WRONG.decode()}, [SECRET], mode="bearer"
        ),
        lambda: verify_token({"authorization": "Basic " + basic}, [SECRET], mode="basic"),
        lambda: verify_jwt(bearer(token), keys=HS_KEYS, now=NOW),
        lambda: verify_jwt(bearer(forged_token), keys=HS_KEYS, now=NOW),
    ]
    sensitive = [
        SECRET.decode(),
        OTHER.decode(),
        WRONG.decode(),
        HS_KEY.decode(),
        token,
        forged_token,
        gh_sig,
        gh_sig.removeprefix("sha256="),
        hd_sig,
        sw_sig,
        sw_sig.removeprefix("v1,"),
        STRIPE_SECRET,
        STRIPE_OLD,
        stripe_sig.split("v1=")[1],
        basic,
    ]
    for call in calls:
        with pytest.raises(VerificationError) as info:
            call()
        rendered = f"{info.value} {info.value!r} {info.value.args}"
        for value in sensitive:
            assert value not in rendered
        assert info.value.reason in REASONS


# --------------------------------------------------------------------------- selftest


def test_selftest_all_pass() -> None:
    rows = selftest()
    assert [name for name, _, _ in rows] == [
        "github-sha256",
        "standard-webhooks",
        "hookdeck",
        "hmac-sha512-base64",
        "hmac-stripe",
        "hmac-convoy",
        "jwt-hs256",
        "gitlab-token",
        "token",
    ]
    assert all(passed for _, passed, _ in rows), rows
    assert all(detail for _, _, detail in rows)


# --------------------------------------------------------------------------- properties

_HEADER_NAMES = st.sampled_from(
    [
        "x-hub-signature-256",
        "x-hub-signature",
        "x-gitlab-token",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-hookdeck-signature",
        "x-hookdeck-signature-2",
        "x-sig",
        "x-ts",
        "stripe-signature",
        "authorization",
        "x-api-key",
    ]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
_JOSE = st.dictionaries(
    st.sampled_from(["alg", "kid", "crit", "b64", "typ"]),
    st.sampled_from(["HS256", "HS512", "RS256", "PS256", "ES256", "none", "EdDSA", "k1"]) | _JSON,
)
_CLAIMS = st.dictionaries(
    st.sampled_from(["exp", "nbf", "iat", "iss", "aud", "sub", "repo"]) | st.text(max_size=4), _JSON
)


@st.composite
def jwt_like(draw: st.DrawFn) -> str:
    parts = [
        b64u(json.dumps(draw(_JOSE)).encode()),
        b64u(json.dumps(draw(_CLAIMS)).encode()),
        b64u(draw(st.binary(max_size=80))),
    ]
    if draw(st.booleans()):
        parts[draw(st.integers(0, 2))] = draw(st.text(max_size=12))
    return ".".join(parts)


_VALUES = (
    st.text(max_size=60)
    | st.builds(lambda s: "sha256=" + s, st.text("0123456789abcdefABCDEF", max_size=70))
    | st.builds(lambda s: "sha1=" + s, st.text("0123456789abcdef", max_size=44))
    | st.builds(lambda s: "v1," + s, st.text(max_size=50))
    | st.builds(
        lambda t, sigs: f"t={t}," + ",".join(sigs),
        st.integers(-10, 10**16) | st.text(max_size=8),
        st.lists(
            st.builds(
                lambda k, v: f"{k}={v}",
                st.sampled_from(["v1", "v0", "t", ""]),
                st.text("0123456789abcdef=+/", max_size=70),
            ),
            max_size=4,
        ),
    )
    | st.builds(b64, st.binary(max_size=70))
    | st.builds(lambda s: "Bearer " + s, st.text(max_size=40) | jwt_like())
    | st.builds(lambda b: "Basic " + b64(b), st.binary(max_size=30))
    | st.integers(-(10**20), 10**20).map(str)
)


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    headers=st.dictionaries(_HEADER_NAMES | st.text(max_size=10), _VALUES, max_size=8),
    body=st.binary(max_size=200),
)
def test_random_input_only_ever_raises_verification_error(
    headers: dict[str, str], body: bytes
) -> None:
    verifiers: list[Callable[[], object]] = [
        lambda: verify_github(headers, body, [SECRET, OTHER], allow_sha1=True),
        lambda: verify_gitlab_token(headers, [SECRET]),
        lambda: verify_standard_webhooks(headers, body, [SECRET], now=NOW),
        lambda: verify_hookdeck(headers, body, [SECRET]),
        lambda: verify_hmac(headers, body, [SECRET], header="x-sig"),
        lambda: verify_hmac(
            headers,
            body,
            [SECRET],
            header="x-sig",
            algorithm="sha512",
            encoding="base64",
            signed="timestamp+body",
            timestamp_header="x-ts",
            now=NOW,
            prefix="v1,",
        ),
        lambda: verify_hmac(headers, body, [SECRET], **HMAC_PRESETS["stripe"], now=NOW),
        lambda: verify_hmac(
            headers, body, [SECRET], header="x-sig", format="fields", encoding="base64", now=NOW
        ),
        lambda: verify_token(headers, [SECRET], mode="bearer"),
        lambda: verify_token(headers, [b"user:" + SECRET], mode="basic"),
        lambda: verify_token(headers, [SECRET], mode="header", header_name="x-api-key"),
        lambda: verify_jwt(headers, keys=HS_KEYS, algorithms=["HS256", "RS256", "none"], now=NOW),
    ]
    for verify in verifiers:
        reason = outcome(verify)
        assert reason is None or reason in REASONS


@settings(max_examples=200, deadline=None, database=None)
@given(token=jwt_like())
def test_random_jwts_are_rejected_with_verification_error(token: str) -> None:
    keys = [
        *HS_KEYS,
        JwtKey(kid="k1", key=b"another-" + HS_KEY),
        JwtKey(kid="k1", key=EC_KEY.public_key()),
        JwtKey(kid=None, key=RSA_KEY.public_key()),
    ]
    algorithms = ["HS256", "HS512", "ES256", "RS256", "PS256", "EdDSA"]
    for strict_kid in (False, True):
        with pytest.raises(VerificationError) as info:
            verify_jwt(
                bearer(token), keys=keys, algorithms=algorithms, now=NOW, strict_kid=strict_kid
            )
        assert info.value.reason in REASONS
