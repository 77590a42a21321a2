"""One delivery attempt, decided without a network: which statuses retry, what is recorded,
how long to wait. The HTTP side is a stand-in sender answering in process (no sockets;
tests/integration/test_dispatcher_send.py sends for real)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from multidict import CIMultiDict

from hookbus_common import events as ev
from hookbus_common.errors import RetryableError
from hookbus_common.settings import Secret
from hookbus_dispatcher.config import Endpoint
from hookbus_dispatcher.delivery import RESPONSE_BODY_LIMIT, USER_AGENT, attempt, retryable_status
from hookbus_dispatcher.httpclient import ConnectError, ReadTimeout, Request
from hookbus_dispatcher.retryafter import MAX_DELAY
from hookbus_dispatcher.ssrf import DestinationRefused
from hookbus_dispatcher.verify import verify

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

# ------------------------------------------------------------------ retryable_status


@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 507, 599, 408, 425, 429])
def test_server_errors_timeouts_too_early_and_slow_down_are_retried(status: int) -> None:
    assert retryable_status(status)


@pytest.mark.parametrize(
    "status",
    [400, 401, 403, 404, 405, 409, 410, 413, 415, 422, 426, 451, 499],
)
def test_other_client_errors_are_final(status: int) -> None:
    assert not retryable_status(status)


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
def test_redirects_are_final_not_retried(status: int) -> None:
    # Redirects are not followed, and the same request earns the same redirect.
    assert not retryable_status(status)


# --------------------------------------------------------------------------- attempt


def _request(url: str = "http://sink.test/hook", **fields: Any) -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id="dlv_1", rule="r", webhook_id="evt_w", url=url,
            body=msgspec.Raw(b'{"a": 1}'), tenant="acme", **fields,
        ),
        source="/test",
    )  # fmt: skip


class Reply:
    """An answer as the dispatcher's client hands it back: status and headers, the body
    read in pieces."""

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]] | dict[str, str] | None = None,
        body: bytes = b"",
        charset: str | None = None,
        arrived: bool = True,
    ) -> None:
        self.status = status
        self.headers = CIMultiDict(headers or {})
        self.charset = charset
        self.body = body
        self.arrived = arrived  # the whole body came with the head
        self.closed = False

    def complete(self, n: int) -> bytes | None:
        return self.body[:n] if self.arrived else None

    async def read(self, n: int) -> bytes:
        chunk, self.body = self.body[:n], self.body[n:]
        return chunk

    def close(self) -> None:
        self.closed = True


Respond = Callable[[Request], Reply]


class Sender:
    """Answers every request as ``respond`` says, keeping what was sent."""

    timeout = 15.0

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.sent: list[Request] = []
        self.replies: list[Reply] = []

    async def send(self, request: Request) -> Reply:
        self.sent.append(request)
        reply = self.respond(request)
        self.replies.append(reply)
        return reply


async def _attempt(
    respond: Respond,
    *,
    number: int = 1,
    max_attempts: int = 5,
    event: ev.Event[ev.DeliveryRequested] | None = None,
) -> tuple[list[ev.Event[Any]], RetryableError | None, list[Request]]:
    client = Sender(respond)
    out, retry = await attempt(client, event or _request(), number, max_attempts, clock=lambda: NOW)
    assert all(r.closed for r in client.replies)  # every answer let go of
    return out, retry, client.sent


def _status(code: int, **headers: str) -> Respond:
    return lambda _request: Reply(code, headers)


def _types(events: list[ev.Event[Any]]) -> list[type[Any]]:
    return [type(e.data) for e in events]


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
async def test_2xx_records_the_attempt_and_success(code: int) -> None:
    event = _request()
    out, retry, sent = await _attempt(_status(code), number=3, event=event)
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliverySucceeded]
    attempted, succeeded = out
    assert attempted.id == ev.derived_id(event.id, "attempt/3")
    assert succeeded.id == ev.derived_id(event.id, "outcome")
    for e in out:
        assert (e.data.delivery_id, e.data.url, e.data.tenant) == ("dlv_1", event.data.url, "acme")
        assert (e.data.attempt, e.data.status_code, e.data.error) == (3, code, None)
        assert (e.causationid, e.correlationid, e.subject) == (event.id, event.id, "dlv_1")
    assert len(sent) == 1


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 422])
async def test_a_final_4xx_records_failed_and_asks_for_no_retry(code: int) -> None:
    out, retry, _ = await _attempt(_status(code))
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliveryFailed]
    assert out[1].data.status_code == code


@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed_and_is_final(code: int) -> None:
    out, retry, sent = await _attempt(_status(code, location="http://elsewhere.test/"))
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliveryFailed]
    assert out[1].data.status_code == code
    assert [r.url for r in sent] == ["http://sink.test/hook"]


@pytest.mark.parametrize("code", [500, 502, 503, 504, 408, 425, 429])
async def test_a_retryable_status_records_only_the_attempt_and_asks_for_a_retry(
    code: int,
) -> None:
    out, retry, _ = await _attempt(_status(code), number=2, max_attempts=5)
    assert _types(out) == [ev.DeliveryAttempted]
    assert (out[0].data.attempt, out[0].data.status_code) == (2, code)
    assert isinstance(retry, RetryableError)
    assert str(code) in str(retry)


@pytest.mark.parametrize("number", [5, 6])
async def test_the_last_allowed_attempt_failing_records_dead(number: int) -> None:
    out, retry, _ = await _attempt(_status(503), number=number, max_attempts=5)
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliveryDead]
    assert out[1].data.attempt == number
    assert out[1].data.status_code == 503


async def test_a_final_status_on_the_last_attempt_is_failed_not_dead() -> None:
    out, _, _ = await _attempt(_status(404), number=5, max_attempts=5)
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliveryFailed]


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        ("7", 7.0),
        ("0", 0.0),  # honoured, not mistaken for "no header"
        ("Sat, 01 Mar 2025 12:00:42 GMT", 42.0),
        ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0),
        ("86400", MAX_DELAY),
    ],
)
async def test_retry_after_sets_the_delay(retry_after: str, delay: float) -> None:
    _, retry, _ = await _attempt(_status(429, **{"retry-after": retry_after}))
    assert retry is not None
    assert retry.delay == delay


@pytest.mark.parametrize("retry_after", [None, b"soon", b"-1", b"1.5", "²".encode()])
async def test_without_a_readable_retry_after_the_schedule_decides(
    retry_after: bytes | None,
) -> None:
    # As aiohttp decodes a header's bytes.
    text = None if retry_after is None else retry_after.decode("utf-8", "surrogateescape")
    headers = [] if text is None else [("retry-after", text)]
    # The default schedule (5 s, 5 min, 30 min, …) spread by ±10%.
    for number, (low, high) in [(1, (4.5, 5.5)), (3, (1620.0, 1980.0))]:
        respond: Respond = lambda _request: Reply(503, headers)  # noqa: E731
        out, retry, _ = await _attempt(respond, number=number)
        assert _types(out) == [ev.DeliveryAttempted]
        assert retry is not None
        assert retry.delay is not None
        assert low <= retry.delay <= high
        # The due time is on the attempt's event, counted from the clock.
        assert out[0].data.next_attempt_at == NOW + timedelta(seconds=retry.delay)


async def test_a_settled_attempt_has_no_next_attempt_time() -> None:
    for code in (200, 404):
        out, _, _ = await _attempt(_status(code))
        assert out[0].data.next_attempt_at is None
    out, _, _ = await _attempt(_status(503), number=5, max_attempts=5)
    assert out[0].data.next_attempt_at is None


async def test_a_retry_after_sets_the_next_attempt_time_exactly() -> None:
    out, retry, _ = await _attempt(_status(503, **{"retry-after": "120"}))
    assert retry is not None
    assert out[0].data.next_attempt_at == NOW + timedelta(seconds=120)


async def test_an_endpoints_own_schedule_sets_its_waits_and_its_attempts() -> None:
    ep = _endpoint(retry_schedule=[1.0, 60.0])
    _, retry, _ = await _send_to(ep, _status(503), number=2)
    assert retry is not None
    assert retry.delay is not None
    assert 54.0 <= retry.delay <= 66.0
    out, retry, _ = await _send_to(ep, _status(503), number=3)
    assert retry is None  # two waits: three attempts
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliveryDead]


async def test_a_connection_failure_is_retried_and_recorded_with_its_error() -> None:
    def refuse(request: Request) -> Reply:
        raise ConnectError("connection refused")

    out, retry, _ = await _attempt(refuse, number=1)
    assert _types(out) == [ev.DeliveryAttempted]
    assert out[0].data.status_code is None
    assert out[0].data.error == "ConnectError: connection refused"
    assert isinstance(retry, RetryableError)
    assert "ConnectError" in str(retry)

    out, retry, _ = await _attempt(refuse, number=5, max_attempts=5)
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliveryDead]
    assert out[1].data.error == "ConnectError: connection refused"


async def test_a_timeout_is_retried() -> None:
    def slow(request: Request) -> Reply:
        raise ReadTimeout("timed out")

    out, retry, _ = await _attempt(slow)
    assert _types(out) == [ev.DeliveryAttempted]
    assert out[0].data.error == "ReadTimeout: timed out"
    assert isinstance(retry, RetryableError)


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("not a url", {}),
        ("ftp://sink.test/hook", {}),
        ("http:///no-host", {}),
        ("http://[::1/", {}),
        ("http://sink.test:99999/hook", {}),
        ("http://sink.test/\nhook", {}),
        ("http://sink.test/hook", {"x-name": "Zoë"}),
        ("http://sink.test/hook", {"x-a": "b\r\nx-forged: 1"}),
        ("http://sink.test/hook", {"x a": "b"}),
        ("http://sink.test:0/hook", {}),
    ],
    ids=[
        "no-scheme",
        "ftp",
        "no-host",
        "bad-ipv6",
        "bad-port",
        "newline",
        "non-ascii-header",
        "header-injection",
        "bad-header-name",
        "port-0",
    ],
)
async def test_a_request_that_can_never_be_sent_is_failed_at_once(
    url: str, headers: dict[str, str]
) -> None:
    out, retry, sent = await _attempt(_status(200), event=_request(url, headers=headers))
    assert sent == []
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliveryFailed]
    assert out[1].data.status_code is None
    assert out[1].data.error is not None
    assert out[1].data.error.startswith("request cannot be sent: ")


async def test_credentials_in_the_url_go_in_a_basic_authorization_header() -> None:
    event = _request("http://us%40r:pa55@sink.test/hook", headers={"Authorization": "Bearer x"})
    _, _, (request,) = await _attempt(_status(204), event=event)
    assert request.headers.getall("authorization") == ["Basic dXNAcjpwYTU1"]  # us@r:pa55


async def test_the_request_carries_method_body_headers_and_the_delivery_id() -> None:
    event = _request(method="PUT", headers={"content-type": "application/json", "x-a": "b"})
    _, _, sent = await _attempt(_status(204), event=event)
    (request,) = sent
    assert request.method == "PUT"
    assert request.body == b'{"a": 1}'
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-a"] == "b"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["x-hookbus-delivery"] == "dlv_1"


async def test_configured_headers_may_set_the_user_agent_but_not_the_delivery_id() -> None:
    event = _request(headers={"User-Agent": "acme/2", "X-Hookbus-Delivery": "forged"})
    _, _, sent = await _attempt(_status(204), event=event)
    (request,) = sent
    assert request.headers.getall("user-agent") == ["acme/2"]
    assert request.headers.getall("x-hookbus-delivery") == ["dlv_1"]


async def test_a_repeat_attempt_derives_the_same_ids_and_sends_the_same_delivery_id() -> None:
    event = _request()
    first, _, sent1 = await _attempt(_status(500), number=2, event=event)
    again, _, sent2 = await _attempt(_status(500), number=2, event=event)
    assert [e.id for e in first] == [e.id for e in again]
    later, _, sent3 = await _attempt(_status(500), number=3, event=event)
    assert later[0].id != first[0].id
    ids = {r.headers["x-hookbus-delivery"] for r in [*sent1, *sent2, *sent3]}
    assert ids == {"dlv_1"}


# ------------------------------------------------------------------------ endpoints

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _endpoint(**fields: Any) -> Endpoint:
    base: dict[str, Any] = {
        "url": "https://billing.test/in",
        "tenant": "acme",
        "secrets": [Secret(env="X", value=SECRET)],
        "headers": {"x-team": "billing", "x-a": "endpoint"},
        "timeout": 3.0,
    }
    return Endpoint(**{**base, **fields})


async def _send_to(
    ep: Endpoint, respond: Respond | None = None, number: int = 1, **fields: Any
) -> tuple[list[ev.Event[Any]], RetryableError | None, list[Request]]:
    client = Sender(respond or _status(200))
    event = _request(url="", endpoint="billing", event_type="push", **fields)
    out, retry = await attempt(
        client, event, number, 5, clock=lambda: NOW, endpoints={"billing": ep}
    )
    return out, retry, client.sent


async def test_an_endpoint_delivery_goes_to_its_url_signed_with_every_secret() -> None:
    other = "whsec_" + "c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="
    ep = _endpoint(secrets=[Secret(env="X", value=SECRET), Secret(env="Y", value=other)])
    out, retry, (sent,) = await _send_to(ep, headers={"x-a": "rule"})
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliverySucceeded]
    assert sent.url == "https://billing.test/in"
    assert sent.headers["webhook-id"] == "dlv_1"
    assert sent.headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    # The endpoint's headers, under the rule's own.
    assert (sent.headers["x-team"], sent.headers["x-a"]) == ("billing", "rule")
    assert sent.timeout == 3.0
    # Verified as any receiver would, at the time it was signed, with either secret.
    signed = {k: v for k, v in sent.headers.items()}
    for secret in (SECRET, other):
        assert verify(secret, signed, sent.body, now=NOW.timestamp()) == "dlv_1"
    assert {(e.data.endpoint, e.data.url) for e in out} == {("billing", "https://billing.test/in")}


async def test_the_message_id_is_the_delivery_id_on_every_attempt() -> None:
    ep = _endpoint()
    _, _, (first,) = await _send_to(ep, _status(503), number=1)
    _, _, (second,) = await _send_to(ep, _status(503), number=2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "dlv_1"


async def test_signing_headers_cannot_be_forged_by_configured_headers() -> None:
    ep = _endpoint(headers={"webhook-signature": "v1,forged", "webhook-id": "x"})
    _, _, (sent,) = await _send_to(ep)
    assert sent.headers["webhook-id"] == "dlv_1"
    assert "forged" not in sent.headers["webhook-signature"]


async def test_an_endpoint_without_secrets_is_sent_unsigned() -> None:
    _, _, (sent,) = await _send_to(_endpoint(secrets=[]))
    assert "webhook-signature" not in sent.headers
    assert sent.headers["x-hookbus-delivery"] == "dlv_1"


@pytest.mark.parametrize(
    ("endpoints", "fields", "problem"),
    [
        ({}, {}, "no endpoint named 'billing' is configured"),
        ({"billing": _endpoint(tenant="other")}, {}, "belongs to tenant 'other', not 'acme'"),
        ({"billing": _endpoint(events=["release*"])}, {}, "does not take 'push' events"),
    ],
)
async def test_an_endpoint_that_cannot_take_the_delivery_fails_it_without_sending(
    endpoints: dict[str, Endpoint], fields: dict[str, Any], problem: str
) -> None:
    client = Sender(_status(200))
    event = _request(url="", endpoint="billing", event_type="push")
    out, retry = await attempt(client, event, 1, 5, endpoints=endpoints)
    assert client.sent == []
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliveryFailed]
    assert out[0].data.error is not None
    assert problem in out[0].data.error


async def test_an_endpoint_takes_the_event_types_its_globs_match() -> None:
    _, _, sent = await _send_to(_endpoint(events=["pull_request", "pu*"]))
    assert len(sent) == 1


async def test_a_refused_destination_is_failed_for_good_with_its_reason() -> None:
    def refuse(request: Request) -> Reply:
        raise DestinationRefused("billing.test", "10.0.0.7", "private")

    out, retry, _ = await _attempt(refuse)
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliveryFailed]
    assert out[0].data.status_code is None
    assert out[0].data.error.startswith("destination refused: billing.test resolves to 10.0.0.7")


@pytest.mark.parametrize("arrived", [True, False])
async def test_the_answer_body_is_kept_up_to_4_kb_decoded_leniently(arrived: bool) -> None:
    body = b"\xff" + b"x" * (RESPONSE_BODY_LIMIT * 3)
    out, _, _ = await _attempt(lambda _r: Reply(500, body=body, arrived=arrived))
    kept = out[0].data.response_body
    assert kept is not None
    assert kept.startswith("\ufffdxxx")
    assert len(kept) == RESPONSE_BODY_LIMIT
    out, _, _ = await _attempt(
        lambda _r: Reply(400, body="é".encode("latin-1"), charset="latin-1", arrived=arrived)
    )
    assert out[0].data.response_body == "é"
    out, _, _ = await _attempt(_status(204))
    assert out[0].data.response_body is None


@pytest.mark.parametrize("code", [500, 503, 429])
async def test_a_receiver_can_ask_for_no_more_attempts(code: int) -> None:
    out, retry, _ = await _attempt(_status(code, **{"webhook-delivery": "Abort-Message"}))
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliveryFailed]
    assert out[0].data.status_code == code
    assert "abort-message" in (out[0].data.error or "")


async def test_abort_message_on_a_success_is_still_a_success() -> None:
    out, retry, _ = await _attempt(_status(200, **{"webhook-delivery": "abort-message"}))
    assert retry is None
    assert _types(out) == [ev.DeliveryAttempted, ev.DeliverySucceeded]
    assert out[0].data.error is None
