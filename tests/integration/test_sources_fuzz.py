"""Random headers and bodies at every source kind, the partner URL and the image-push URL:
always an answer, never a 5xx, and the event log holds exactly what was accepted.

Unsigned random requests to a kind that checks a proof are all refused (4xx) and record
nothing. Hostile bodies (deep nesting, invalid or odd UTF-8, NUL and control characters
in every JSON position, huge numbers, duplicate keys), a share of them validly signed,
are accepted only when they are JSON objects the event log can store, and recorded byte
for byte. Hypothesis runs derandomized with a fixed number of examples: CI sees the same
requests every run, in a few seconds per target.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hookbus_common import eventlog
from hookbus_common.db import open_pool
from hookbus_receiver import partnerstore as store
from hookbus_receiver import webhookurl
from hookbus_receiver.config import ReceiverConfig
from hookbus_receiver.signatures import (
    decode_standard_secret,
    sign_github,
    sign_hookdeck,
    sign_standard_webhooks,
)

from ..conftest import Servers
from .conftest import module_settings, recorded, serve_in_thread

pytestmark = pytest.mark.integration

SOURCES = """
[sources.github]
kind = "github"
allow_sha1 = true
secrets = [{ value = "fuzz-github" }]
[sources.gitlab]
kind = "gitlab"
token = [{ value = "fuzz-gitlab" }]
signing = [{ value = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }]
[sources.standard]
kind = "standard-webhooks"
secrets = [{ value = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }]
[sources.hookdeck]
kind = "hookdeck"
secrets = [{ value = "fuzz-hookdeck" }]
[sources.hmac]
kind = "hmac"
header = "X-Signature"
prefix = "sha256="
signed = "timestamp+body"
timestamp_header = "X-Timestamp"
secrets = [{ value = "fuzz-hmac" }]
idempotency = { json_field = "event.id" }
event_type = { json_field = "type" }
[sources.jwt]
kind = "jwt"
secrets = [{ value = "fuzz-jwt-secret-0123456789abcdef" }]
audience = "hookbus"
also = { kind = "hookdeck", secrets = [{ value = "fuzz-hookdeck" }] }
[sources.token]
kind = "token"
mode = "basic"
secrets = [{ value = "user:fuzz-pass" }]
[sources.apikey]
kind = "token"
mode = "header"
header = "X-Api-Key"
secrets = [{ value = "fuzz-key" }]
[sources.open]
kind = "none"
unsigned = true
allow_ips = ["203.0.113.0/24"]
trusted_proxies = ["127.0.0.1/32"]
idempotency = { header = "X-Request-Id" }
event_type = { header = "X-Event" }
"""
SIGNED = ["github", "gitlab", "standard", "hookdeck", "hmac", "jwt", "token", "apikey"]

# Headers the kinds read, plus noise; values are what HTTP allows (visible ASCII and
# spaces), often shaped like the real thing but never the real credential (basic auth of
# user:fuzz-wrong, not user:fuzz-pass): these requests must all be refused.
HEADER_NAMES = [
    "x-hub-signature-256", "x-hub-signature", "x-github-event", "x-github-delivery",
    "x-gitlab-token", "x-gitlab-event", "x-gitlab-event-uuid", "idempotency-key",
    "webhook-id", "webhook-timestamp", "webhook-signature", "x-hookdeck-signature",
    "x-hookdeck-signature-2", "x-signature", "x-timestamp", "authorization", "x-api-key",
    "x-forwarded-for", "x-request-id", "x-event", "x-anything",
]  # fmt: skip
VALUE = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
    st.sampled_from(
        ["sha256=", "sha1=00", "v1,", "v1,AAAA v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
         "Bearer ", "Basic ", "Basic dXNlcjpmdXp6LXdyb25n", "Bearer a.b.c", "1614265330",
         "0", "99999999999999999999", "203.0.113.4", "203.0.113.4, 127.0.0.1", "::1", " "]
    ),
)  # fmt: skip
# h11 (the client) refuses values with surrounding whitespace, as servers may.
HEADERS = st.dictionaries(st.sampled_from(HEADER_NAMES), VALUE.map(str.strip), max_size=8)
CONTENT_TYPE = st.sampled_from(
    ["application/json", "application/x-www-form-urlencoded", "text/plain",
     "application/cloudevents+json", "application/json; charset=utf-8", ""]
)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
BODY = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(lambda v: httpx.Request("POST", "/", json=v).content),
    st.fixed_dictionaries(
        {"event": st.fixed_dictionaries({"id": VALUE}), "type": VALUE, "payload": JSON_VALUES}
    ).map(lambda v: httpx.Request("POST", "/", json=v).content),
    st.text(max_size=100).map(lambda t: b"payload=" + t.encode()),
)
# Derandomized: the same examples every run, so CI is deterministic; no example database.
FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HOSTILE = settings(FUZZ, max_examples=120)


@pytest.fixture(scope="module")
def fsettings(servers: Servers, module_dir: Path) -> ReceiverConfig:
    # Room for bodies nested thousands of levels deep; larger ones still meet the limit.
    return module_settings(servers, module_dir, SOURCES, receiver_toml="max_body_bytes = 8192")


@pytest.fixture(scope="module")
def url(fsettings: ReceiverConfig) -> Iterator[str]:
    with serve_in_thread(fsettings) as base:
        yield base


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def post(http: httpx.Client, url: str, headers: dict[str, str], ctype: str, body: bytes) -> int:
    if ctype:
        headers = {**headers, "content-type": ctype}
    return http.post(url, content=body, headers=headers).status_code


@pytest.mark.parametrize("source", SIGNED)
def test_random_requests_to_a_signed_source_are_refused_and_record_nothing(
    url: str, fsettings: ReceiverConfig, http: httpx.Client, source: str
) -> None:
    statuses: list[int] = []

    @FUZZ
    @given(headers=HEADERS, ctype=CONTENT_TYPE, body=BODY)
    def check(headers: dict[str, str], ctype: str, body: bytes) -> None:
        status = post(http, f"{url}/hooks/{source}", headers, ctype, body)
        statuses.append(status)
        assert 400 <= status < 500, status

    check()

    assert len(statuses) >= 10
    assert asyncio.run(recorded(fsettings, source)) == []


def test_random_requests_to_an_unsigned_source_record_exactly_what_was_accepted(
    url: str, fsettings: ReceiverConfig, http: httpx.Client
) -> None:
    accepted: set[str] = set()

    ok = {"x-forwarded-for": "203.0.113.4"}

    @FUZZ
    @given(headers=HEADERS, ctype=CONTENT_TYPE, body=BODY)
    # Bodies Postgres's json type is picky about, from an allowed client.
    @example(
        headers=ok, ctype="application/json", body=rb'{"nul": "\u0000", "pair": "\ud83d\ude00"}'
    )
    @example(headers=ok, ctype="application/json", body=rb'{"lone": "\ud800"}')
    @example(headers=ok, ctype="application/json", body=b'{"big": 1e400, "deep": [[[[[[]]]]]]}')
    def check(headers: dict[str, str], ctype: str, body: bytes) -> None:
        r = http.post(
            f"{url}/hooks/open",
            content=body,
            headers={**headers, **({"content-type": ctype} if ctype else {})},
        )
        assert r.status_code in (200, 202) or 400 <= r.status_code < 500, r.status_code
        if r.status_code in (200, 202):
            accepted.add(r.json()["id"])

    check()

    assert accepted  # the explicit examples at least
    assert {x.id for x in asyncio.run(recorded(fsettings, "open"))} == accepted


# ------------------------------------------------------------------ hostile bodies

# Strings that stress every layer: NUL and other control characters (Postgres text holds
# no NUL), separators JSON allows raw, a BOM, noncharacters, astral characters, and lone
# surrogates (never valid UTF-8; escaped, or encoded raw as invalid bytes).
ODD_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(max_codepoint=0x1F), max_size=4),
    st.sampled_from(
        ["\x00", "acme/\x00app", "\x00\x00", "\x01\x1f\x7f", "\u2028\u2029", "\ufeff",
         "\ufffe\uffff", "\U0010ffff", "\U0001f600", "\ud800", "x\udfff", "\udbff\udc00",
         "refs/heads/\x00", "", " "]
    ),
)  # fmt: skip
HUGE_NUMBER = st.sampled_from(
    ["1e400", "-1e400", "1e-400", "1" + "0" * 5000, "-" + "9" * 4300, "123456789012345678901234567890",
     "0.0000000000000000000000000000001", "-0", "1E+2", "18446744073709551616"]
)  # fmt: skip


def _text(value: str, escape: bool) -> str:
    """A JSON string literal; escaped (\\uXXXX) or with characters as they are."""
    return json.dumps(value, ensure_ascii=escape)


@st.composite
def odd_json(draw: st.DrawFn, depth: int = 0) -> str:
    """JSON text (as str: lone surrogates possible) with odd things in every position."""
    escape = draw(st.booleans())
    kind = draw(
        st.sampled_from(
            ["text", "number", "huge", "const", "list", "object"][: 6 if depth < 3 else 4]
        )
    )
    if kind == "text":
        return _text(draw(ODD_TEXT), escape)
    if kind == "number":
        return json.dumps(draw(st.integers() | st.floats(allow_nan=False, allow_infinity=False)))
    if kind == "huge":
        return draw(HUGE_NUMBER)
    if kind == "const":
        return draw(st.sampled_from(["true", "false", "null"]))
    if kind == "list":
        items = draw(st.lists(odd_json(depth + 1), max_size=3))
        return "[" + ",".join(items) + "]"
    pairs = draw(st.lists(st.tuples(ODD_TEXT, odd_json(depth + 1)), max_size=3))
    if pairs and draw(st.booleans()):
        pairs.append((pairs[0][0], pairs[-1][1]))  # a duplicate key
    return "{" + ",".join(f"{_text(k, escape)}:{v}" for k, v in pairs) + "}"


@st.composite
def object_body(draw: st.DrawFn) -> str:
    """A JSON object whose facts (repository, branch, ids, event type…) hold odd values."""
    escape = draw(st.booleans())
    fields = {
        '"repository"': "{" + f'"full_name":{_text(draw(ODD_TEXT), escape)}' + "}",
        '"project"': "{" + f'"path_with_namespace":{_text(draw(ODD_TEXT), escape)}' + "}",
        '"ref"': _text(
            draw(st.sampled_from(["refs/heads/", "refs/tags/", ""])) + draw(ODD_TEXT), escape
        ),
        '"after"': draw(odd_json()),
        '"sender"': "{" + f'"login":{draw(odd_json())}' + "}",
        '"event"': "{" + f'"id":{draw(odd_json())}' + "}",
        '"type"': draw(odd_json()),
        '"image"': _text(
            draw(
                st.sampled_from(
                    ["app:1", "acme/app:v2", "registry.example.com/a/b@sha256:" + "a" * 64]
                )
                | ODD_TEXT
            ),
            escape,
        ),
        '"id"': draw(odd_json()),
        '"data"': draw(odd_json()),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=len(fields)))
    return "{" + ",".join(f"{k}:{fields[k]}" for k in chosen) + "}"


@st.composite
def deep_body(draw: st.DrawFn) -> str:
    """An object nested from a few to thousands of levels, in arrays, objects or both."""
    levels = draw(st.sampled_from([1, 10, 63, 64, 65, 200, 999, 1000, 1001, 2500]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")]))
    inner = opener * levels + draw(odd_json(depth=3)) + closer * levels
    return '{"repository":{"full_name":"acme/app"},"deep":' + inner + "}"


def _to_bytes(text: str, draw: st.DrawFn) -> bytes:
    body = text.encode("utf-8", "surrogatepass")  # a raw lone surrogate: invalid UTF-8
    if body and draw(st.integers(0, 4)) == 0:  # now and then, corrupt a byte
        at = draw(st.integers(0, len(body) - 1))
        bad = draw(
            st.sampled_from(
                [
                    b"\xff",
                    b"\xc0\x80",
                    b"\xed\xa0\x80",
                    b"\xf4\x90\x80\x80",
                    b"\x00",
                    b"\x80",
                ]
            )
        )
        body = body[:at] + bad + body[at + 1 :]
    return body


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, bytes]:
    """(content type, body): JSON, or a GitHub-style form with the JSON in ``payload``."""
    text = draw(
        st.one_of(object_body(), deep_body(), odd_json(), object_body().map(lambda t: t[:-1]))
    )
    body = _to_bytes(text, draw)
    if draw(st.integers(0, 3)) == 0:
        quoted = draw(st.booleans())
        return "application/x-www-form-urlencoded", b"payload=" + (
            urllib.parse.quote_from_bytes(body).encode() if quoted else body
        )
    return "application/json", body


# How each kind's sender proves itself, with the module's secrets.
def _standard(body: bytes, secret: str) -> dict[str, str]:
    msg_id, ts = f"msg_{uuid.uuid4().hex}", int(time.time())
    key = decode_standard_secret(secret)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_standard_webhooks(msg_id, ts, body, key),
    }


def _hmac_ts(body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    mac = hmac.new(b"fuzz-hmac", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"x-signature": "sha256=" + mac, "x-timestamp": ts}


def _jwt(body: bytes) -> dict[str, str]:
    claims = {"aud": "hookbus", "exp": int(time.time()) + 300}
    token = jwt.encode(claims, "fuzz-jwt-secret-0123456789abcdef", algorithm="HS256")
    return {
        "authorization": f"Bearer {token}",
        "x-hookdeck-signature": sign_hookdeck(body, b"fuzz-hookdeck"),
    }


WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SIGNERS: dict[str, Callable[[bytes], dict[str, str]]] = {
    "github": lambda b: {"x-hub-signature-256": sign_github(b, b"fuzz-github"), "x-github-event": "push", "x-github-delivery": str(uuid.uuid4())},
    "gitlab": lambda b: {"x-gitlab-token": "fuzz-gitlab", "x-gitlab-event": "Push Hook", **_standard(b, WHSEC)},
    "standard": lambda b: _standard(b, WHSEC),
    "hookdeck": lambda b: {"x-hookdeck-signature": sign_hookdeck(b, b"fuzz-hookdeck")},
    "hmac": _hmac_ts,
    "jwt": _jwt,
    "token": lambda b: {"authorization": "Basic " + base64.b64encode(b"user:fuzz-pass").decode()},
    "apikey": lambda b: {"x-api-key": "fuzz-key"},
    "open": lambda b: {"x-forwarded-for": "203.0.113.4"},
}  # fmt: skip


async def raw_bodies(settings: ReceiverConfig, source: str) -> dict[str, bytes]:
    """Event id to raw body of every webhook ``source`` recorded, as the log gives it back
    (``raw_body``, or the payload in ``data`` when the body is plain JSON)."""
    async with open_pool(settings.database, run_migrations=False) as pool:
        rows = await pool.fetch(
            "SELECT id, type, data, raw_body FROM events WHERE source = '/hookbus/receiver/' || $1",
            source,
        )
    return {r["id"]: eventlog.body_of(r["type"], r["data"], r["raw_body"]) or b"" for r in rows}


class Ledger:
    """What one target accepted (event id → body sent) and every status it answered."""

    def __init__(self, settings: ReceiverConfig, source: str) -> None:
        self.settings, self.source = settings, source
        self.before = asyncio.run(raw_bodies(settings, source))  # other tests' deliveries
        self.accepted: dict[str, bytes] = {}
        self.statuses: list[int] = []

    def answer(self, r: httpx.Response, body: bytes) -> None:
        self.statuses.append(r.status_code)
        # No input earns a 5xx: Postgres and NATS are up, so not even a 503.
        assert r.status_code < 500, (r.status_code, r.text, body[:200])
        if r.status_code == 202:
            self.accepted[r.json()["id"]] = body
        elif r.status_code == 200:
            assert r.json()["id"] in self.accepted  # a duplicate of something accepted
        else:
            assert 400 <= r.status_code < 500, r.status_code
            assert r.json()["error"]  # a reason, never an empty answer

    def check(self) -> None:
        # Exactly what was accepted is recorded, byte for byte; nothing refused is.
        after = asyncio.run(raw_bodies(self.settings, self.source))
        assert after == {**self.before, **self.accepted}
        assert len(self.statuses) >= 50
        # Some were accepted and some refused: the fuzz reached both sides.
        assert self.accepted
        assert any(400 <= s < 500 for s in self.statuses)


def _acceptable(ctype: str, body: bytes) -> bool:
    """Whether a body could be recorded at all: a JSON object in UTF-8 (the form's payload)."""
    if ctype.endswith("urlencoded"):
        try:
            fields = urllib.parse.parse_qs(body.decode(), strict_parsing=True)
            body = fields["payload"][0].encode()
        except (UnicodeDecodeError, ValueError, KeyError):
            return False
    try:
        return isinstance(msgspec.json.decode(body), dict)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False


@pytest.mark.parametrize("source", [*SIGNED, "open"])
def test_hostile_bodies_some_validly_signed_never_earn_a_5xx_at_any_source_kind(
    url: str, fsettings: ReceiverConfig, http: httpx.Client, source: str
) -> None:
    ledger = Ledger(fsettings, source)

    @HOSTILE
    @given(body=hostile(), signed=st.integers(0, 3))
    @example(
        body=("application/json", b'{"repository": {"full_name": "acme/\\u0000app"}}'), signed=1
    )
    @example(body=("application/json", b'{"event": {"id": "a\\u0000"}, "type": "t"}'), signed=1)
    @example(body=("application/json", b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b"}"), signed=1)
    @example(
        body=(
            "application/x-www-form-urlencoded",
            b'payload={"a":' + b"[" * 3000 + b"]" * 3000 + b"}",
        ),
        signed=1,
    )
    @example(body=("application/json", b'{"ref": "refs/heads/\xff"}'), signed=1)
    @example(
        body=("application/json", b'{"repository": {"full_name": "acme/app"}, "ok": true}'),
        signed=1,
    )
    def check(body: tuple[str, bytes], signed: int) -> None:
        ctype, content = body
        proof = SIGNERS[source](content) if signed else {}  # three in four validly signed
        r = http.post(
            f"{url}/hooks/{source}", content=content, headers={**proof, "content-type": ctype}
        )
        ledger.answer(r, content)
        if r.status_code in (200, 202):
            assert signed
            assert _acceptable(ctype, content)

    check()

    ledger.check()


# ------------------------------------------------------------ partner and image-push URLs


@pytest.fixture(scope="module")
def partner(url: str, fsettings: ReceiverConfig) -> tuple[str, str]:
    """A partner (id, token) with a JSON Schema, so that bodies also reach a worker."""
    schema = {
        "type": "object",
        "properties": {
            "id": {"type": ["string", "integer"]},
            "data": {"type": ["object", "array", "string", "number", "boolean", "null"]},
        },
    }

    async def create() -> tuple[str, str]:
        async with (
            open_pool(fsettings.database, run_migrations=False) as pool,
            pool.acquire() as conn,
        ):
            validation = store.parse_validation([], schema)
            found, token = await store.create(
                conn, fsettings.prefix, name="fuzz", validation=validation
            )
            return found.partner_id, token

    return asyncio.run(create())


@pytest.fixture(scope="module")
def push_url(url: str, fsettings: ReceiverConfig) -> str:
    async def secret() -> str | None:
        async with (
            open_pool(fsettings.database, run_migrations=False) as pool,
            pool.acquire() as conn,
        ):
            return await webhookurl.current(conn)

    return f"{url}/api/webhook/{asyncio.run(secret())}"


def _anyone(ctype: str, extra: dict[str, str]) -> dict[str, bytes]:
    # These URLs take JSON only: a form body is sent as what it claims to be, and refused.
    # Header values as bytes: HTTP carries Latin-1 (an Idempotency-Key of "é").
    return {k: v.encode("latin-1") for k, v in {"content-type": ctype, **extra}.items()}


@pytest.mark.parametrize("target", ["partner", "image-push"])
def test_hostile_bodies_at_the_partner_and_image_push_urls_never_earn_a_5xx(
    url: str, fsettings: ReceiverConfig, http: httpx.Client, partner: tuple[str, str],
    push_url: str, target: str,
) -> None:  # fmt: skip
    partner_id, token = partner
    where = f"{url}/webhook/v1/{token}" if target == "partner" else push_url
    ledger = Ledger(fsettings, f"partners/{partner_id}" if target == "partner" else "image-push")

    @HOSTILE
    @given(
        body=hostile(), key=st.none() | st.sampled_from(["k-1", "k-2", "é", "x" * 256, "x" * 257])
    )
    @example(body=("application/json", b'{"image": "app:1", "id": "a\\u0000"}'), key=None)
    @example(
        body=("application/json", b'{"image": "app:1", "x": ' + b"[" * 64 + b"]" * 64 + b"}"),
        key=None,
    )
    @example(body=("application/json", b'{"image": "acme/app:v2"}'), key="k-3")
    def check(body: tuple[str, bytes], key: str | None) -> None:
        ctype, content = body
        extra = {"idempotency-key": key} if key is not None else {}
        r = http.post(where, content=content, headers=_anyone(ctype, extra))
        ledger.answer(r, content)
        if r.status_code in (200, 202):
            assert ctype == "application/json"
            assert _acceptable(ctype, content)

    check()

    ledger.check()
