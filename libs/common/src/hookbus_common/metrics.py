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
