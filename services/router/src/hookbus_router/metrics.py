"""The router's own metrics (the consume loop's are the kernel's)."""

from __future__ import annotations

from prometheus_client import Counter

UNMATCHED = Counter(
    "hookbus_router_unmatched_total",
    "Webhooks no rule matched, acknowledged without a routing record",
)

SKIPPED = Counter(
    "hookbus_router_actions_skipped_total",
    "Actions of matched rules not requested because a template failed for the event",
    ["rule"],
)

RELOADS = Counter(
    "hookbus_router_reloads_total",
    "Reloads of the rules: applied, unchanged, or refused (the old rules stay)",
    ["result"],
)
