"""The receiver's one mapping from an error to its HTTP answer, and its one request meter."""

from __future__ import annotations

import time
from typing import Any, get_args

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.responses import JSONResponse, Response

from hookbus_common.errors import (
    Code,
    ConfigError,
    ConflictError,
    HookbusError,
    InvalidError,
    NotFoundError,
    PermanentError,
    RetryableError,
    UnauthorizedError,
    UnavailableError,
)
from hookbus_receiver import app, inbound
from hookbus_receiver.inbound import BY_CODE, Meter, problem_for, reason_of
from hookbus_receiver.partnerstore import NameTaken, PartnerError, PartnerNotFound
from hookbus_receiver.refusals import (
    BadBody,
    BadImage,
    BadRequest,
    BodyTooLarge,
    Disconnected,
    RateLimited,
    Unavailable,
    Unknown,
    Unstorable,
    UnsupportedMediaType,
    UnverifiedRateLimited,
    ValidationAborted,
    ValidationBusy,
    ValidationFailed,
)
from hookbus_receiver.signatures import REASONS, VerificationError
from hookbus_receiver.validation import InvalidConfig, Violation

RETRY = {"retry-after": "5"}
NOT_RECORDED = "could not record the delivery; retry"

# (error, status, JSON body, headers that must be set)
CASES: list[tuple[HookbusError, int, dict[str, Any], dict[str, str]]] = [
    # Each kernel code, with a message written for operators: never sent.
    (HookbusError("internal detail"), 400, {"error": "invalid"}, {}),
    (InvalidError("internal detail"), 400, {"error": "invalid"}, {}),
    (PermanentError("internal detail"), 400, {"error": "invalid"}, {}),
    (PartnerError("a partner needs a name"), 400, {"error": "invalid"}, {}),
    (NotFoundError("no partner 'x'"), 404, {"error": "not_found"}, {}),
    (PartnerNotFound("no partner 'x'"), 404, {"error": "not_found"}, {}),
    (ConflictError("exists"), 409, {"error": "conflict"}, {}),
    (NameTaken("a partner named 'x' exists"), 409, {"error": "conflict"}, {}),
    (UnauthorizedError("bad_token"), 401, {"error": "unauthorized"}, {}),
    (UnavailableError("pool at 10.0.0.5 gone"), 503, {"error": "unavailable"}, RETRY),
    (RetryableError("pool gone", delay=30), 503, {"error": "unavailable"}, RETRY),
    # Our configuration is not the sender's fault: they should send it again later.
    (ConfigError("sources.gh.secrets: empty"), 503, {"error": "unavailable"}, RETRY),
    (InvalidConfig("the JSON Schema is not valid"), 503, {"error": "unavailable"}, RETRY),
    # The receiver's own refusals.
    (VerificationError("bad_signature"), 401, {"error": "unauthorized"}, {}),
    (Unknown("ip_denied"), 404, {"error": "not_found"}, {}),
    (Unknown("unknown_token"), 404, {"error": "not_found"}, {}),
    (
        RateLimited(2.5),
        429,
        {"error": "rate_limited", "detail": "too many requests for this source"},
        {"retry-after": "3"},
    ),
    (Unavailable(), 503, {"error": "unavailable", "detail": NOT_RECORDED}, RETRY),
    (
        Unavailable("this partner's validation is misconfigured"),
        503,
        {"error": "unavailable", "detail": "this partner's validation is misconfigured"},
        RETRY,
    ),
    (
        BadRequest("the delivery id is longer than 256"),
        400,
        {"error": "bad_request", "detail": "the delivery id is longer than 256"},
        {},
    ),
    (
        BadBody("body must be a JSON object"),
        400,
        {"error": "bad_body", "detail": "body must be a JSON object"},
        {},
    ),
    (BadImage("no tag"), 400, {"error": "bad_image", "detail": "no tag"}, {}),
    (
        BodyTooLarge(4096),
        413,
        {"error": "body_too_large", "detail": "the limit is 4096 bytes"},
        {},
    ),
    (
        UnsupportedMediaType("expected application/json, got text/plain"),
        415,
        {
            "error": "unsupported_media_type",
            "detail": "expected application/json, got text/plain",
        },
        {},
    ),
    (
        ValidationFailed([Violation("$.order.id", "is required"), Violation("$.n", "bad")]),
        422,
        {
            "error": "validation_failed",
            "detail": "$.order.id: is required; $.n: bad",
            "violations": [
                {"path": "$.order.id", "message": "is required"},
                {"path": "$.n", "message": "bad"},
            ],
        },
        {},
    ),
    (
        Unstorable("the repository holds a NUL character, which cannot be recorded"),
        400,
        {
            "error": "unstorable",
            "detail": "the repository holds a NUL character, which cannot be recorded",
        },
        {},
    ),
    (
        Disconnected(),
        400,
        {
            "error": "disconnected",
            "detail": "the client disconnected before sending the whole body",
        },
        {},
    ),
    (
        ValidationAborted("validating the body took longer than 2 s"),
        422,
        {"error": "validation_aborted", "detail": "validating the body took longer than 2 s"},
        {},
    ),
    (
        UnverifiedRateLimited(9.5),
        429,
        {
            "error": "unverified_rate_limited",
            "detail": "too many unverified requests from this address",
        },
        {"retry-after": "10"},
    ),
    (
        ValidationBusy(1.5),
        429,
        {"error": "validation_busy", "detail": "too many validations in flight; retry"},
        {"retry-after": "2"},
    ),
]


@pytest.mark.parametrize(
    ("exc", "status", "body", "headers"), CASES, ids=[type(c[0]).__name__ for c in CASES]
)
def test_each_error_has_one_answer(
    exc: HookbusError, status: int, body: dict[str, Any], headers: dict[str, str]
) -> None:
    response = problem_for(exc).response()

    assert response.status_code == status
    assert msgspec.json.decode(response.body) == body
    assert response.headers["content-type"] == "application/json"
    for name, value in headers.items():
        assert response.headers[name] == value
    if status not in (429, 503):
        assert "retry-after" not in response.headers


STATUS_BY_CODE = {
    "invalid": 400,
    "not_found": 404,
    "conflict": 409,
    "unauthorized": 401,
    "unavailable": 503,
}


@pytest.mark.parametrize("code", get_args(Code))
def test_every_kernel_code_answers_its_status_with_only_the_code(code: Code) -> None:
    error_class = type("Some", (HookbusError,), {"code": code})

    problem = problem_for(error_class("a message for operators"))

    assert code in BY_CODE
    assert problem.status == STATUS_BY_CODE[code]
    assert problem.body() == {"error": code}


def _answer(response: Response) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
    return response.status_code, bytes(response.body), tuple(response.raw_headers)


def test_every_failed_proof_answers_alike() -> None:
    answers = {_answer(problem_for(VerificationError(r)).response()) for r in REASONS}
    answers.add(_answer(problem_for(UnauthorizedError("bad_token")).response()))

    assert len(answers) == 1
    ((status, body, _),) = answers
    assert (status, body) == (401, b'{"error":"unauthorized"}')


async def test_unknown_tokens_secrets_and_addresses_answer_as_an_unknown_path() -> None:
    unknown_path = _answer(await app._not_found(None, Exception()))  # type: ignore[arg-type]

    for reason in ("unknown_token", "wrong_secret", "ip_denied"):
        assert _answer(problem_for(Unknown(reason)).response()) == unknown_path
    assert unknown_path[:2] == (404, b'{"error":"not_found"}')


@pytest.mark.parametrize(
    ("exc", "code", "reason"),
    [
        (VerificationError("stale_timestamp"), "unauthorized", "stale_timestamp"),
        (Unknown("ip_denied"), "not_found", "ip_denied"),
        (RateLimited(1), "unavailable", "rate_limited"),
        (BodyTooLarge(1), "invalid", "body_too_large"),
        (UnsupportedMediaType("x"), "invalid", "unsupported_media_type"),
        (BadBody("x"), "invalid", "bad_body"),
        (BadImage("x"), "invalid", "bad_image"),
        (BadRequest("x"), "invalid", "bad_request"),
        (ValidationFailed([]), "invalid", "validation_failed"),
        (Unavailable(), "unavailable", "unavailable"),
        (InvalidConfig("x"), "invalid", "unavailable"),  # answered 503: our side
        (PartnerNotFound("x"), "not_found", "not_found"),
        (Unstorable(), "invalid", "unstorable"),
        (Disconnected(), "invalid", "disconnected"),
        (ValidationAborted("x"), "invalid", "validation_aborted"),
        (ValidationBusy(1), "unavailable", "validation_busy"),
        (UnverifiedRateLimited(1), "unavailable", "unverified_rate_limited"),
    ],
)
def test_refusals_are_in_the_kernel_family_with_their_metric_reasons(
    exc: HookbusError, code: str, reason: str
) -> None:
    assert isinstance(exc, HookbusError)
    assert exc.code == code
    assert reason_of(exc, problem_for(exc)) == reason


# ------------------------------------------------------------------------------ meter


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("t_requests", "", ["source", "outcome"], registry=self.registry)
        self.latency = Histogram("t_seconds", "", ["source"], registry=self.registry)
        self.rejected = Counter("t_rejected", "", ["source", "reason"], registry=self.registry)
        self.meter = Meter(self.requests, "gh", latency=self.latency, rejected=self.rejected)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def test_the_meter_counts_answers_by_outcome_and_their_latency() -> None:
    m = Metrics()
    started = time.perf_counter()

    new = m.meter.answered(JSONResponse({"id": "a"}, status_code=202), started)
    again = m.meter.answered(JSONResponse({"id": "a"}, status_code=200), started)

    assert (new.status_code, again.status_code) == (202, 200)
    assert m.value("t_requests_total", source="gh", outcome="accepted") == 1
    assert m.value("t_requests_total", source="gh", outcome="duplicate") == 1
    assert m.value("t_seconds_count", source="gh") == 2
    assert m.value("t_rejected_total", source="gh", reason="bad_signature") == 0


def test_the_meter_counts_refusals_by_answer_and_precise_reason_but_not_outages() -> None:
    m = Metrics()
    started = time.perf_counter()

    for exc in (VerificationError("bad_signature"), Unknown("ip_denied"), BadBody("x")):
        m.meter.refused(exc, started)
    unavailable = m.meter.refused(Unavailable(), started)

    assert unavailable.status_code == 503
    assert m.value("t_requests_total", source="gh", outcome="unauthorized") == 1
    assert m.value("t_requests_total", source="gh", outcome="not_found") == 1
    assert m.value("t_requests_total", source="gh", outcome="bad_body") == 1
    assert m.value("t_requests_total", source="gh", outcome="unavailable") == 1
    assert m.value("t_rejected_total", source="gh", reason="bad_signature") == 1
    assert m.value("t_rejected_total", source="gh", reason="ip_denied") == 1
    assert m.value("t_rejected_total", source="gh", reason="bad_body") == 1
    assert m.value("t_rejected_total", source="gh", reason="unavailable") == 0
    assert m.value("t_seconds_count", source="gh") == 4


def test_a_meter_without_labels_counts_outcomes_only() -> None:
    registry = CollectorRegistry()
    requests = Counter("p_requests", "", ["outcome"], registry=registry)
    meter = Meter(requests)

    meter.refused(Unknown("unknown_token"), 0.0)
    meter.answered(JSONResponse({}, status_code=202), 0.0)

    assert registry.get_sample_value("p_requests_total", {"outcome": "not_found"}) == 1
    assert registry.get_sample_value("p_requests_total", {"outcome": "accepted"}) == 1


def test_a_series_appears_only_once_it_counts_something() -> None:
    m = Metrics()

    assert m.registry.get_sample_value("t_seconds_count", {"source": "gh"}) is None
    assert (
        m.registry.get_sample_value("t_requests_total", {"source": "gh", "outcome": "accepted"})
        is None
    )


# ---------------------------------------------------------------------------- dedupe


@pytest.mark.parametrize("source", ["github", "ptn_1", "image-push"])
def test_every_endpoint_keys_deliveries_by_source_and_id(source: str) -> None:
    assert inbound.dedupe_key(source, "d-1") == f"{source}:d-1"
    assert inbound.dedupe_key(source, "") is None
    assert inbound.dedupe_key(source, "x" * 200) == f"{source}:{'x' * 200}"
    assert inbound.dedupe_key(source, "x" * 201) != inbound.dedupe_key("other", "x" * 201)


# ----------------------------------------------------------------------- JSON bodies


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b'{"a": "\xff"}', "not valid UTF-8"),
        (b'{"\xc0\x80": 1}', "not valid UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', "not valid UTF-8"),  # a surrogate, encoded
        (b'{"a": "\\ud800"}', "not valid JSON"),  # a lone surrogate, escaped
        (b'{"a": "\x00"}', "not valid JSON"),  # a raw control character
        (b'{"a": 1e400}', "not valid JSON"),
        (b'{"a": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}", "more than 64 levels"),
    ],
)
def test_json_bodies_that_cannot_be_taken_are_bad_bodies(body: bytes, detail: str) -> None:
    with pytest.raises(BadBody, match=detail):
        inbound.json_object(body, max_depth=64)


def test_json_bodies_at_the_limit_and_odd_but_valid_ones_are_taken() -> None:
    assert inbound.json_object(b'{"a": ' + b"[" * 63 + b"]" * 63 + b"}", max_depth=64)
    assert inbound.json_object(b'{"a": 1, "a": 2}') == {"a": 2}
    assert inbound.json_object(b'{"a": "\\u0000\\ud83d\\ude00"}') == {"a": "\x00\U0001f600"}
    big = inbound.json_object(b'{"n": 123456789012345678901234567890}')
    assert big == {"n": 123456789012345678901234567890}


@pytest.mark.parametrize(
    ("doc", "depth"),
    [(1, 0), ({}, 1), ([], 1), ({"a": [1, {"b": {}}]}, 4), ([[], [[[]]], {}], 4)],
)
def test_depth_is_counted_in_containers(doc: Any, depth: int) -> None:
    assert not inbound.deeper_than(doc, depth)
    assert depth == 0 or inbound.deeper_than(doc, depth - 1)


def test_depth_of_a_doc_too_deep_to_recurse_is_measured_without_recursion() -> None:
    doc: Any = []
    for _ in range(100_000):
        doc = [doc]
    assert inbound.deeper_than(doc, 64)
    assert not inbound.deeper_than(doc, 100_001)


@pytest.mark.parametrize(
    ("facts", "subject", "where"),
    [
        (inbound.Facts(event_type="push", repository="acme/app"), "acme/app", None),
        (inbound.Facts(event_type="push", repository="a/\x00"), "a/\x00", "repository"),
        (inbound.Facts(event_type="push", delivery_id="d\x00"), None, "delivery_id"),
        (inbound.Facts(event_type="pu\x00sh"), None, "event_type"),
        (inbound.Facts(event_type="push", sender="\x00"), None, "sender"),
        (inbound.Facts(event_type="push"), "docker.io/\x00", "subject"),
        (inbound.Facts(event_type="push", branch="a\x01\x7f\u2028"), None, None),
    ],
)
def test_facts_holding_nul_cannot_be_stored(
    facts: inbound.Facts, subject: str | None, where: str | None
) -> None:
    assert inbound.unstorable(facts, subject) == where


# ---------------------------------------------------------------------- inbound


def test_delivery_id_prefers_idempotency_key_then_webhook_id():
    assert inbound.delivery_id({"idempotency-key": "a", "webhook-id": "b"}) == "a"
    assert inbound.delivery_id({"webhook-id": "b"}) == "b"
    assert inbound.delivery_id({"idempotency-key": ""}) is None
    with pytest.raises(HookbusError) as info:
        inbound.delivery_id({"idempotency-key": "k" * 1000})
    assert problem_for(info.value).status == 400


@pytest.mark.parametrize(
    "ctype", ["application/json; charset=utf-8", "application/cloudevents+json"]
)
def test_json_content_types_are_accepted(ctype):
    assert inbound.json_content_type({"content-type": ctype}).endswith("json")


def test_other_content_types_are_415_and_bad_bodies_400():
    with pytest.raises(HookbusError) as info:
        inbound.json_content_type({"content-type": "text/plain"})
    assert problem_for(info.value).status == 415
    for body in (b"{", b"[]", b"1"):
        with pytest.raises(HookbusError) as info:
            inbound.json_object(body)
        assert problem_for(info.value).status == 400


def test_kept_headers_never_include_the_url_or_authorization():
    kept = inbound.kept_headers({"authorization": "Bearer x", "idempotency-key": "k", "host": "h"})
    assert kept == {"idempotency-key": "k"}
