"""Every source kind over real HTTP: published vectors, negative cases, policies, logs.

One receiver serves the whole module (each test uses its own sources or delivery ids);
what it records is read back from the real event log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import jwt
import pytest
import stripe
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hookbus_common.logs import JsonFormatter
from hookbus_receiver.config import ReceiverConfig
from hookbus_receiver.signatures import (
    SELFTEST_VECTORS,
    decode_standard_secret,
    sign_github,
    sign_hookdeck,
    sign_standard_webhooks,
)

from ..conftest import Servers
from .conftest import module_settings, recorded, serve_in_thread
from .logcapture import on_root_logger

pytestmark = pytest.mark.integration

GH = SELFTEST_VECTORS["github-sha256"]
SW = SELFTEST_VECTORS["standard-webhooks"]
GH_OLD = "gh-old-secret-4a1f"
SW_OTHER = base64.b64encode(b"second standard webhooks key!!").decode()  # no whsec_ prefix
GL_TOKEN = "gl-token-77c2e0"
GL_SIGNING = "whsec_" + base64.b64encode(b"gitlab signing token key 123456").decode()
HD_NEW, HD_OLD = "hd-new-secret-91b3", "hd-old-secret-52aa"
HM_SECRET = "hmac-secret-sha512-6d0e"
HM_BODY_SECRET = "hmac-body-secret-0b7c"
JWT_HS = "jwt-hs256-secret-0123456789abcdef0123456789"
BEARER = "bearer-token-3f9a1c"
BASIC = "deploy-bot:basic-pass-8e1d"
API_KEY = "api-key-2b6f4d"
RATE_TOKEN = "rate-limited-token-11aa"
STRIPE_SECRET = "whsec_stripe_current_5c1e9a77d0"  # as Stripe's dashboard shows it
STRIPE_OLD = "whsec_stripe_rolled_3b8f2c44e1"
CONVOY_SECRET = "convoy-endpoint-secret-8d2a"
ALL_SECRETS = [
    GH["secret"], GH_OLD, GL_TOKEN, GL_SIGNING, HD_NEW, HD_OLD, HM_SECRET, HM_BODY_SECRET,
    JWT_HS, BEARER, BASIC, API_KEY, RATE_TOKEN, SW_OTHER, SW["secret"], STRIPE_SECRET,
    STRIPE_OLD, CONVOY_SECRET,
]  # fmt: skip

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
# A key the JWKS lists without a kid: strict kid matching must not fall back to it.
RSA_UNNAMED = rsa.generate_private_key(public_exponent=65537, key_size=2048)

SOURCES = f"""
[sources.gh]
kind = "github"
secrets = [{{ value = "{GH_OLD}" }}, {{ env = "GH_SECRET" }}]

[sources.gh1]
kind = "github"
allow_sha1 = true
secrets = [{{ value = "{GH_OLD}" }}]

[sources.gl]
kind = "gitlab"
token = [{{ value = "{GL_TOKEN}" }}]

[sources.glboth]
kind = "gitlab"
token = [{{ value = "{GL_TOKEN}" }}]
signing = [{{ file = "gitlab-signing" }}]

[sources.sw]
kind = "standard-webhooks"
secrets = [{{ value = "{SW_OTHER}" }}, {{ value = "{SW["secret"]}" }}]

[sources.swvector]
kind = "standard-webhooks"
tolerance = 1e10          # the published vector is from 2021
secrets = [{{ value = "{SW["secret"]}" }}]

[sources.hd]
kind = "hookdeck"
secrets = [{{ value = "{HD_NEW}" }}, {{ value = "{HD_OLD}" }}]

[sources.hm]
kind = "hmac"
header = "X-Signature"
algorithm = "sha512"
encoding = "base64"
prefix = "v1="
signed = "timestamp+body"
timestamp_header = "X-Timestamp"
separator = ":"
tolerance = 60
secrets = [{{ value = "{HM_SECRET}" }}]
idempotency = {{ json_field = "event.id" }}
event_type = {{ json_field = "event.type" }}
fields = {{ repository = "repo.name", branch = "ref", commit = "sha" }}

[sources.hmbody]
kind = "hmac"
header = "X-Sig"
secrets = [{{ value = "{HM_BODY_SECRET}" }}]
idempotency = {{ header = "X-Request-Id" }}
event_type = {{ header = "X-Event", default = "change" }}

[sources.jwt]
kind = "jwt"
secrets = [{{ value = "{JWT_HS}" }}]
issuer = "ci.example.com"
audience = "hookbus"
required_claims = {{ run_id = "" }}

[sources.jwtrs]
kind = "jwt"
key_file = "keys/runner.pem"
algorithms = ["RS256"]
also = {{ kind = "hookdeck", secrets = [{{ value = "{HD_NEW}" }}] }}

[sources.jwks]
kind = "jwt"
key_file = "keys/runner-jwks.json"
algorithms = ["RS256"]

[sources.jwkslax]
kind = "jwt"
key_file = "keys/runner-jwks.json"
algorithms = ["RS256"]
strict_kid = false

[sources.jwtpem]
kind = "jwt"
key_file = "keys/runner.pem"
algorithms = ["RS256"]

[sources.jwtpemstrict]
kind = "jwt"
key_file = "keys/runner.pem"
algorithms = ["RS256"]
strict_kid = true

[sources.stripe]                         # as docs/sources.md shows it
kind = "hmac"
preset = "stripe"
secrets = [{{ env = "STRIPE_WEBHOOK_SECRET" }}, {{ value = "{STRIPE_OLD}" }}]
idempotency = {{ json_field = "id" }}
event_type = {{ json_field = "type" }}

[sources.convoy]
kind = "hmac"
header = "X-Convoy-Signature"
format = "fields"
separator = ","
algorithm = "sha512"
encoding = "base64"
secrets = [{{ value = "{CONVOY_SECRET}" }}]

[sources.tok]
kind = "token"
secrets = [{{ value = "{BEARER}" }}]

[sources.basic]
kind = "token"
mode = "basic"
secrets = [{{ value = "{BASIC}" }}]

[sources.apikey]
kind = "token"
mode = "header"
header = "X-Api-Key"
secrets = [{{ value = "{API_KEY}" }}]

[sources.open]
kind = "none"
unsigned = true
allow_ips = ["127.0.0.1/32", "::1/128"]

[sources.denied]
kind = "none"
unsigned = true
allow_ips = ["10.0.0.0/8"]

[sources.untrusting]
kind = "none"
unsigned = true
allow_ips = ["203.0.113.0/24"]

[sources.proxied]
kind = "none"
unsigned = true
allow_ips = ["203.0.113.0/24"]
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]

[sources.limited]
kind = "token"
secrets = [{{ value = "{RATE_TOKEN}" }}]
rate_limit = {{ per_second = 0.1, burst = 2 }}
"""


class Capture(logging.Handler):
    """Every record any logger emits while the module runs, formatted as in production."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.formatter_ = JsonFormatter("receiver")

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.formatter_.format(record))


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    handler = Capture()
    with on_root_logger(handler):
        yield handler


@pytest.fixture(scope="module")
def rsettings(servers: Servers, module_dir: Path, capture: Capture) -> ReceiverConfig:
    (module_dir / "keys").mkdir()
    (module_dir / "keys" / "runner.pem").write_bytes(
        RSA_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    named = jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    unnamed = jwt.algorithms.RSAAlgorithm.to_jwk(RSA_UNNAMED.public_key(), as_dict=True)
    (module_dir / "keys" / "runner-jwks.json").write_text(
        json.dumps({"keys": [{**named, "kid": "runner-1", "use": "sig"}, unnamed]})
    )
    (module_dir / "gitlab-signing").write_text(GL_SIGNING + "\n")
    return module_settings(
        servers, module_dir, SOURCES,
        env={"GH_SECRET": GH["secret"], "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET},
        receiver_toml="max_body_bytes = 65536",
    )  # fmt: skip


@pytest.fixture(scope="module")
def url(rsettings: ReceiverConfig) -> Iterator[str]:
    with serve_in_thread(rsettings) as base:
        yield base


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def body_of(**fields: object) -> bytes:
    return json.dumps({"n": uuid.uuid4().hex, **fields}).encode()


JSON = {"content-type": "application/json"}


def gh_headers(body: bytes, secret: str, event: str = "push") -> dict[str, str]:
    return {
        **JSON,
        "x-github-event": event,
        "x-github-delivery": str(uuid.uuid4()),
        "x-hub-signature-256": sign_github(body, secret.encode()),
    }


def sw_headers(body: bytes, secret: str, *, ts: int | None = None, msg_id: str = "") -> dict:
    ts = int(time.time()) if ts is None else ts
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    sig = sign_standard_webhooks(msg_id, ts, body, decode_standard_secret(secret))
    return {**JSON, "webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def hm_headers(body: bytes, secret: str = HM_SECRET, ts: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    digest = hmac.new(secret.encode(), stamp.encode() + b":" + body, hashlib.sha512).digest()
    return {
        **JSON,
        "x-timestamp": stamp,
        "x-signature": "v1=" + base64.b64encode(digest).decode(),
    }


def hmbody_headers(body: bytes, secret: str = HM_BODY_SECRET) -> dict[str, str]:
    return {**JSON, "x-sig": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def jwt_hs(**claims: object) -> str:
    now = int(time.time())
    base = {"iss": "ci.example.com", "aud": "hookbus", "exp": now + 60, "run_id": 7}
    return jwt.encode({**base, **claims}, JWT_HS, algorithm="HS256")


def jwt_rs(**claims: object) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, RSA_KEY, algorithm="RS256")


def jwt_kid(kid: str | None, key: rsa.RSAPrivateKey = RSA_KEY) -> dict[str, str]:
    headers = {"kid": kid} if kid is not None else None
    token = jwt.encode({"exp": int(time.time()) + 60}, key, algorithm="RS256", headers=headers)
    return {**JSON, "authorization": f"Bearer {token}"}


def stripe_event(event_type: str = "payment_intent.succeeded", **fields: object) -> bytes:
    event = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": event_type}
    return json.dumps({**event, **fields}).encode()


def stripe_headers(body: bytes, *secrets: str, ts: int | None = None) -> dict[str, str]:
    """Signed the way Stripe signs: its own library's header, one v1 per secret."""
    ts = int(time.time()) if ts is None else ts
    values = [
        stripe.WebhookSignature.generate_signature_header(body.decode(), secret, ts)
        for secret in secrets or (STRIPE_SECRET,)
    ]
    v1s = ",".join(v.split(",", 1)[1] for v in values)
    return {**JSON, "stripe-signature": f"t={ts},{v1s}"}


def convoy_headers(body: bytes, secret: str = CONVOY_SECRET, sep: bytes = b",") -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(secret.encode(), ts.encode() + sep + body, hashlib.sha512).digest()
    return {**JSON, "x-convoy-signature": f"t={ts},v1={base64.b64encode(digest).decode()}"}


def basic(creds: str) -> str:
    return "Basic " + base64.b64encode(creds.encode()).decode()


# --------------------------------------------------------------- accepted, per kind


def good_requests() -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(case, source, body, headers) that each source must accept."""
    b = {name: body_of(case=name) for name in "abcdefghijklmnopqrstu"}
    e = [stripe_event(case=i) for i in range(4)]
    gl = {**JSON, "x-gitlab-event": "Push Hook", "x-gitlab-token": GL_TOKEN}
    sha1 = "sha1=" + hmac.new(GH_OLD.encode(), b["c"], hashlib.sha1).hexdigest()
    return [
        ("github, current secret", "gh", b["a"], gh_headers(b["a"], GH["secret"])),
        ("github, rotated-out secret still listed", "gh", b["b"], gh_headers(b["b"], GH_OLD)),
        ("github sha1 where enabled", "gh1", b["c"], {**JSON, "x-hub-signature": sha1}),
        ("gitlab token", "gl", b["d"], gl),
        (
            "gitlab token and signing token",
            "glboth", b["e"], {**sw_headers(b["e"], GL_SIGNING), **gl},
        ),
        ("standard webhooks, whsec_ secret", "sw", b["f"], sw_headers(b["f"], SW["secret"])),
        ("standard webhooks, bare base64 secret", "sw", b["g"], sw_headers(b["g"], SW_OTHER)),
        (
            "standard webhooks, junk and a stale key's signature beside the good one",
            "sw", b["h"],
            {
                **(h := sw_headers(b["h"], SW["secret"])),
                "webhook-signature": "v1,junk!! v2,abc v1,"
                + base64.b64encode(b"x" * 32).decode() + " " + h["webhook-signature"],
            },
        ),
        ("hookdeck", "hd", b["i"], {**JSON, "x-hookdeck-signature": sign_hookdeck(b["i"], HD_NEW.encode())}),
        (
            "hookdeck rotation: junk first signature, old secret in -2",
            "hd", b["j"],
            {**JSON, "x-hookdeck-signature": "bm90IGEgc2lnbmF0dXJl",
             "x-hookdeck-signature-2": sign_hookdeck(b["j"], HD_OLD.encode())},
        ),
        ("hmac sha512 base64 timestamped", "hm", b["k"], hm_headers(b["k"])),
        ("hmac sha256 hex body", "hmbody", b["l"], hmbody_headers(b["l"])),
        ("jwt hs256", "jwt", b["m"], {**JSON, "authorization": f"Bearer {jwt_hs()}"}),
        (
            "jwt rs256 from a key file, and hookdeck",
            "jwtrs", b["n"],
            {**JSON, "authorization": f"Bearer {jwt_rs()}",
             "x-hookdeck-signature": sign_hookdeck(b["n"], HD_NEW.encode())},
        ),
        ("bearer token", "tok", b["o"], {**JSON, "authorization": f"Bearer {BEARER}"}),
        ("basic auth", "basic", b["p"], {**JSON, "authorization": basic(BASIC)}),
        ("api key header", "apikey", b["q"], {**JSON, "x-api-key": API_KEY}),
        ("unsigned from an allowed address", "open", b["r"], JSON),
        ("+json content type", "tok", b["s"], {"content-type": "application/vnd.acme+json",
                                               "authorization": f"Bearer {BEARER}"}),
        ("stripe, signed by Stripe's own library", "stripe", e[0], stripe_headers(e[0])),
        ("stripe, a secret still listed after rolling", "stripe", e[1], stripe_headers(e[1], STRIPE_OLD)),
        ("stripe rolling its secret: a v1 for each", "stripe", e[2], stripe_headers(e[2], "whsec_unknown", STRIPE_SECRET)),
        (
            "stripe, a v0 beside the v1", "stripe", e[3],
            {**(h := stripe_headers(e[3])), "stripe-signature": h["stripe-signature"] + ",v0=" + "0" * 64},
        ),
        ("convoy advanced signature", "convoy", b["t"], convoy_headers(b["t"])),
        ("jwks, the kid it names", "jwks", b["u"], jwt_kid("runner-1")),
        ("jwks, no kid: every key is tried", "jwks", b["u"], jwt_kid(None, RSA_UNNAMED)),
        ("jwks not strict: unknown kid, unnamed key", "jwkslax", b["u"], jwt_kid("elsewhere", RSA_UNNAMED)),
        ("pem: a kid, though the key has none", "jwtpem", b["u"], jwt_kid("whatever")),
        ("pem strict: no kid", "jwtpemstrict", b["u"], jwt_kid(None)),
    ]  # fmt: skip


def built_now(
    make: Callable[[], list[tuple[str, str, bytes, dict[str, str]]]], case: str
) -> tuple[str, bytes, dict[str, str]]:
    """The request of ``case``, signed now: timestamps and token expiries made at collection
    would go stale while a long suite runs."""
    _, source, body, headers = next(r for r in make() if r[0] == case)
    return source, body, headers


@pytest.mark.parametrize("case", [g[0] for g in good_requests()])
async def test_each_kind_accepts_what_its_sender_sends(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient, case: str
) -> None:
    source, body, headers = built_now(good_requests, case)
    r = await client.post(f"{url}/hooks/{source}", content=body, headers=headers)

    assert r.status_code == 202, r.text
    rows = [x for x in await recorded(rsettings, source) if x.id == r.json()["id"]]
    assert len(rows) == 1
    assert rows[0].raw_body == body
    assert rows[0].data.kind == rsettings.sources[source].kind


async def test_published_github_vector_passes_the_signature_check(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    body = GH["body"].encode()  # "Hello, World!": signed right, but not a JSON object
    headers = {**JSON, "x-hub-signature-256": GH["signature"], "x-github-event": "ping"}

    r = await client.post(f"{url}/hooks/gh", content=body, headers=headers)
    tampered = await client.post(f"{url}/hooks/gh", content=body + b"!", headers=headers)

    # 400 (not 401): the published signature verified, then the body was refused.
    assert (r.status_code, r.json()["error"]) == (400, "bad_body")
    assert tampered.status_code == 401


async def test_published_standard_webhooks_vector_is_accepted_once(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    headers = {
        **JSON, "webhook-id": SW["id"], "webhook-timestamp": SW["timestamp"],
        "webhook-signature": SW["signature"],
    }  # fmt: skip

    first = await client.post(f"{url}/hooks/swvector", content=SW["body"], headers=headers)
    replay = await client.post(f"{url}/hooks/swvector", content=SW["body"], headers=headers)
    # The same vector is stale for a source with the default five-minute tolerance.
    stale = await client.post(f"{url}/hooks/sw", content=SW["body"], headers=headers)

    assert first.status_code == 202
    assert (replay.status_code, replay.json()) == (
        200,
        {"id": first.json()["id"], "duplicate": True},
    )
    assert stale.status_code == 401
    rows = await recorded(rsettings, "swvector")
    assert [x.data.delivery_id for x in rows] == [SW["id"]]


# --------------------------------------------------------------- refused, per kind


def bad_requests() -> list[tuple[str, str, bytes, dict[str, str]]]:
    b = body_of(case="bad")
    old = int(time.time()) - 3600
    gl = {**JSON, "x-gitlab-event": "Push Hook"}
    return [
        ("github tampered body", "gh", b + b" ", gh_headers(b, GH["secret"])),
        ("github wrong secret", "gh", b, gh_headers(b, "wrong")),
        ("github missing header", "gh", b, {**JSON, "x-github-event": "push"}),
        ("github sha1 where not enabled", "gh", b, {**JSON, "x-hub-signature": "sha1=" + hmac.new(GH_OLD.encode(), b, hashlib.sha1).hexdigest()}),
        ("github junk signature", "gh", b, {**JSON, "x-hub-signature-256": "sha256=zz"}),
        ("gitlab wrong token", "gl", b, {**gl, "x-gitlab-token": GL_TOKEN + "x"}),
        ("gitlab missing token", "gl", b, gl),
        ("gitlab token but no signing token", "glboth", b, {**gl, "x-gitlab-token": GL_TOKEN}),
        ("gitlab signing but no token", "glboth", b, {**gl, **sw_headers(b, GL_SIGNING)}),
        ("standard webhooks stale", "sw", b, sw_headers(b, SW["secret"], ts=old)),
        ("standard webhooks future", "sw", b, sw_headers(b, SW["secret"], ts=int(time.time()) + 3600)),
        ("standard webhooks tampered", "sw", b + b" ", sw_headers(b, SW["secret"])),
        ("standard webhooks wrong secret", "sw", b, sw_headers(b, GL_SIGNING)),
        ("standard webhooks only junk", "sw", b, {**sw_headers(b, SW["secret"]), "webhook-signature": "v1,AAAA v1a,zz"}),
        ("standard webhooks missing id", "sw", b, {k: v for k, v in sw_headers(b, SW["secret"]).items() if k != "webhook-id"}),
        ("hookdeck wrong secret", "hd", b, {**JSON, "x-hookdeck-signature": sign_hookdeck(b, b"nope")}),
        ("hookdeck tampered", "hd", b + b"\n", {**JSON, "x-hookdeck-signature": sign_hookdeck(b, HD_NEW.encode())}),
        ("hookdeck missing", "hd", b, JSON),
        ("hmac stale", "hm", b, hm_headers(b, ts=old)),
        ("hmac wrong secret", "hm", b, hm_headers(b, secret="nope")),
        ("hmac missing timestamp", "hm", b, {k: v for k, v in hm_headers(b).items() if k != "x-timestamp"}),
        ("hmac without its prefix", "hm", b, {**(h := hm_headers(b)), "x-signature": h["x-signature"][3:]}),
        ("hmac body tampered", "hmbody", b + b" ", hmbody_headers(b)),
        ("jwt expired", "jwt", b, {**JSON, "authorization": f"Bearer {jwt_hs(exp=int(time.time()) - 10)}"}),
        ("jwt wrong audience", "jwt", b, {**JSON, "authorization": f"Bearer {jwt_hs(aud='other')}"}),
        ("jwt wrong issuer", "jwt", b, {**JSON, "authorization": f"Bearer {jwt_hs(iss='evil')}"}),
        ("jwt missing required claim", "jwt", b, {**JSON, "authorization": "Bearer " + jwt.encode({"iss": "ci.example.com", "aud": "hookbus", "exp": int(time.time()) + 60}, JWT_HS, algorithm="HS256")}),
        ("jwt alg none", "jwt", b, {**JSON, "authorization": "Bearer " + jwt.encode({"iss": "ci.example.com"}, None, algorithm="none") + "x"}),
        ("jwt signed with the wrong key", "jwt", b, {**JSON, "authorization": "Bearer " + jwt.encode({"iss": "ci.example.com", "aud": "hookbus", "run_id": 1}, "other-secret-0123456789abcdef0123", algorithm="HS256")}),
        ("jwt good but hookdeck missing", "jwtrs", b, {**JSON, "authorization": f"Bearer {jwt_rs()}"}),
        ("hookdeck good but jwt missing", "jwtrs", b, {**JSON, "x-hookdeck-signature": sign_hookdeck(b, HD_NEW.encode())}),
        ("bearer wrong", "tok", b, {**JSON, "authorization": "Bearer nope"}),
        ("bearer as basic", "tok", b, {**JSON, "authorization": basic(BEARER)}),
        ("basic wrong password", "basic", b, {**JSON, "authorization": basic("deploy-bot:nope")}),
        ("api key missing", "apikey", b, {**JSON, "authorization": f"Bearer {API_KEY}"}),
        ("stripe stale", "stripe", b, stripe_headers(b, ts=old)),
        ("stripe from the future", "stripe", b, stripe_headers(b, ts=int(time.time()) + 3600)),
        ("stripe tampered", "stripe", b + b" ", stripe_headers(b)),
        ("stripe wrong secret", "stripe", b, stripe_headers(b, "whsec_not_ours")),
        ("stripe v0 only", "stripe", b, {**JSON, "stripe-signature": stripe_headers(b)["stripe-signature"].replace("v1=", "v0=")}),
        ("stripe missing header", "stripe", b, JSON),
        ("stripe signature in a header of its own", "stripe", b, {**JSON, "x-signature": stripe_headers(b)["stripe-signature"]}),
        ("convoy signed with the wrong separator", "convoy", b, convoy_headers(b, sep=b".")),
        ("convoy wrong secret", "convoy", b, convoy_headers(b, secret="nope")),
        ("jwks, a kid it does not name, unnamed key", "jwks", b, jwt_kid("elsewhere", RSA_UNNAMED)),
        ("jwks, a kid it does not name, named key", "jwks", b, jwt_kid("elsewhere")),
        ("jwks, its kid on another key's token", "jwks", b, jwt_kid("runner-1", RSA_UNNAMED)),
        ("pem strict: a kid the key does not have", "jwtpemstrict", b, jwt_kid("whatever")),
    ]  # fmt: skip


@pytest.mark.parametrize("case", [b[0] for b in bad_requests()])
async def test_each_kind_refuses_what_does_not_prove_the_sender(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient, case: str
) -> None:
    source, body, headers = built_now(bad_requests, case)
    before = len(await recorded(rsettings, source))

    r = await client.post(f"{url}/hooks/{source}", content=body, headers=headers)

    assert r.status_code == 401, r.text
    # Every failure looks the same from outside: the reason is only in our logs.
    assert r.content == b'{"error":"unauthorized"}'
    assert len(await recorded(rsettings, source)) == before


async def test_rejections_are_counted_by_reason(url: str, client: httpx.AsyncClient) -> None:
    b = body_of()
    await client.post(f"{url}/hooks/gh", content=b, headers=gh_headers(b, "wrong"))

    metrics = (await client.get(f"{url}/metrics")).text

    assert 'hookbus_receiver_rejected_total{reason="bad_signature",source="gh"}' in metrics
    assert 'hookbus_receiver_requests_total{outcome="unauthorized",source="gh"}' in metrics


@pytest.mark.parametrize(
    ("source", "make", "reason"),
    [
        ("jwks", lambda b: jwt_kid("elsewhere", RSA_UNNAMED), "unknown_kid"),
        ("jwtpemstrict", lambda b: jwt_kid("whatever"), "unknown_kid"),
        ("stripe", lambda b: stripe_headers(b, ts=int(time.time()) - 400), "stale_timestamp"),
        ("stripe", lambda b: {**JSON, "stripe-signature": "v1=" + "a" * 64}, "malformed_signature"),
        ("convoy", lambda b: convoy_headers(b, sep=b"."), "bad_signature"),
    ],
)
async def test_new_checks_count_their_reasons(
    url: str, client: httpx.AsyncClient, source: str, make: Callable[[bytes], dict], reason: str
) -> None:
    b = body_of()
    r = await client.post(f"{url}/hooks/{source}", content=b, headers=make(b))

    assert r.status_code == 401
    metrics = (await client.get(f"{url}/metrics")).text
    assert f'hookbus_receiver_rejected_total{{reason="{reason}",source="{source}"}}' in metrics


async def test_a_stripe_retry_is_recorded_once_and_can_be_reverified_by_stripe(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    body = stripe_event("invoice.paid", data={"object": {"id": "in_1"}})
    # Stripe retries an event with a fresh timestamp and signature, and the same id.
    first = await client.post(f"{url}/hooks/stripe", content=body, headers=stripe_headers(body))
    retry = await client.post(
        f"{url}/hooks/stripe", content=body,
        headers=stripe_headers(body, ts=int(time.time()) + 1),
    )  # fmt: skip

    assert first.status_code == 202, first.text
    assert (retry.status_code, retry.json()) == (200, {"id": first.json()["id"], "duplicate": True})
    (row,) = [x for x in await recorded(rsettings, "stripe") if x.id == first.json()["id"]]
    assert row.data.delivery_id == json.loads(body)["id"]
    assert row.data.event_type == "invoice.paid"
    # What was kept is enough for Stripe's own library to verify the delivery again.
    event = stripe.Webhook.construct_event(
        row.raw_body, row.data.headers["stripe-signature"], STRIPE_SECRET
    )
    assert event["type"] == "invoice.paid"


# --------------------------------------------------------------- facts and idempotency


async def test_gitlab_facts_and_event_type(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    body = json.dumps({
        "object_kind": "push", "ref": "refs/heads/main", "checkout_sha": "da1560886d4f094c",
        "user_username": "jsmith", "project": {"path_with_namespace": "acme/api"},
    }).encode()  # fmt: skip
    headers = {
        **JSON, "x-gitlab-event": "Push Hook", "x-gitlab-token": GL_TOKEN,
        "x-gitlab-event-uuid": str(uuid.uuid4()),
    }  # fmt: skip

    r = await client.post(f"{url}/hooks/gl", content=body, headers=headers)

    assert r.status_code == 202
    (row,) = [x for x in await recorded(rsettings, "gl") if x.id == r.json()["id"]]
    d = row.data
    assert (d.event_type, d.repository, d.branch, d.commit, d.sender) == (
        "push_hook", "acme/api", "main", "da1560886d4f094c", "jsmith",
    )  # fmt: skip
    assert d.delivery_id == headers["x-gitlab-event-uuid"]
    assert "x-gitlab-token" not in d.headers


async def test_idempotency_from_a_json_field_and_event_type_from_another(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    event_id = f"ev-{uuid.uuid4().hex}"
    first_body = json.dumps({"event": {"id": event_id, "type": "deploy.done"}, "repo": {"name": "acme/web"}, "ref": "refs/tags/v2", "sha": "abc"}).encode()  # fmt: skip
    again_body = json.dumps({"event": {"id": event_id, "type": "deploy.done"}, "retry": 1}).encode()

    first = await client.post(f"{url}/hooks/hm", content=first_body, headers=hm_headers(first_body))
    again = await client.post(f"{url}/hooks/hm", content=again_body, headers=hm_headers(again_body))

    assert first.status_code == 202
    assert (again.status_code, again.json()) == (200, {"id": first.json()["id"], "duplicate": True})
    rows = [x for x in await recorded(rsettings, "hm") if x.data.delivery_id == event_id]
    assert len(rows) == 1
    d = rows[0].data
    assert (d.event_type, d.repository, d.tag, d.branch, d.commit) == (
        "deploy.done",
        "acme/web",
        "v2",
        None,
        "abc",
    )


async def test_idempotency_from_a_configured_header_and_event_type_from_a_header(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    request_id = uuid.uuid4().hex
    bodies = [body_of(i=i) for i in range(3)]
    sent = [
        (bodies[0], {"x-request-id": request_id, "x-event": "build.finished"}),
        (bodies[1], {"x-request-id": request_id}),  # same delivery, retried
        (bodies[2], {"x-request-id": request_id + "-2"}),  # another delivery, no event header
    ]
    rs = [
        await client.post(f"{url}/hooks/hmbody", content=b, headers={**hmbody_headers(b), **h})
        for b, h in sent
    ]

    assert [r.status_code for r in rs] == [202, 200, 202]
    assert rs[1].json()["id"] == rs[0].json()["id"]
    rows = {x.id: x.data for x in await recorded(rsettings, "hmbody")}
    assert rows[rs[0].json()["id"]].event_type == "build.finished"
    assert rows[rs[2].json()["id"]].event_type == "change"  # the configured default
    assert rows[rs[0].json()["id"]].headers["x-request-id"] == request_id


async def test_a_long_delivery_id_is_still_deduplicated(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    headers = {"x-request-id": "r" * 4000 + uuid.uuid4().hex}
    bodies = [body_of(), body_of()]
    rs = [
        await client.post(
            f"{url}/hooks/hmbody", content=b, headers={**hmbody_headers(b), **headers}
        )
        for b in bodies
    ]

    assert [r.status_code for r in rs] == [202, 200]


# --------------------------------------------------------------- bodies


async def test_github_form_encoded_payload_is_accepted(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    payload = json.dumps({"ref": "refs/heads/dev", "repository": {"full_name": "acme/app"}})
    body = urllib.parse.urlencode({"payload": payload}).encode()
    headers = {
        **gh_headers(body, GH["secret"]),
        "content-type": "application/x-www-form-urlencoded",
    }

    r = await client.post(f"{url}/hooks/gh", content=body, headers=headers)

    assert r.status_code == 202, r.text
    (row,) = [x for x in await recorded(rsettings, "gh") if x.id == r.json()["id"]]
    assert row.raw_body == body  # what was signed, byte for byte
    assert json.loads(row.data_json)["payload"] == json.loads(payload)
    assert (row.data.repository, row.data.branch) == ("acme/app", "dev")
    assert row.data.content_type == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"action=opened", "no payload field"), (b"payload=%7Bnot+json", "not valid JSON"),
     (b"payload=%5B1%5D", "JSON object")],
)  # fmt: skip
async def test_a_form_without_a_json_object_payload_is_400(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient, body: bytes, reason: str
) -> None:
    headers = {
        **gh_headers(body, GH["secret"]),
        "content-type": "application/x-www-form-urlencoded",
    }
    before = len(await recorded(rsettings, "gh"))

    r = await client.post(f"{url}/hooks/gh", content=body, headers=headers)

    assert r.status_code == 400
    assert reason in r.json()["detail"]
    assert len(await recorded(rsettings, "gh")) == before


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/xml", "multipart/form-data; boundary=x"]
)
async def test_other_content_types_are_415_before_the_signature_is_checked(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient, ctype: str
) -> None:
    body = body_of()
    before = len(await recorded(rsettings, "gh"))

    r = await client.post(
        f"{url}/hooks/gh", content=body,
        headers={**gh_headers(body, "not even the right secret"), "content-type": ctype},
    )  # fmt: skip

    assert (r.status_code, r.json()["error"]) == (415, "unsupported_media_type")
    assert len(await recorded(rsettings, "gh")) == before


# --------------------------------------------------------------- addresses and rates


async def test_an_address_outside_the_allow_list_gets_the_unknown_path_answer(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    nowhere = await client.post(f"{url}/no/such/path", content=b"{}", headers=JSON)

    denied = await client.post(f"{url}/hooks/denied", content=b"{}", headers=JSON)
    # Without trusted proxies X-Forwarded-For is the client's own claim, and ignored.
    forged = await client.post(
        f"{url}/hooks/untrusting", content=b"{}", headers={**JSON, "x-forwarded-for": "203.0.113.9"}
    )

    for r in (denied, forged):
        assert (r.status_code, r.content) == (nowhere.status_code, nowhere.content)
    assert await recorded(rsettings, "denied") == []
    assert await recorded(rsettings, "untrusting") == []
    metrics = (await client.get(f"{url}/metrics")).text
    assert 'hookbus_receiver_rejected_total{reason="ip_denied",source="denied"}' in metrics


@pytest.mark.parametrize(
    ("forwarded_for", "status", "client_ip"),
    [
        ("203.0.113.5", 202, "203.0.113.5"),
        # Left of the right-most untrusted hop is the client's own claim: not believed.
        ("198.51.100.7, 203.0.113.6", 202, "203.0.113.6"),
        ("203.0.113.5, 198.51.100.7", 404, None),
        # Trusted proxies in the chain are skipped.
        ("203.0.113.8, 10.1.2.3", 202, "203.0.113.8"),
        ("not-an-address", 404, None),
        (None, 404, None),  # the peer itself, 127.0.0.1, is not allowed
    ],
)
async def test_forwarded_for_is_read_right_to_left_through_trusted_proxies(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient,
    forwarded_for: str | None, status: int, client_ip: str | None,
) -> None:  # fmt: skip
    headers = {**JSON, **({"x-forwarded-for": forwarded_for} if forwarded_for else {})}
    body = body_of()

    r = await client.post(f"{url}/hooks/proxied", content=body, headers=headers)

    assert r.status_code == status
    if client_ip is not None:
        (row,) = [x for x in await recorded(rsettings, "proxied") if x.id == r.json()["id"]]
        assert row.data.remote_addr == client_ip


async def test_rate_limit_answers_429_with_retry_after(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    headers = {**JSON, "authorization": f"Bearer {RATE_TOKEN}"}

    rs = [await client.post(f"{url}/hooks/limited", content=body_of(), headers=headers) for _ in range(3)]  # fmt: skip

    assert [r.status_code for r in rs] == [202, 202, 429]
    # 0.1 a second: the next token is about ten seconds away.
    assert 8 <= int(rs[2].headers["retry-after"]) <= 10
    assert len(await recorded(rsettings, "limited")) == 2


# --------------------------------------------------------------- real GitHub payloads

EXAMPLES = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "data" / "github-webhook-examples.jsonl")
    .read_text()
    .splitlines()
]


async def test_real_github_example_payloads_are_accepted_with_their_event_type(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    assert len(EXAMPLES) == 58
    ids: dict[str, str] = {}
    for example in EXAMPLES:
        body = json.dumps(example["payload"], indent=2).encode()  # GitHub sends pretty JSON
        r = await client.post(
            f"{url}/hooks/gh", content=body,
            headers=gh_headers(body, GH["secret"], event=example["event"]),
        )  # fmt: skip
        assert r.status_code == 202, (example["event"], r.text)
        ids[r.json()["id"]] = example["event"]

    rows = {x.id: x for x in await recorded(rsettings, "gh") if x.id in ids}
    assert {i: x.data.event_type for i, x in rows.items()} == ids
    push = next(x.data for x in rows.values() if x.data.event_type == "push")
    assert push.repository is not None
    assert push.sender is not None
    assert push.commit is not None


# --------------------------------------------------------------- secrets stay secret


async def test_no_secret_or_token_reaches_the_logs_or_the_event_log(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient, capture: Capture
) -> None:
    # Good and bad requests carrying every kind of credential, as tokens and headers.
    for _, source, body, headers in [*good_requests(), *bad_requests()]:
        await client.post(f"{url}/hooks/{source}", content=body, headers=headers)
    bad_tokens = {
        "tok": {"authorization": f"Bearer {BEARER}x"},
        "basic": {"authorization": basic(BASIC + "x")},
        "apikey": {"x-api-key": API_KEY + "x"},
        "gl": {"x-gitlab-token": GL_TOKEN + "x"},
    }
    for source, headers in bad_tokens.items():
        await client.post(f"{url}/hooks/{source}", content=b"{}", headers={**JSON, **headers})

    # Something was logged (the rejections), so the check below is not vacuous.
    assert any("rejected delivery" in line for line in capture.lines)
    credentials = [*ALL_SECRETS, base64.b64encode(BASIC.encode()).decode()]
    logged = "\n".join(capture.lines)
    rows = await recorded(rsettings)
    stored = "\n".join(x.data_json for x in rows)
    for secret in credentials:
        assert secret not in logged
        assert secret not in stored
    # Bearer credentials (tokens, JWTs) are not kept with the event either.
    kept = {h for x in rows for h in x.data.headers}
    assert "x-hub-signature-256" in kept  # signatures are kept: they prove nothing reusable
    assert not kept & {"authorization", "x-api-key", "x-gitlab-token"}
