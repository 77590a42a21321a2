"""Pure, constant-time verification of inbound webhook signatures, tokens and JWTs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, TypedDict

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from hookbus_common.errors import UnauthorizedError

__all__ = [
    "HMAC_PRESETS",
    "REASONS",
    "SELFTEST_VECTORS",
    "HmacAlgorithm",
    "HmacFormat",
    "HmacLayout",
    "HmacPreset",
    "JwtKey",
    "VerificationError",
    "decode_standard_secret",
    "load_jwt_keys",
    "selftest",
    "sign_github",
    "sign_hookdeck",
    "sign_standard_webhooks",
    "url_token_matches",
    "verify_github",
    "verify_gitlab_token",
    "verify_harbor",
    "verify_hmac",
    "verify_hookdeck",
    "verify_jwt",
    "verify_standard_webhooks",
    "verify_token",
]

# --------------------------------------------------------------------------- errors

#: Every reason code a verifier can raise. Stable: they are used as metric labels.
REASONS: Final[frozenset[str]] = frozenset(
    {
        "no_secrets",  # nothing usable configured (empty secret list / key list)
        "missing_header",  # a required header is absent or blank
        "malformed_signature",  # signature header present but unparseable / wrong prefix
        "bad_signature",  # well-formed signature that matches no secret
        "malformed_timestamp",  # timestamp header is not unix seconds
        "stale_timestamp",  # timestamp outside the tolerance window
        "malformed_token",  # wrong auth scheme, undecodable basic credentials
        "bad_token",  # token / credentials match no secret
        "bad_jwt",  # undecodable JWT, disallowed alg, or bad JWT signature
        "unknown_kid",  # the JWT names a key id we do not have
        "expired",  # JWT exp reached
        "not_yet_valid",  # JWT nbf / iat in the future
        "bad_claims",  # iss/aud/sub/required claims mismatch or malformed claims
    }
)


class VerificationError(UnauthorizedError):
    """Verification failed; ``reason`` is a stable machine code from :data:`REASONS`.

    The message is exactly the reason code: it never carries secrets, tokens or
    signature values, so it is safe to log and to use as a metric label. Every reason
    answers the sender alike (401, ``unauthorized``).
    """


# --------------------------------------------------------------------------- helpers

_HEX_RE: Final = re.compile(r"[0-9a-fA-F]+")
_B64_RE: Final = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_TIMESTAMP_RE: Final = re.compile(r"[0-9]{1,15}")
_DIGEST_SIZES: Final[Mapping[str, int]] = MappingProxyType({"sha1": 20, "sha256": 32, "sha512": 64})
_EMPTY_CLAIMS: Final[Mapping[str, object]] = MappingProxyType({})


def _usable(secrets: Sequence[bytes]) -> list[bytes]:
    """Non-empty secrets only: an empty secret must never make anything pass."""
    usable = [bytes(s) for s in secrets if s]
    if not usable:
        raise VerificationError("no_secrets")
    return usable


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name.lower())
    if value is None or not value.strip():
        raise VerificationError("missing_header")
    return value.strip()


def _to_bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _hmac(secret: bytes, message: bytes, algorithm: str) -> bytes:
    return hmac.digest(secret, message, algorithm)


def _decode_hex(value: str, size: int) -> bytes | None:
    if len(value) != 2 * size or not _HEX_RE.fullmatch(value):
        return None
    return bytes.fromhex(value)


def _decode_b64(value: str) -> bytes | None:
    """Lenient-alphabet, strict-syntax base64 (standard or url-safe, padding optional)."""
    if not _B64_RE.fullmatch(value):
        return None
    value = value.rstrip("=").replace("-", "+").replace("_", "/")
    value += "=" * (-len(value) % 4)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _any_match(candidates: Sequence[bytes], expected: Sequence[bytes]) -> bool:
    """Constant-time any-of comparison; never short-circuits."""
    matched = False
    for candidate in candidates:
        for value in expected:
            matched |= hmac.compare_digest(candidate, value)
    return matched


def _parse_timestamp(value: str, now: float, tolerance: float) -> None:
    if not _TIMESTAMP_RE.fullmatch(value):
        raise VerificationError("malformed_timestamp")
    if abs(now - int(value)) > tolerance:
        raise VerificationError("stale_timestamp")


# --------------------------------------------------------------------------- GitHub


def sign_github(body: bytes, secret: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub would send for ``body``."""
    return "sha256=" + _hmac(secret, body, "sha256").hex()


def verify_github(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    *,
    allow_sha1: bool = False,
) -> None:
    """GitHub: ``x-hub-signature-256: sha256=<hex>`` (or legacy ``x-hub-signature: sha1=``)."""
    keys = _usable(secrets)
    value = headers.get("x-hub-signature-256")
    algorithm = "sha256"
    if value is None and allow_sha1:
        value = headers.get("x-hub-signature")
        algorithm = "sha1"
    if value is None or not value.strip():
        raise VerificationError("missing_header")
    prefix, sep, hexsig = value.strip().partition("=")
    if not sep or prefix != algorithm:
        raise VerificationError("malformed_signature")
    provided = _decode_hex(hexsig, _DIGEST_SIZES[algorithm])
    if provided is None:
        raise VerificationError("malformed_signature")
    expected = [_hmac(key, body, algorithm) for key in keys]
    if not _any_match([provided], expected):
        raise VerificationError("bad_signature")


# --------------------------------------------------------------------------- GitLab


def verify_gitlab_token(headers: Mapping[str, str], secrets: Sequence[bytes]) -> None:
    """GitLab's plain shared secret in ``x-gitlab-token``."""
    keys = _usable(secrets)
    token = _header(headers, "x-gitlab-token")
    if not _any_match([_to_bytes(token)], keys):
        raise VerificationError("bad_token")


def verify_harbor(headers: Mapping[str, str], secrets: Sequence[bytes]) -> None:
    """Harbor's "Auth Header", sent verbatim as ``Authorization``: the whole value, or
    the part after its scheme (``Bearer <secret>``), must be one of the secrets."""
    keys = _usable(secrets)
    value = _header(headers, "authorization")
    _scheme, _, credentials = value.partition(" ")
    candidates = [_to_bytes(value)] + ([_to_bytes(credentials.strip())] if credentials else [])
    if not _any_match(candidates, keys):
        raise VerificationError("bad_token")


def url_token_matches(given: str | None, secrets: Sequence[bytes]) -> bool:
    """Whether a token given in the URL is one of ``secrets`` (constant time)."""
    keys = [bytes(s) for s in secrets if s]
    return bool(given) and bool(keys) and _any_match([_to_bytes(given or "")], keys)


# --------------------------------------------------------------------------- Standard Webhooks


def decode_standard_secret(secret: str) -> bytes:
    """Decode a Standard Webhooks secret (``whsec_<base64>`` or bare base64) to key bytes."""
    raw = secret.strip()
    raw = raw.removeprefix("whsec_")
    decoded = _decode_b64(raw) if raw else None
    if not decoded:
        # Never echo the secret itself.
        raise ValueError("invalid Standard Webhooks secret: expected 'whsec_' + base64")
    return decoded


def sign_standard_webhooks(msg_id: str, timestamp: int, body: bytes, secret: bytes) -> str:
    """A single ``v1,<base64>`` entry of a Standard Webhooks ``webhook-signature`` header."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(_hmac(secret, content, "sha256")).decode("ascii")


def verify_standard_webhooks(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    *,
    now: float,
    tolerance: float = 300,
    id_header: str = "webhook-id",
    timestamp_header: str = "webhook-timestamp",
    signature_header: str = "webhook-signature",
) -> str:
    """Standard Webhooks (also Svix, GitLab signing tokens); returns the message id."""
    keys = _usable(secrets)
    msg_id = _header(headers, id_header)
    timestamp = _header(headers, timestamp_header)
    signature = _header(headers, signature_header)
    _parse_timestamp(timestamp, now, tolerance)
    provided: list[bytes] = []
    for entry in signature.split():
        version, sep, encoded = entry.partition(",")
        if version != "v1" or not sep:
            continue  # other versions (e.g. v1a asymmetric) and junk are ignored
        decoded = _decode_b64(encoded)
        if decoded is not None and len(decoded) == _DIGEST_SIZES["sha256"]:
            provided.append(decoded)
    if not provided:
        raise VerificationError("malformed_signature")
    content = _to_bytes(f"{msg_id}.{timestamp}.") + body
    expected = [_hmac(key, content, "sha256") for key in keys]
    if not _any_match(provided, expected):
        raise VerificationError("bad_signature")
    return msg_id


# --------------------------------------------------------------------------- Hookdeck


def sign_hookdeck(body: bytes, secret: bytes) -> str:
    """The ``x-hookdeck-signature`` value: base64(HMAC-SHA256(secret, body))."""
    return base64.b64encode(_hmac(secret, body, "sha256")).decode("ascii")


def verify_hookdeck(headers: Mapping[str, str], body: bytes, secrets: Sequence[bytes]) -> None:
    """Hookdeck: ``x-hookdeck-signature`` or (during rotation) ``x-hookdeck-signature-2``."""
    keys = _usable(secrets)
    values = [
        value.strip()
        for name in ("x-hookdeck-signature", "x-hookdeck-signature-2")
        if (value := headers.get(name)) is not None and value.strip()
    ]
    if not values:
        raise VerificationError("missing_header")
    provided = [
        decoded
        for value in values
        if (decoded := _decode_b64(value)) is not None and len(decoded) == _DIGEST_SIZES["sha256"]
    ]
    if not provided:
        raise VerificationError("malformed_signature")
    expected = [_hmac(key, body, "sha256") for key in keys]
    if not _any_match(provided, expected):
        raise VerificationError("bad_signature")


# --------------------------------------------------------------------------- generic HMAC

HmacAlgorithm = Literal["sha1", "sha256", "sha512"]
HmacFormat = Literal["plain", "fields"]
HmacPreset = Literal["stripe"]


class HmacLayout(TypedDict):
    """Where a sender puts its HMAC signature and what it signs (:func:`verify_hmac`'s keys)."""

    header: str
    format: HmacFormat
    algorithm: HmacAlgorithm
    encoding: Literal["hex", "base64"]
    prefix: str
    signed: Literal["body", "timestamp+body"]
    timestamp_header: str | None
    separator: str
    timestamp_field: str
    signature_field: str


#: Senders whose documented scheme a source may name instead of spelling it out.
HMAC_PRESETS: Final[Mapping[HmacPreset, HmacLayout]] = MappingProxyType(
    {
        # Stripe-Signature: t=<unix ts>,v1=<hex>[,v1=<hex>…][,v0=…] over "<t>.<raw body>".
        "stripe": HmacLayout(
            header="stripe-signature",
            format="fields",
            algorithm="sha256",
            encoding="hex",
            prefix="",
            signed="timestamp+body",
            timestamp_header=None,
            separator=".",
            timestamp_field="t",
            signature_field="v1",
        ),
    }
)


def _decode_signature(value: str, encoding: str, size: int) -> bytes | None:
    decoded = _decode_hex(value, size) if encoding == "hex" else _decode_b64(value)
    return decoded if decoded is not None and len(decoded) == size else None


def _signature_fields(
    value: str, timestamp_field: str, signature_field: str, encoding: str, size: int
) -> tuple[str, list[bytes]]:
    """The timestamp and the usable signatures of a ``t=<ts>,v1=<sig>,…`` header."""
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in value.split(","):
        # Split at the first "=" only: base64 signatures end in "=" padding.
        key, _, field = item.partition("=")
        key = key.strip()
        if key == timestamp_field:
            timestamps.append(field.strip())
        elif key == signature_field:
            signatures.append(field.strip())
        # Any other field (v0, a scheme of another version) is not ours to check.
    # Two timestamps make the signed content ambiguous: refuse rather than pick one.
    if len(timestamps) != 1 or not signatures:
        raise VerificationError("malformed_signature")
    # Junk beside a good signature is skipped, as a rotating sender may add entries.
    provided = [
        d for sig in signatures if (d := _decode_signature(sig, encoding, size)) is not None
    ]
    if not provided:
        raise VerificationError("malformed_signature")
    return timestamps[0], provided


def verify_hmac(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    *,
    header: str,
    format: HmacFormat = "plain",
    algorithm: HmacAlgorithm = "sha256",
    encoding: Literal["hex", "base64"] = "hex",
    prefix: str = "",
    signed: Literal["body", "timestamp+body"] = "body",
    timestamp_header: str | None = None,
    separator: str = ".",
    timestamp_field: str = "t",
    signature_field: str = "v1",
    tolerance: float = 300,
    now: float | None = None,
) -> None:
    """Generic HMAC signature in ``header``, in one of two layouts.

    ``format="plain"``: the header is the signature (after an optional ``prefix``). With
    ``signed="timestamp+body"`` the signed content is ``{timestamp}{separator}{body}``,
    the timestamp taken from ``timestamp_header``.

    ``format="fields"`` (Stripe, Convoy): the header is comma-separated ``key=value``
    fields, exactly one ``timestamp_field`` and one or more ``signature_field`` (several
    while the sender rotates its secret; one matching is enough; fields of other names,
    such as ``v0``, are ignored). The signed content is ``{timestamp}{separator}{body}``.

    A timestamp is unix seconds and must be within ``tolerance`` of ``now`` (default:
    the current time), either way.
    """
    if algorithm not in _DIGEST_SIZES:
        raise ValueError(f"unsupported HMAC algorithm {algorithm!r}")
    if encoding not in ("hex", "base64"):
        raise ValueError(f"unsupported signature encoding {encoding!r}")
    if format == "fields":
        if prefix or timestamp_header:
            raise ValueError("prefix and timestamp_header are not used with format='fields'")
        if not timestamp_field or not signature_field or timestamp_field == signature_field:
            raise ValueError("timestamp_field and signature_field must be two different names")
    elif format == "plain":
        if signed == "timestamp+body" and not timestamp_header:
            raise ValueError("timestamp_header is required when signed='timestamp+body'")
        if signed not in ("body", "timestamp+body"):
            raise ValueError(f"unsupported signed content {signed!r}")
    else:
        raise ValueError(f"unsupported signature header format {format!r}")
    keys = _usable(secrets)
    value = _header(headers, header)
    size = _DIGEST_SIZES[algorithm]
    timestamp: str | None = None
    if format == "fields":
        timestamp, provided = _signature_fields(
            value, timestamp_field, signature_field, encoding, size
        )
    else:
        if prefix:
            if not value.startswith(prefix):
                raise VerificationError("malformed_signature")
            value = value[len(prefix) :].strip()
        decoded = _decode_signature(value, encoding, size)
        if decoded is None:
            raise VerificationError("malformed_signature")
        provided = [decoded]
        if signed == "timestamp+body":
            assert timestamp_header is not None  # checked above
            timestamp = _header(headers, timestamp_header)
    content = body
    if timestamp is not None:
        _parse_timestamp(timestamp, time.time() if now is None else now, tolerance)
        content = _to_bytes(f"{timestamp}{separator}") + body
    expected = [_hmac(key, content, algorithm) for key in keys]
    if not _any_match(provided, expected):
        raise VerificationError("bad_signature")


# --------------------------------------------------------------------------- static tokens


def verify_token(
    headers: Mapping[str, str],
    secrets: Sequence[bytes],
    *,
    mode: Literal["bearer", "basic", "header"],
    header_name: str | None = None,
) -> None:
    """Static credentials: ``Bearer <token>``, ``Basic base64(user:pass)`` or a raw header.

    For ``basic`` the secrets are ``b"user:pass"``.
    """
    if mode == "header" and not header_name:
        raise ValueError("header_name is required when mode='header'")
    if mode not in ("bearer", "basic", "header"):
        raise ValueError(f"unsupported token mode {mode!r}")
    keys = _usable(secrets)
    if mode == "header":
        assert header_name is not None  # checked above
        provided = _to_bytes(_header(headers, header_name))
    else:
        scheme, _, credentials = _header(headers, "authorization").partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != mode or not credentials:
            raise VerificationError("malformed_token")
        if mode == "bearer":
            provided = _to_bytes(credentials)
        else:
            decoded = _decode_b64(credentials)
            if decoded is None or b":" not in decoded:
                raise VerificationError("malformed_token")
            provided = decoded
    if not _any_match([provided], keys):
        raise VerificationError("bad_token")


# --------------------------------------------------------------------------- JWT

_JWT_RE: Final = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_JWT_MAX_LEN: Final = 16 * 1024
_PEM_BLOCK_RE: Final = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----[A-Za-z0-9+/=\s]*?-----END \1-----", re.ASCII
)


def _key_family(alg: str) -> str | None:
    if alg.startswith("HS"):
        return "HS"
    if alg.startswith(("RS", "PS")):
        return "RSA"
    if alg.startswith("ES"):
        return "EC"
    if alg == "EdDSA":
        return "OKP"
    return None


def _load_pem(data: bytes) -> object:
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(
            "could not load PEM key: expected a public key or an X.509 certificate"
        ) from exc


def _classify_key(key: object) -> tuple[str, object]:
    """Normalise a verification key and return (family, key)."""
    if isinstance(key, jwt.PyJWK):
        key = key.key
    if isinstance(key, str):
        key = _to_bytes(key)
    if isinstance(key, bytes | bytearray | memoryview):
        data = bytes(key)
        if data.lstrip().startswith(b"-----BEGIN"):
            return _classify_key(_load_pem(data.strip()))
        if not data:
            raise ValueError("HMAC JWT secret must not be empty")
        return "HS", data
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        key = key.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "OKP", key
    raise TypeError(f"unsupported JWT key type {type(key).__name__}")


@dataclass(frozen=True, slots=True)
class JwtKey:
    """A JWT verification key: HS secret bytes, or a public key object / PEM text.

    ``algorithm`` optionally pins the key to one JWS algorithm (e.g. from a JWK ``alg``).
    Keys are normalised on construction (PEM parsed, private keys reduced to their public
    half); an unusable key raises ``ValueError``/``TypeError`` here, at configuration time.
    """

    kid: str | None
    key: bytes | str | object
    algorithm: str | None = None
    family: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        family, key = _classify_key(self.key)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "family", family)
        if self.algorithm is not None and _key_family(self.algorithm) != family:
            raise ValueError(f"key algorithm {self.algorithm!r} does not match its key type")


def load_jwt_keys(pem_or_jwks_text: str) -> list[JwtKey]:
    """Load verification keys from PEM text (public keys / certificates) or a JWKS document.

    Raises ``ValueError`` with a message that never includes key material.
    """
    text = pem_or_jwks_text.strip()
    if not text:
        raise ValueError("no JWT key material given")
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ValueError("JWKS is not valid JSON") from exc
        if not isinstance(document, dict):
            raise ValueError("JWKS must be a JSON object")
        entries = document.get("keys", [document])
        if not isinstance(entries, list):
            raise ValueError("JWKS 'keys' must be a list")
        keys: list[JwtKey] = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f"JWKS key #{index} is not an object")
            if entry.get("use", "sig") != "sig":
                continue  # encryption keys are not for verifying signatures
            kty = entry.get("kty")
            if kty not in ("RSA", "EC", "OKP"):
                raise ValueError(f"JWKS key #{index}: unsupported kty {kty!r} (RSA, EC, OKP)")
            kid = entry.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise ValueError(f"JWKS key #{index}: 'kid' must be a string")
            alg = entry.get("alg")
            if alg is not None and not isinstance(alg, str):
                raise ValueError(f"JWKS key #{index}: 'alg' must be a string")
            try:
                jwk = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:
                raise ValueError(f"JWKS key #{index} ({kid!r}) is not a valid JWK") from exc
            keys.append(JwtKey(kid=kid, key=jwk.key, algorithm=alg))
        if not keys:
            raise ValueError("JWKS contains no signature keys")
        return keys
    if "-----BEGIN" in text:
        blocks = [m.group(0) for m in _PEM_BLOCK_RE.finditer(text)]
        if not blocks:
            raise ValueError("malformed PEM: no complete BEGIN/END block found")
        return [JwtKey(kid=None, key=_load_pem(block.encode("ascii"))) for block in blocks]
    raise ValueError("expected a PEM public key/certificate or a JWKS JSON document")


def _b64url(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise VerificationError("bad_jwt") from None


def _json_object(data: bytes) -> dict[str, object]:
    try:
        value = json.loads(data)
    except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
        raise VerificationError("bad_jwt") from None
    if not isinstance(value, dict):
        raise VerificationError("bad_jwt")
    return value


def _numeric_claim(claims: Mapping[str, object], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VerificationError("bad_claims")
    number = float(value)
    if not math.isfinite(number):
        raise VerificationError("bad_claims")
    return number


def _claim_equals(actual: object, expected: object) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual is expected
    return actual == expected


def _jwt_from_headers(headers: Mapping[str, str], header: str) -> str:
    value = _header(headers, header)
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        value = rest.strip()
    elif header.lower() == "authorization":
        raise VerificationError("malformed_token")
    if not value:
        raise VerificationError("malformed_token")
    return value


def verify_jwt(
    headers: Mapping[str, str],
    *,
    keys: Sequence[JwtKey],
    algorithms: Sequence[str] = ("HS256", "RS256", "ES256"),
    issuer: str | None = None,
    audience: str | None = None,
    subject: str | None = None,
    required_claims: Mapping[str, object] = _EMPTY_CLAIMS,
    now: float | None = None,
    leeway: float = 0,
    header: str = "authorization",
    strict_kid: bool = False,
) -> dict[str, object]:
    """Verify a compact JWS JWT from ``Authorization: Bearer`` (or a custom header).

    Checks the signature, ``exp``/``nbf``/``iat``, ``iss``/``aud``/``sub`` and
    ``required_claims`` (a ``None`` value means "must be present", anything else must be
    equal). Returns the claims.

    A token that names a ``kid`` is checked with the keys of that id. When none has it, it
    is refused (``unknown_kid``) with ``strict_kid``; without, the keys that have no id
    (PEM keys, secrets) are tried instead. A token without a ``kid`` may match any key.
    """
    if not keys:
        raise VerificationError("no_secrets")
    allowed = {alg for alg in algorithms if alg != "none" and _key_family(alg) is not None}
    token = _jwt_from_headers(headers, header)
    match = _JWT_RE.fullmatch(token) if len(token) <= _JWT_MAX_LEN else None
    if match is None:
        raise VerificationError("bad_jwt")
    header_b64, payload_b64, signature_b64 = match.groups()
    jose = _json_object(_b64url(header_b64))
    alg = jose.get("alg")
    kid = jose.get("kid")
    if (
        not isinstance(alg, str)
        or alg not in allowed
        or (kid is not None and not isinstance(kid, str))
        or "crit" in jose  # we understand no critical extensions (e.g. b64=false)
        or jose.get("b64", True) is not True
    ):
        raise VerificationError("bad_jwt")
    candidates = list(keys)
    if kid is not None:
        candidates = [k for k in keys if k.kid == kid]
        if not candidates and not strict_kid:
            candidates = [k for k in keys if k.kid is None]
        if not candidates:
            raise VerificationError("unknown_kid")
    family = _key_family(alg)
    candidates = [k for k in candidates if k.family == family and k.algorithm in (None, alg)]
    if not candidates:
        raise VerificationError("bad_jwt")
    signature = _b64url(signature_b64)
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    try:
        algorithm = jwt.get_algorithm_by_name(alg)
    except NotImplementedError:
        raise VerificationError("bad_jwt") from None
    verified = False
    for candidate in candidates:
        try:
            prepared = algorithm.prepare_key(candidate.key)
            verified = algorithm.verify(signing_input, prepared, signature)
        except (jwt.PyJWTError, TypeError, ValueError):
            verified = False
        if verified:
            break
    if not verified:
        raise VerificationError("bad_jwt")

    claims = _json_object(_b64url(payload_b64))
    current = time.time() if now is None else now
    exp = _numeric_claim(claims, "exp")
    nbf = _numeric_claim(claims, "nbf")
    iat = _numeric_claim(claims, "iat")
    if exp is not None and exp <= current - leeway:
        raise VerificationError("expired")
    if (nbf is not None and nbf > current + leeway) or (iat is not None and iat > current + leeway):
        raise VerificationError("not_yet_valid")
    if issuer is not None and not _claim_equals(claims.get("iss"), issuer):
        raise VerificationError("bad_claims")
    if subject is not None and not _claim_equals(claims.get("sub"), subject):
        raise VerificationError("bad_claims")
    if audience is not None:
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a == audience for a in audiences):
            raise VerificationError("bad_claims")
    for name, expected in required_claims.items():
        if name not in claims:
            raise VerificationError("bad_claims")
        if expected is not None and not _claim_equals(claims[name], expected):
            raise VerificationError("bad_claims")
    return claims


# --------------------------------------------------------------------------- selftest

#: Published test vectors (GitHub docs, Standard Webhooks spec, Convoy's signature test
#: vectors) used by :func:`selftest`.
SELFTEST_VECTORS: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        "github-sha256": MappingProxyType(
            {
                "secret": "It's a Secret to Everybody",
                "body": "Hello, World!",
                "signature": (
                    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
                ),
            }
        ),
        "standard-webhooks": MappingProxyType(
            {
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "timestamp": "1614265330",
                "body": '{"test": 2432232314}',
                "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            }
        ),
        # Convoy's "advanced" signature: fields t= and v1=, over "<t>,<body>".
        "convoy-advanced": MappingProxyType(
            {
                "secret": "convoy-webhook-secret",
                "timestamp": "1700000000",
                "body": '{"event":"charge.success","amount":1000,"currency":"NGN"}',
                "signature": (
                    "t=1700000000,"
                    "v1=77b8b9269f25a199846a55a2bd25b3fba151c70fdae60bb1dcd87fbbc943c55c"
                ),
            }
        ),
    }
)

_SELFTEST_SECRET: Final = b"hookbus-selftest-secret-0123456789abcdef-0123456789abcdef"
_SELFTEST_BODY: Final = b'{"event":"selftest","n":1}'


class _SelftestFailure(Exception):
    """A selftest check did not hold; the message is the detail shown to the operator."""


def _require(condition: bool, detail: str) -> None:
    if not condition:
        raise _SelftestFailure(detail)


def _rejects(check: Callable[[], object]) -> bool:
    try:
        check()
    except VerificationError:
        return True
    return False


def _selftest_github() -> str:
    v = SELFTEST_VECTORS["github-sha256"]
    secret, body = v["secret"].encode(), v["body"].encode()
    got = sign_github(body, secret)
    _require(got == v["signature"], f"sign_github produced {got}, expected {v['signature']}")
    verify_github({"x-hub-signature-256": got}, body, [secret])
    _require(
        _rejects(lambda: verify_github({"x-hub-signature-256": got}, body + b"!", [secret])),
        "tampered body was accepted",
    )
    return "published vector verified; tampered body rejected"


def _selftest_standard_webhooks() -> str:
    v = SELFTEST_VECTORS["standard-webhooks"]
    secret = decode_standard_secret(v["secret"])
    body, ts = v["body"].encode(), int(v["timestamp"])
    got = sign_standard_webhooks(v["id"], ts, body, secret)
    _require(got == v["signature"], f"signer produced {got}, expected {v['signature']}")
    headers = {"webhook-id": v["id"], "webhook-timestamp": v["timestamp"], "webhook-signature": got}
    _require(
        verify_standard_webhooks(headers, body, [secret], now=ts) == v["id"],
        "message id was not returned",
    )
    _require(
        _rejects(lambda: verify_standard_webhooks(headers, body, [secret], now=ts + 3600)),
        "stale timestamp was accepted",
    )
    return "published vector verified; stale timestamp rejected"


def _selftest_hookdeck() -> str:
    digest = hmac.new(_SELFTEST_SECRET, _SELFTEST_BODY, hashlib.sha256).digest()
    independent = base64.b64encode(digest).decode("ascii")
    got = sign_hookdeck(_SELFTEST_BODY, _SELFTEST_SECRET)
    _require(got == independent, "sign_hookdeck disagrees with the stdlib hmac computation")
    verify_hookdeck({"x-hookdeck-signature-2": got}, _SELFTEST_BODY, [b"old", _SELFTEST_SECRET])
    _require(
        _rejects(lambda: verify_hookdeck({"x-hookdeck-signature": got}, _SELFTEST_BODY, [b"x"])),
        "wrong secret was accepted",
    )
    return "stdlib round trip verified; wrong secret rejected"


def _selftest_hmac_sha512() -> str:
    ts = "1700000000"
    digest = hmac.new(_SELFTEST_SECRET, ts.encode() + b":" + _SELFTEST_BODY, hashlib.sha512)
    headers = {"x-signature": "v1=" + base64.b64encode(digest.digest()).decode(), "x-ts": ts}

    def check(body: bytes) -> None:
        verify_hmac(
            headers,
            body,
            [_SELFTEST_SECRET],
            header="x-signature",
            algorithm="sha512",
            encoding="base64",
            prefix="v1=",
            signed="timestamp+body",
            timestamp_header="x-ts",
            separator=":",
            now=float(ts),
        )

    check(_SELFTEST_BODY)
    _require(_rejects(lambda: check(_SELFTEST_BODY + b" ")), "tampered body was accepted")
    return "stdlib round trip verified; tampered body rejected"


def _selftest_stripe() -> str:
    ts = 1_700_000_000
    signed = f"{ts}.".encode() + _SELFTEST_BODY
    good = hmac.new(_SELFTEST_SECRET, signed, hashlib.sha256).hexdigest()
    old = hmac.new(b"rotated-out-secret", signed, hashlib.sha256).hexdigest()
    # While Stripe rolls a secret it sends a v1 per secret; v0 (test mode) is not ours.
    value = f"t={ts},v1={old},v1={good},v0={good}"

    def check(value: str, body: bytes = _SELFTEST_BODY, now: float = ts) -> None:
        headers = {"stripe-signature": value}
        verify_hmac(headers, body, [_SELFTEST_SECRET], **HMAC_PRESETS["stripe"], now=now)

    check(value)
    _require(_rejects(lambda: check(f"t={ts},v0={good}")), "a v0 signature was accepted")
    _require(_rejects(lambda: check(value, _SELFTEST_BODY + b" ")), "tampered body was accepted")
    _require(_rejects(lambda: check(value, now=ts + 301)), "stale timestamp was accepted")
    return "stdlib round trip verified; v0, tampered body and stale timestamp rejected"


def _selftest_convoy() -> str:
    v = SELFTEST_VECTORS["convoy-advanced"]
    secret, body, ts = v["secret"].encode(), v["body"].encode(), float(v["timestamp"])
    fields, sig = v["signature"].split(",")

    def check(value: str, body: bytes = body, now: float = ts) -> None:
        headers = {"x-convoy-signature": value}
        verify_hmac(
            headers, body, [secret], header="x-convoy-signature", format="fields",
            separator=",", now=now,
        )  # fmt: skip

    check(v["signature"])
    check(f"{sig},{fields}")  # fields are found by name, not by place
    _require(_rejects(lambda: check(v["signature"], body + b" ")), "tampered body was accepted")
    _require(_rejects(lambda: check(v["signature"], now=ts + 301)), "stale timestamp was accepted")
    return "published vector verified; tampered body and stale timestamp rejected"


def _selftest_jwt() -> str:
    now = 1_700_000_000
    claims = {"iss": "hookbus-selftest", "aud": "hookbus", "sub": "selftest", "exp": now + 60}
    token = jwt.encode(claims, _SELFTEST_SECRET, algorithm="HS256", headers={"kid": "k1"})
    headers = {"authorization": f"Bearer {token}"}
    key = JwtKey(kid="k1", key=_SELFTEST_SECRET)
    got = verify_jwt(
        headers,
        keys=[key],
        algorithms=("HS256",),
        issuer="hookbus-selftest",
        audience="hookbus",
        subject="selftest",
        now=now,
    )
    _require(got == claims, "claims did not round trip")
    _require(
        _rejects(lambda: verify_jwt(headers, keys=[key], now=now + 3600)),
        "expired token was accepted",
    )
    no_kid = [JwtKey(kid=None, key=_SELFTEST_SECRET)]
    _require(
        _rejects(lambda: verify_jwt(headers, keys=no_kid, strict_kid=True, now=now)),
        "a token naming an unknown kid was accepted with strict_kid",
    )
    return "pyjwt round trip verified; expired token and unknown kid rejected"


def _selftest_gitlab_token() -> str:
    token = _SELFTEST_SECRET.decode()
    verify_gitlab_token({"x-gitlab-token": token}, [b"old", _SELFTEST_SECRET])
    _require(
        _rejects(lambda: verify_gitlab_token({"x-gitlab-token": token + "x"}, [_SELFTEST_SECRET])),
        "wrong token was accepted",
    )
    return "token verified; wrong token rejected (signing tokens: standard-webhooks)"


def _selftest_token() -> str:
    basic = base64.b64encode(b"hook:" + _SELFTEST_SECRET).decode()
    verify_token({"authorization": f"Basic {basic}"}, [b"hook:" + _SELFTEST_SECRET], mode="basic")
    bearer = {"authorization": "Bearer " + _SELFTEST_SECRET.decode()}
    verify_token(bearer, [_SELFTEST_SECRET], mode="bearer")
    _require(
        _rejects(lambda: verify_token(bearer, [_SELFTEST_SECRET], mode="basic")),
        "a bearer token passed as basic credentials",
    )
    return "bearer and basic verified; wrong scheme rejected"


_SELFTESTS: Final[tuple[tuple[str, Callable[[], str]], ...]] = (
    ("github-sha256", _selftest_github),
    ("standard-webhooks", _selftest_standard_webhooks),
    ("hookdeck", _selftest_hookdeck),
    ("hmac-sha512-base64", _selftest_hmac_sha512),
    ("hmac-stripe", _selftest_stripe),
    ("hmac-convoy", _selftest_convoy),
    ("jwt-hs256", _selftest_jwt),
    ("gitlab-token", _selftest_gitlab_token),
    ("token", _selftest_token),
)


def selftest() -> list[tuple[str, bool, str]]:
    """Run every scheme against known vectors; rows of (name, passed, detail)."""
    rows: list[tuple[str, bool, str]] = []
    for name, check in _SELFTESTS:
        try:
            rows.append((name, True, check()))
        except _SelftestFailure as exc:
            rows.append((name, False, str(exc)))
        except VerificationError as exc:
            rows.append((name, False, f"valid input was rejected: {exc.reason}"))
        except Exception as exc:  # a selftest reports problems, it does not crash
            rows.append((name, False, f"{type(exc).__name__}: {exc}"))
    return rows
