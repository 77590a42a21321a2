"""The trace context in the envelope, the tracing settings, and spans made by
``tracing`` (with the SDK's in-memory exporter); tracing off makes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hookbus_common import consumer, tracing
from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_common.settings import Settings, TracingSettings, convert

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _webhook(**envelope: str) -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(source="github", kind="github", event_type="push")
    return msgspec.structs.replace(ev.make_event(data, source="/hookbus/receiver"), **envelope)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)


# ------------------------------------------------------------------- the envelope


def test_the_context_round_trips_in_the_envelope_and_is_absent_by_default() -> None:
    plain = _webhook()
    assert (plain.traceparent, plain.tracestate) == (None, None)
    traced = _webhook(traceparent=PARENT, tracestate="a=1")
    back = ev.decode(ev.encode(traced))
    assert (back.traceparent, back.tracestate) == (PARENT, "a=1")
    around = ev.decode(ev.encode_around(traced, ev.encode_data(traced.data)))
    assert (around.traceparent, around.tracestate) == (PARENT, "a=1")
    # Older envelopes (no such attributes) still decode.
    older = msgspec.json.decode(ev.encode(plain))
    del older["traceparent"], older["tracestate"]
    assert ev.decode(msgspec.json.encode(older)).traceparent is None


def test_a_derived_event_carries_its_causes_context() -> None:
    cause = _webhook(traceparent=PARENT, tracestate="a=1")
    data = ev.WebhookReceived(source="x", kind="x", event_type="y")
    child = ev.make_event(data, source="/hookbus/router", cause=cause)
    assert (child.traceparent, child.tracestate) == (PARENT, "a=1")
    assert ev.make_event(data, source="/hookbus/router").traceparent is None


# -------------------------------------------------------------------- the settings


def test_tracing_is_off_by_default_and_configure_does_nothing() -> None:
    assert Settings().tracing.endpoint is None
    assert tracing.configure(Settings().tracing, "router") is False
    assert not tracing.enabled()
    assert tracing.current() == (None, None)
    event = _webhook()
    assert tracing.with_current(event) is event


@pytest.mark.parametrize(
    ("table", "where"),
    [
        ({"endpoint": "collector:4318"}, "tracing: endpoint"),
        ({"sample_ratio": 1.5}, "tracing.sample_ratio"),
        ({"sampel_ratio": 0.5}, "tracing: .*`sampel_ratio`"),
    ],
)
def test_bad_tracing_settings_name_the_key(table: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError, match=f"^hookbus.toml: {where}"):
        convert({"tracing": table}, Settings, "hookbus.toml", "")


def test_the_settings_repr_hides_headers() -> None:
    settings = TracingSettings(endpoint="http://c:4318", headers={"x-api-key": "s3cret"})
    assert "s3cret" not in repr(settings)


def test_configure_exports_over_otlp_http_when_an_endpoint_is_set() -> None:
    settings = Settings(tracing=TracingSettings(endpoint="http://127.0.0.1:9/", sample_ratio=0))
    try:
        assert tracing.configure(settings.tracing, "router") is True
        assert tracing.enabled()
        assert tracing.configure(settings.tracing, "router") is False  # once per process
    finally:
        tracing.shutdown()  # nothing sampled: nothing to send
    assert not tracing.enabled()


# ------------------------------------------------------------------------ spans


def test_a_consumers_span_continues_the_events_trace_and_hands_on_its_own(
    spans: InMemorySpanExporter,
) -> None:
    event = _webhook(traceparent=PARENT)
    with tracing.consuming("router", event, "hb.webhook.received.github.push", "hb-router", 2) as (
        span,
        traced,
    ):
        tracing.settled(span, "ack")
    [done] = spans.get_finished_spans()
    assert done.kind == SpanKind.CONSUMER
    assert done.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert done.parent is not None
    assert done.parent.span_id == 0x00F067AA0BA902B7
    assert done.attributes is not None
    assert done.attributes["hookbus.outcome"] == "ack"
    assert done.attributes["messaging.message.delivery_count"] == 2
    # What the handler derives inherits this span's context, not its parent's.
    assert traced.traceparent == (
        f"00-4bf92f3577b34da6a3ce929d0e0e4736-{done.context.span_id:016x}-01"
    )
    assert traced.id == event.id


def test_an_event_without_context_starts_a_trace_and_a_term_is_an_error(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.consuming("executor", _webhook(), "s", "c", 1) as (span, traced):
        tracing.settled(span, "term", "InvalidError: no such kind")
    [done] = spans.get_finished_spans()
    assert done.parent is None
    assert done.status.status_code == StatusCode.ERROR
    assert traced.traceparent is not None
    assert f"{done.context.trace_id:032x}" in traced.traceparent


def test_a_server_span_continues_the_senders_traceparent(spans: InMemorySpanExporter) -> None:
    with tracing.serving("POST /hooks/{source}", {"traceparent": PARENT}, {"hookbus.source": "g"}):
        parent, _ = tracing.current()
        tracing.tag("hookbus.event.id", "evt_1")
    [done] = spans.get_finished_spans()
    assert done.kind == SpanKind.SERVER
    assert parent == f"00-4bf92f3577b34da6a3ce929d0e0e4736-{done.context.span_id:016x}-01"
    assert done.attributes is not None
    assert done.attributes["hookbus.event.id"] == "evt_1"


def test_a_malformed_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    with tracing.serving("POST /hooks/{source}", {"traceparent": "garbage"}, {}):
        pass
    [done] = spans.get_finished_spans()
    assert done.parent is None


class _Msg:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.headers = None
        self.subject = "hb.webhook.received.github.push"


def _consumer(seen: list[ev.Event[object]]) -> consumer.Consumer:
    async def handler(incoming: consumer.Incoming) -> AsyncIterator[ev.Event[object]]:
        seen.append(incoming.event)
        return
        yield

    c = consumer.Consumer(
        service="router", bus=None, outbox=None, durable="hb-router",  # type: ignore[arg-type]
        filter_subjects=["hb.>"], handler=handler, max_in_flight=1, max_deliver=3,
    )  # fmt: skip
    return c


async def test_the_consume_loop_makes_no_span_while_tracing_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a span was made with tracing off")

    monkeypatch.setattr(tracing, "consuming", refuse)
    seen: list[ev.Event[object]] = []
    event = _webhook(traceparent=PARENT)
    outcome = await _consumer(seen)._run_handler(_Msg(ev.encode(event)), 1, 1)  # type: ignore[arg-type]
    assert outcome == consumer.Ack()
    assert seen[0].traceparent == PARENT  # handed on untouched


async def test_the_consume_loop_hands_the_handler_the_spans_context(
    spans: InMemorySpanExporter,
) -> None:
    seen: list[ev.Event[object]] = []
    event = _webhook(traceparent=PARENT)
    outcome = await _consumer(seen)._run_handler(_Msg(ev.encode(event)), 1, 1)  # type: ignore[arg-type]
    assert outcome == consumer.Ack()
    [done] = spans.get_finished_spans()
    assert done.name == f"router {ev.WebhookReceived.TYPE}"
    assert done.attributes is not None
    assert done.attributes["hookbus.outcome"] == "ack"
    assert seen[0].traceparent == (
        f"00-4bf92f3577b34da6a3ce929d0e0e4736-{done.context.span_id:016x}-01"
    )
