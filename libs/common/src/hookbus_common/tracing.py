"""OpenTelemetry traces across services: the W3C trace context rides in each event's
envelope (the CloudEvents distributed-tracing extension, ``traceparent``/``tracestate``).

The receiver starts a trace per webhook (or continues the sender's ``traceparent``), each
consume loop opens a span per message as a child of the context its event carries, and
the events a handler derives inherit the context of that span (``events.make_event``
copies its cause's), so one trace shows webhook → route → job or delivery.

Off unless ``[tracing] endpoint`` is set: then nothing is made per event but one check
of a module global (``enabled``); the SDK is imported only when tracing is turned on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgspec

from .events import Event
from .settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "configure",
    "consuming",
    "current",
    "enabled",
    "serving",
    "settled",
    "shutdown",
    "tag",
    "use",
    "with_current",
]

log = logging.getLogger(__name__)

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def enabled() -> bool:
    """Whether this process makes spans: the one check the hot paths pay when it is off."""
    return _tracer is not None


def use(provider: TracerProvider | None) -> None:
    """Make spans with ``provider`` from now on (None: stop). ``configure`` calls it; tests
    hand in a provider with an in-memory exporter. Not OpenTelemetry's global provider:
    a library or a test may have set that one already."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("hookbus")


def configure(settings: TracingSettings, service: str) -> bool:
    """Export this process's spans over OTLP/HTTP when ``settings.endpoint`` is set;
    returns whether it turned tracing on (False: off, or already on)."""
    if settings.endpoint is None or _tracer is not None:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": f"hookbus-{service}", "service.namespace": "hookbus"}
        ),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    exporter = OTLPSpanExporter(
        endpoint=settings.endpoint.rstrip("/") + "/v1/traces",
        headers=dict(settings.headers) or None,
        timeout=settings.export_timeout,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use(provider)
    log.info(
        "exporting traces",
        extra={"endpoint": settings.endpoint, "sample_ratio": settings.sample_ratio},
    )
    return True


def shutdown() -> None:
    """Send what is buffered and stop (at the end of a process that configured tracing)."""
    provider = _provider
    use(None)
    if provider is not None:
        provider.shutdown()


# ----------------------------------------------------------------- the trace context


def _parent(traceparent: str | None, tracestate: str | None) -> Any:
    """The OpenTelemetry context a W3C ``traceparent`` names (None: a new trace)."""
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return TraceContextTextMapPropagator().extract(carrier)


def _header(span: Span) -> tuple[str | None, str | None]:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    parent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    state = ctx.trace_state.to_header() if ctx.trace_state else ""
    return parent, state or None


def current() -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of the span in progress here; (None, None) without one."""
    if _tracer is None:
        return None, None
    from opentelemetry import trace

    return _header(trace.get_current_span())


def with_current(event: Event[Any]) -> Event[Any]:
    """``event`` carrying the context of the span in progress (unchanged without one)."""
    parent, state = current()
    if parent is None:
        return event
    return msgspec.structs.replace(event, traceparent=parent, tracestate=state)


def tag(key: str, value: str) -> None:
    """Set an attribute on the span in progress (nothing without one)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attribute(key, value)


# ------------------------------------------------------------------------- spans


@contextmanager
def serving(name: str, headers: Mapping[str, str], attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A server span for one inbound request, continuing the sender's ``traceparent``."""
    assert _tracer is not None, "tracing is off"
    from opentelemetry.trace import SpanKind

    context = _parent(headers.get("traceparent"), headers.get("tracestate"))
    with _tracer.start_as_current_span(
        name, context=context, kind=SpanKind.SERVER, attributes=dict(attributes)
    ) as span:
        yield span


@contextmanager
def consuming(
    service: str, event: Event[Any], subject: str, consumer: str, deliveries: int
) -> Iterator[tuple[Span, Event[Any]]]:
    """A span for one message a consume loop handles, a child of the context its event
    carries; yields it and the event carrying the span's own context, for the handler to
    derive its events from (they inherit it, so their spans become this one's children)."""
    assert _tracer is not None, "tracing is off"
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(
        f"{service} {event.type}",
        context=_parent(event.traceparent, event.tracestate),
        kind=SpanKind.CONSUMER,
        attributes={
            "hookbus.service": service,
            "hookbus.event.type": event.type,
            "hookbus.event.id": event.id,
            "hookbus.correlation_id": event.correlationid,
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": subject,
            "messaging.consumer.group.name": consumer,
            "messaging.message.id": event.id,
            "messaging.message.delivery_count": deliveries,
        },
    ) as span:
        yield span, with_current(event)


def settled(span: Span, outcome: str, reason: str | None = None) -> None:
    """Record how a message ended (ack, nak, defer, term); a term is an error."""
    span.set_attribute("hookbus.outcome", outcome)
    if reason is not None:
        span.set_attribute("hookbus.outcome.reason", reason[:500])
    if outcome == "term":
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, (reason or "")[:500]))
