"""Source kinds in the config: each loads, and each mistake is an error naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
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
