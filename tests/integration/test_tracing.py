"""Traces across services against the real receiver (uvicorn), router and executor consume
loops, NATS and Postgres: one webhook's chain is one trace, each span the child of the
one that caused it; the trace context is kept in the log and the outbox relay publishes
it as it was."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from hookbus_cli.embedded import free_port
from hookbus_common import eventlog, tracing
from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings, extend
from hookbus_receiver.config import EventTypeFrom, NoneSource, ReceiverConfig, ReceiverSettings
from hookbus_router.config import Rule, ShellAction

from .pipeline import Pipeline
from .serving import serve
from .test_consumer import until

pytestmark = pytest.mark.integration

# Two actions in sequence: the router hears the first job's end and requests the second.
RULES = [
    Rule(
        name="deploy",
        source="traced",
        event="push",
        sequence=True,
        actions=[
            ShellAction(command=["/bin/sh", "-c", "echo built"], payload="none"),
            ShellAction(command=["/bin/sh", "-c", "echo deployed"], payload="none"),
        ],
    )
]

# The sender's own trace: the receiver continues it.
SENDER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER_SPAN = "00f067aa0ba902b7"


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
        provider.shutdown()


def _receiver(settings: Settings) -> ReceiverConfig:
    source = NoneSource(unsigned=True, event_type=EventTypeFrom(json_field="what"))
    return extend(
        settings, ReceiverConfig,
        receiver=ReceiverSettings(port=free_port()), sources={"traced": source},
    )  # fmt: skip


def _named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def _only(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = _named(spans, name)
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


def _parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


async def test_a_webhooks_chain_is_one_trace_each_span_the_child_of_its_cause(
    settings: Settings, rt: Runtime, spans: InMemorySpanExporter
) -> None:
    async with Pipeline(rt, RULES, waits_in_log=True), serve(_receiver(settings)) as base:
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(
                f"{base}/hooks/traced",
                json={"what": "push"},
                headers={"traceparent": f"00-{SENDER_TRACE}-{SENDER_SPAN}-01"},
            )
        assert answer.status_code == 202, answer.text
        webhook_id = answer.json()["id"]

        async def second_job_ran() -> bool:
            return len(_named(spans, f"executor {ev.JobRequestedV2.TYPE}")) == 2

        await until(second_job_ran, timeout=30)

    received = _only(spans, "POST /hooks/{source}")
    routed = _only(spans, f"router {ev.WebhookReceived.TYPE}")
    jobs = _named(spans, f"executor {ev.JobRequestedV2.TYPE}")
    [job] = [j for j in jobs if _parent_of(j) == routed.context.span_id]
    [second] = [j for j in jobs if j is not job]
    # The router hears each job's end: the first's requests the second action.
    ends = _named(spans, f"router {ev.JobSucceeded.TYPE}")
    [ended] = [e for e in ends if _parent_of(e) == job.context.span_id]
    [last] = [e for e in ends if e is not ended]

    # One trace, the sender's: the receiver continued it.
    trace_ids = {s.context.trace_id for s in (received, routed, job, ended, second, last)}
    assert trace_ids == {int(SENDER_TRACE, 16)}
    assert _parent_of(received) == int(SENDER_SPAN, 16)
    assert received.kind == SpanKind.SERVER
    assert received.attributes is not None
    assert received.attributes["http.response.status_code"] == 202
    assert received.attributes["hookbus.event.id"] == webhook_id
    # Each consumer's span is the child of the span that made the event it handled.
    assert _parent_of(routed) == received.context.span_id
    assert _parent_of(job) == routed.context.span_id
    assert _parent_of(ended) == job.context.span_id
    assert _parent_of(second) == ended.context.span_id
    assert _parent_of(last) == second.context.span_id
    for span, service in ((routed, "router"), (job, "executor"), (ended, "router"),
                          (second, "executor")):  # fmt: skip
        assert span.kind == SpanKind.CONSUMER
        assert span.attributes is not None
        assert span.attributes["hookbus.service"] == service
        assert span.attributes["hookbus.outcome"] == "ack"
    assert routed.attributes is not None
    assert routed.attributes["hookbus.event.id"] == webhook_id

    # The log keeps each event's context: the webhook's names the receiver's span.
    async with rt.pool.acquire() as conn:
        chain = await eventlog.chain(conn, webhook_id)
    first = chain[0].event
    assert first.id == webhook_id
    assert first.traceparent == f"00-{SENDER_TRACE}-{received.context.span_id:016x}-01"
    assert all(e.event.traceparent and SENDER_TRACE in e.event.traceparent for e in chain)


async def test_tracing_off_leaves_the_envelope_without_a_context(
    settings: Settings, rt: Runtime
) -> None:
    assert not tracing.enabled()
    async with serve(_receiver(settings)) as base, httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(
            f"{base}/hooks/traced",
            json={"what": "push"},
            headers={"traceparent": f"00-{SENDER_TRACE}-{SENDER_SPAN}-01"},
        )
    assert answer.status_code == 202
    async with rt.pool.acquire() as conn:
        [logged] = await eventlog.chain(conn, answer.json()["id"])
    assert logged.event.traceparent is None


async def test_the_relay_publishes_an_event_with_its_trace_context(rt: Runtime) -> None:
    data = ev.WebhookReceived(source="github", kind="github", event_type="push")
    event = msgspec.structs.replace(
        ev.make_event(data, source="/hookbus/receiver/github"),
        traceparent=f"00-{SENDER_TRACE}-{SENDER_SPAN}-01",
        tracestate="vendor=abc",
    )
    sub = await rt.bus.nc.subscribe(event.bus_subject(rt.bus.prefix))
    await rt.outbox.commit([event])  # committed, never published: left to the relay
    assert await rt.outbox.relay_once(older_than=0) == 1
    msg = await sub.next_msg(timeout=10)
    relayed = ev.decode(msg.data)
    assert (relayed.id, relayed.traceparent, relayed.tracestate) == (
        event.id,
        event.traceparent,
        "vendor=abc",
    )
    # A derived event carries its cause's context on.
    child = ev.make_event(ev.WebhookReceived(source="x", kind="x", event_type="y"), source="t",
                          cause=relayed)  # fmt: skip
    assert (child.traceparent, child.tracestate) == (event.traceparent, "vendor=abc")
    await sub.unsubscribe()
