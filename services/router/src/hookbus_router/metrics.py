"""The router's own metrics (the consume loop's are the kernel's)."""

from __future__ import annotations

from prometheus_client import Counter

UNMATCHED = Counter(
    "hookbus_router_unmatched_total",
    "Webhooks no rule matched, acknowledged without a routing record",
)
