"""Source kinds in the config: each loads, and each mistake is an error naming its key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
import stripe
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hookbus_common.errors import ConfigError
from hookbus_receiver import sources
from hookbus_receiver.config import (
    GitlabSource,
    HmacSource,
    JwtSource,
    NoneSource,
    Secret,
    StandardWebhooksSource,
    TokenSource,
)
from hookbus_receiver.signatures import VerificationError

from ..installation import load_whole

SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Any:
    (tmp_path / "hookbus.toml").write_text(text)
    return load_whole(tmp_path / "hookbus.toml", env or {})


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


def pem(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "keys" / "ci.pem"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_every_kind_loads_with_its_options(tmp_path):
    pem(tmp_path)
    settings = load(
        tmp_path,
        f"""
[sources.gl]
kind = "gitlab"
token = [{{ env = "GL_TOKEN" }}]
signing = [{{ value = "{SW_SECRET}" }}]
[sources.sw]
kind = "standard-webhooks"
tolerance = 60
secrets = [{{ value = "{SW_SECRET}" }}, {{ value = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }}]
[sources.hd]
kind = "hookdeck"
secrets = [{{ value = "a" }}, {{ value = "b" }}]
[sources.hm]
kind = "hmac"
header = "X-Signature"
algorithm = "sha1"
encoding = "base64"
signed = "timestamp+body"
timestamp_header = "X-Timestamp"
secrets = [{{ value = "s" }}]
rate_limit = {{ per_second = 5 }}
idempotency = {{ json_field = "event.id" }}
event_type = {{ header = "X-Event", default = "thing" }}
[sources.ci]
kind = "jwt"
key_file = "keys/ci.pem"
audience = "hookbus"
required_claims = {{ repository = "acme/app", run_id = "" }}
also = {{ kind = "hmac", header = "X-Sig", secrets = [{{ env = "ALSO" }}] }}
[sources.tok]
kind = "token"
mode = "header"
header = "X-Api-Key"
secrets = [{{ value = "k" }}]
[sources.hub]
kind = "none"
unsigned = true
allow_ips = ["192.0.2.0/24", "2001:db8::/32"]
trusted_proxies = ["10.0.0.1"]
""",
        {"GL_TOKEN": "from-env", "ALSO": "also-secret"},
    )
    s = settings.sources
    assert isinstance(s["gl"], GitlabSource)
    assert s["gl"].token[0].bytes() == b"from-env"
    assert isinstance(s["sw"], StandardWebhooksSource)
    assert isinstance(s["hm"], HmacSource)
    assert s["hm"].rate_limit is not None
    assert s["hm"].rate_limit.capacity == 5  # burst defaults to one second's worth
    ci = s["ci"]
    assert isinstance(ci, JwtSource)
    assert ci.keys is not None
    assert "BEGIN PUBLIC KEY" in ci.keys  # read once, at load, relative to the config
    assert ci.allowed_algorithms() == ["RS256", "ES256"]
    assert ci.also is not None
    assert ci.also.secrets[0].bytes() == b"also-secret"
    assert isinstance(s["tok"], TokenSource)
    assert isinstance(s["hub"], NoneSource)
    assert [src.kind for src in s.values()] == [
        "gitlab", "standard-webhooks", "hookdeck", "hmac", "jwt", "token", "none",
    ]  # fmt: skip
    # The receiver can build every one of them (keys parsed, secrets decoded).
    assert [sources.Source(n, c).kind for n, c in s.items()] == [c.kind for c in s.values()]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('kind = "hmac"\nsecrets = [{ value = "s" }]', "sources.x.header", "required"),
        (
            'kind = "hmac"\nheader = "X-S"\nsigned = "timestamp+body"\nsecrets = [{ value = "s" }]',
            "sources.x.timestamp_header", "timestamp+body",
        ),
        ('kind = "hmac"\nheader = "X-S"\nalgorithm = "md5"\nsecrets = [{ value = "s" }]', "sources.x.algorithm", "md5"),
        ('kind = "gitlab"', "sources.x.token", "signing"),
        ('kind = "gitlab"\nsecrets = [{ value = "s" }]', "sources.x.secrets", "token"),
        ('kind = "gitlab"\nsigning = [{ value = "not base64 !!" }]', "sources.x.signing[0]", "whsec_"),
        ('kind = "standard-webhooks"\nsecrets = [{ value = "whsec_%%%" }]', "sources.x.secrets[0]", "whsec_"),
        ('kind = "none"', "sources.x.unsigned", "unsigned = true"),
        ('kind = "none"\nunsigned = true\nsecrets = [{ value = "s" }]', "sources.x.secrets", "none"),
        ('kind = "token"\nmode = "header"\nsecrets = [{ value = "s" }]', "sources.x.header", "required"),
        ('kind = "token"\nheader = "X-K"\nsecrets = [{ value = "s" }]', "sources.x.header", "mode"),
        ('kind = "hookdeck"', "sources.x.secrets", "secret"),
        ('kind = "github"\nsecrets = [{ value = "s" }]\nallow_ips = ["10.0.0.0/8", "nope"]', "sources.x.allow_ips[1]", "nope"),
        ('kind = "github"\nsecrets = [{ value = "s" }]\ntrusted_proxies = ["300.1.1.1"]', "sources.x.trusted_proxies[0]", "300.1.1.1"),
        ('kind = "github"\nsecrets = [{ value = "s" }]\nrate_limit = { per_second = 0 }', "sources.x.rate_limit.per_second", ">"),
        ('kind = "github"\nsecrets = [{ value = "s" }]\nidempotency = {}', "sources.x.idempotency", "header or a json_field"),
        ('kind = "github"\nsecrets = [{ value = "s" }]\nidempotency = { header = "A", json_field = "b" }', "sources.x.idempotency", "not both"),
        ('kind = "github"\nsecrets = [{ value = "s" }]\nevent_type = { json_field = "a..b" }', "sources.x.event_type.json_field", "match"),
        ('kind = "github"\nsecrets = [{ value = "s" }]\nwhatever = 1', "sources.x", "whatever"),
        ('kind = "carrier-pigeon"', "sources.x", "carrier-pigeon"),
        ('kind = "jwt"', "sources.x.key_file", "secrets"),
        ('kind = "jwt"\nkey_file = "gone.pem"', "sources.x.key_file", "gone.pem"),
        ('kind = "jwt"\nkeys = "just text"', "sources.x.keys", "PEM"),
        ('kind = "jwt"\nsecrets = [{ value = "s" }]\nalgorithms = ["RS256"]', "sources.x.algorithms", "HS256"),
        ('kind = "jwt"\nsecrets = [{ value = "s" }]\nalso = { kind = "hookdeck" }', "sources.x.also.secrets", "secret"),
        (
            'kind = "jwt"\nsecrets = [{ value = "s" }]\nalso = { kind = "hookdeck", secrets = [{ value = "t" }], allow_ips = ["10.0.0.0/8"] }',
            "sources.x.also.allow_ips", "on the source",
        ),
        ('kind = "jwt"\nsecrets = [{ value = "s" }]\nalso = { kind = "token", secrets = [{ value = "t" }] }', "sources.x.also", "token"),
        ('kind = "jwt"\nsecrets = [{ value = "s" }]\nstrict_kid = "yes"', "sources.x.strict_kid", "bool"),
        # A preset sets the layout; a key that says otherwise is refused, by name.
        ('kind = "hmac"\npreset = "paypal"\nsecrets = [{ value = "s" }]', "sources.x.preset", "paypal"),
        ('kind = "hmac"\npreset = "stripe"\nheader = "X-Sig"\nsecrets = [{ value = "s" }]', "sources.x.header", "stripe-signature"),
        ('kind = "hmac"\npreset = "stripe"\nformat = "plain"\nsecrets = [{ value = "s" }]', "sources.x.format", 'preset = "stripe" sets it to \'fields\''),
        ('kind = "hmac"\npreset = "stripe"\nalgorithm = "sha512"\nsecrets = [{ value = "s" }]', "sources.x.algorithm", "sha256"),
        ('kind = "hmac"\npreset = "stripe"\nencoding = "base64"\nsecrets = [{ value = "s" }]', "sources.x.encoding", "hex"),
        ('kind = "hmac"\npreset = "stripe"\nprefix = "v1="\nsecrets = [{ value = "s" }]', "sources.x.prefix", 'not used with preset = "stripe"'),
        ('kind = "hmac"\npreset = "stripe"\nsigned = "body"\nsecrets = [{ value = "s" }]', "sources.x.signed", "timestamp+body"),
        ('kind = "hmac"\npreset = "stripe"\ntimestamp_header = "X-Ts"\nsecrets = [{ value = "s" }]', "sources.x.timestamp_header", 'not used with preset = "stripe"'),
        ('kind = "hmac"\npreset = "stripe"\nseparator = ","\nsecrets = [{ value = "s" }]', "sources.x.separator", "'.'"),
        ('kind = "hmac"\npreset = "stripe"\nsignature_field = "v0"\nsecrets = [{ value = "s" }]', "sources.x.signature_field", "v1"),
        ('kind = "hmac"\npreset = "stripe"\ntimestamp_field = "ts"\nsecrets = [{ value = "s" }]', "sources.x.timestamp_field", "'t'"),
        ('kind = "hmac"\npreset = "stripe"', "sources.x.secrets", "secret"),
        ('kind = "jwt"\nsecrets = [{ value = "s" }]\nalso = { kind = "hmac", preset = "stripe", header = "X-S", secrets = [{ value = "t" }] }', "sources.x.also.header", "stripe"),
        # The fields layout has no use for a prefix or a timestamp header.
        ('kind = "hmac"\nheader = "X-S"\nformat = "fields"\nprefix = "v1="\nsecrets = [{ value = "s" }]', "sources.x.prefix", "fields"),
        ('kind = "hmac"\nheader = "X-S"\nformat = "fields"\ntimestamp_header = "X-Ts"\nsecrets = [{ value = "s" }]', "sources.x.timestamp_header", "a field"),
        ('kind = "hmac"\nheader = "X-S"\nformat = "fields"\nsigned = "body"\nsecrets = [{ value = "s" }]', "sources.x.signed", "always signs the timestamp"),
        ('kind = "hmac"\nheader = "X-S"\nformat = "fields"\ntimestamp_field = "v1"\nsecrets = [{ value = "s" }]', "sources.x.signature_field", "differ"),
        ('kind = "hmac"\nheader = "X-S"\nformat = "fields"\nsignature_field = "v1="\nsecrets = [{ value = "s" }]', "sources.x.signature_field", "match"),
        ('kind = "hmac"\nheader = "X-S"\nformat = "csv"\nsecrets = [{ value = "s" }]', "sources.x.format", "csv"),
        ('kind = "hmac"\nformat = "fields"\nsecrets = [{ value = "s" }]', "sources.x.header", "required"),
        ('kind = "hmac"\nheader = "X-S"\ntimestamp_field = "ts"\nsecrets = [{ value = "s" }]', "sources.x.timestamp_field", 'format = "fields"'),
    ],
)  # fmt: skip
def test_mistakes_name_the_key(tmp_path, text, key, words):
    msg = error(tmp_path, f"[sources.x]\n{text}\n")

    assert key in msg
    assert words in msg


def test_a_jwt_key_file_that_is_not_a_key_is_refused_by_the_loader(tmp_path):
    (tmp_path / "bad.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nnot really\n-----END PUBLIC KEY-----\n"
    )
    settings = load(tmp_path, '[sources.ci]\nkind = "jwt"\nkey_file = "bad.pem"\n')

    # PEM-shaped, so the loader lets it pass; the receiver parses it before serving.
    with pytest.raises(ConfigError) as info:
        sources.Source("ci", settings.sources["ci"])
    assert "sources.ci.key_file" in str(info.value)


def test_a_jwks_file_with_an_unusable_key_names_the_key(tmp_path):
    (tmp_path / "jwks.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    settings = load(tmp_path, '[sources.ci]\nkind = "jwt"\nkey_file = "jwks.json"\n')

    with pytest.raises(ConfigError) as info:
        sources.Source("ci", settings.sources["ci"])
    assert "sources.ci.key_file" in str(info.value)
    assert "kty" in str(info.value)


def test_secret_errors_inside_any_kind_name_the_list(tmp_path):
    msg = error(tmp_path, '[sources.gl]\nkind = "gitlab"\ntoken = [{ env = "NOPE" }]\n')

    assert "sources.gl.token[0]" in msg
    assert "NOPE" in msg


def test_no_repr_of_any_kind_shows_a_secret(tmp_path):
    settings = load(
        tmp_path,
        '[sources.gl]\nkind = "gitlab"\ntoken = [{ value = "tok-secret-1" }]\n'
        '[sources.ci]\nkind = "jwt"\nsecrets = [{ value = "jwt-secret-2" }]\n'
        'also = { kind = "hookdeck", secrets = [{ value = "hd-secret-3" }] }\n',
    )

    shown = repr(settings) + str(settings.sources)
    assert "tok-secret-1" not in shown
    assert "jwt-secret-2" not in shown
    assert "hd-secret-3" not in shown
    assert isinstance(settings.sources["gl"], GitlabSource)
    assert settings.sources["gl"].token == [Secret(value="tok-secret-1")]


# --------------------------------------------------------------- hmac: Stripe and Convoy


def test_the_stripe_preset_loads_and_verifies_what_stripe_sends(tmp_path):
    settings = load(
        tmp_path,
        """
[sources.stripe]
kind = "hmac"
preset = "stripe"
secrets = [{ env = "STRIPE_NEW" }, { env = "STRIPE_OLD" }]
[sources.tolerant]
kind = "hmac"
preset = "stripe"
header = "Stripe-Signature"      # the preset's own value, in any case, may be repeated
algorithm = "sha256"
tolerance = 600                  # the tolerance is the source's to choose
secrets = [{ value = "whsec_tolerant" }]
""",
        {"STRIPE_NEW": "whsec_new", "STRIPE_OLD": "whsec_old"},
    )
    src = settings.sources["stripe"]
    assert isinstance(src, HmacSource)
    # The loader stores the preset's layout, so the receiver keeps the signature header.
    assert (src.header, src.format, src.timestamp_field, src.signature_field) == (
        "stripe-signature", "fields", "t", "v1",
    )  # fmt: skip
    assert (src.algorithm, src.encoding, src.separator, src.tolerance) == (
        "sha256",
        "hex",
        ".",
        300,
    )
    assert settings.sources["tolerant"].tolerance == 600

    body = b'{"id":"evt_1","type":"payment_intent.succeeded"}'
    now = 1_700_000_000
    source = sources.Source("stripe", src)
    for secret in ("whsec_new", "whsec_old"):
        value = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, now)
        headers = {"stripe-signature": value, "content-type": "application/json"}
        source.verify(headers, body, now)
        assert source.kept_headers(headers)["stripe-signature"] == value
    stale = stripe.WebhookSignature.generate_signature_header(body.decode(), "whsec_new", now)
    with pytest.raises(VerificationError) as info:
        source.verify({"stripe-signature": stale}, body, now + 301)
    assert info.value.reason == "stale_timestamp"
    tolerant = sources.Source("tolerant", settings.sources["tolerant"])
    value = stripe.WebhookSignature.generate_signature_header(body.decode(), "whsec_tolerant", now)
    tolerant.verify({"stripe-signature": value}, body, now + 600)


def test_a_preset_inside_also_is_filled_in_too(tmp_path):
    settings = load(
        tmp_path,
        '[sources.x]\nkind = "jwt"\nsecrets = [{ value = "jwt-secret" }]\n'
        'also = { kind = "hmac", preset = "stripe", secrets = [{ value = "whsec_x" }] }\n',
    )
    also = settings.sources["x"].also
    assert isinstance(also, HmacSource)
    assert (also.header, also.format) == ("stripe-signature", "fields")


def test_a_convoy_style_fields_header_by_config(tmp_path):
    settings = load(
        tmp_path,
        '[sources.convoy]\nkind = "hmac"\nheader = "X-Convoy-Signature"\nformat = "fields"\n'
        'separator = ","\ntolerance = 3153600000\nsecrets = [{ value = "convoy-webhook-secret" }]\n',
    )
    src = settings.sources["convoy"]
    assert isinstance(src, HmacSource)
    assert (src.timestamp_field, src.signature_field, src.signed) == (None, None, None)
    assert (src.layout()["timestamp_field"], src.layout()["signature_field"]) == ("t", "v1")
    body = b'{"event":"charge.success","amount":1000,"currency":"NGN"}'
    value = "t=1700000000,v1=77b8b9269f25a199846a55a2bd25b3fba151c70fdae60bb1dcd87fbbc943c55c"
    source = sources.Source("convoy", src)

    source.verify({"x-convoy-signature": value}, body, 1_700_000_000)
    with pytest.raises(VerificationError):
        source.verify({"x-convoy-signature": value}, body + b" ", 1_700_000_000)


def test_a_plain_hmac_source_keeps_its_meaning(tmp_path):
    settings = load(
        tmp_path,
        '[sources.x]\nkind = "hmac"\nheader = "X-Sig"\nsecrets = [{ value = "s" }]\n',
    )
    layout = settings.sources["x"].layout()
    assert (layout["format"], layout["signed"], layout["prefix"]) == ("plain", "body", "")


# --------------------------------------------------------------- jwt: strict kid


def write_jwks(tmp_path: Path, key: ec.EllipticCurvePrivateKey, kid: str | None) -> None:
    entry = {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "use": "sig"}
    if kid is not None:
        entry["kid"] = kid
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [entry]}))


def write_pem(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    (tmp_path / "key.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.mark.parametrize(
    ("keys", "strict_kid", "strict", "accepted"),
    [
        # (the keys, strict_kid as configured, as it holds, is a token naming "k9" accepted)
        ("jwks", None, True, False),  # a JWKS names its keys: strict by default
        ("jwks", "true", True, False),
        ("jwks", "false", False, True),  # asked to: the JWKS's key without a kid is tried
        ("pem", None, False, True),  # a PEM key has no kid: lenient by default
        ("pem", "false", False, True),
        ("pem", "true", True, False),
        ("secret", None, False, True),
        ("secret", "true", True, False),
    ],
)
def test_strict_kid_by_kind_of_key_and_by_choice(
    tmp_path, keys: str, strict_kid: str | None, strict: bool, accepted: bool
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    if keys == "jwks":
        write_jwks(tmp_path, private, kid=None)  # a JWKS key may lack a kid
        proof, signing, alg = 'key_file = "keys.json"', private, "ES256"
    elif keys == "pem":
        write_pem(tmp_path, private)
        proof, signing, alg = 'key_file = "key.pem"', private, "ES256"
    else:
        proof, signing, alg = (
            'secrets = [{ value = "jwt-secret-0123456789abcdef-0123456789" }]',
            None,
            "HS256",
        )
    choice = f"strict_kid = {strict_kid}\n" if strict_kid else ""
    settings = load(tmp_path, f'[sources.ci]\nkind = "jwt"\n{proof}\n{choice}')
    src = settings.sources["ci"]
    source = sources.Source("ci", src)
    key = signing or "jwt-secret-0123456789abcdef-0123456789"
    named = jwt.encode({"exp": 2_000_000_000}, key, algorithm=alg, headers={"kid": "k9"})
    unnamed = jwt.encode({"exp": 2_000_000_000}, key, algorithm=alg)

    assert src.kid_is_strict() is strict
    source.verify({"authorization": f"Bearer {unnamed}"}, b"{}", 1_700_000_000)
    if accepted:
        source.verify({"authorization": f"Bearer {named}"}, b"{}", 1_700_000_000)
    else:
        with pytest.raises(VerificationError) as info:
            source.verify({"authorization": f"Bearer {named}"}, b"{}", 1_700_000_000)
        assert info.value.reason == "unknown_kid"


def test_a_strict_jwks_still_accepts_the_kids_it_names(tmp_path):
    private = ec.generate_private_key(ec.SECP256R1())
    write_jwks(tmp_path, private, kid="k1")
    settings = load(tmp_path, '[sources.ci]\nkind = "jwt"\nkey_file = "keys.json"\n')
    source = sources.Source("ci", settings.sources["ci"])
    token = jwt.encode({"exp": 2_000_000_000}, private, algorithm="ES256", headers={"kid": "k1"})

    source.verify({"authorization": f"Bearer {token}"}, b"{}", 1_700_000_000)
