"""Prometheus metrics shared by every service (each service adds its own beside these)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_APPENDED = Counter(
    "hookbus_events_appended_total", "Events appended to the event log", ["type"]
)
EVENTS_PUBLISHED = Counter("hookbus_events_published_total", "Events published after commit")
EVENTS_RELAYED = Counter(
    "hookbus_events_relayed_total", "Events published late by the outbox relay"
)
PUBLISH_FAILURES = Counter(
    "hookbus_publish_failures_total", "Publishes that failed after commit (left to the relay)"
)
MESSAGES_HANDLED = Counter(
    "hookbus_messages_handled_total",
    "Bus messages handled by a consumer, by outcome (ack, nak, defer, term)",
    ["consumer", "outcome"],
)
HANDLE_SECONDS = Histogram(
    "hookbus_message_handle_seconds", "Time to handle one bus message", ["consumer"]
)
IN_FLIGHT = Gauge("hookbus_messages_in_flight", "Bus messages being handled", ["consumer"])
CONSUMER_PENDING = Gauge(
    "hookbus_consumer_pending",
    "Messages of the stream a service's durable consumer has yet to be delivered (JetStream"
    " num_pending), sampled every 15 s by each process while it consumes",
    ["consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "hookbus_consumer_ack_pending",
    "Messages delivered to a service's durable consumer and not yet acked (JetStream"
    " num_ack_pending), sampled with hookbus_consumer_pending",
    ["consumer"],
)
