"""Random headers and bodies at every source kind: always an answer, never a 5xx.

For every kind that checks a proof the answer is a 4xx and nothing is recorded; a
`none` source records exactly what it accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hookbus_receiver.config import ReceiverConfig

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
# spaces), often shaped like the real thing.
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
         "Bearer ", "Basic ", "Basic dXNlcjpmdXp6LXBhc3M=", "Bearer a.b.c", "1614265330",
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
FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def fsettings(servers: Servers, module_dir: Path) -> ReceiverConfig:
    return module_settings(servers, module_dir, SOURCES, receiver_toml="max_body_bytes = 256")


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
