"""When an endpoint is disabled: the one decision, and its metric.

An endpoint is disabled when it answers ``410 Gone`` (the receiver says it is gone for
good), or when every attempt at it has failed for ``dispatcher.disable_after`` (as Svix
does: a long outage, not one bad delivery). A disabled endpoint is sent nothing; its
deliveries end dead at once, with the reason, until someone enables it again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from prometheus_client import Counter

DISABLED: Final = Counter(
    "hookbus_endpoints_disabled_total",
    "Endpoints the dispatcher disabled, by why (gone: a 410 answer; failing: every attempt"
    " failed for dispatcher.disable_after)",
    ["reason"],
)

GONE_REASON: Final = "answered 410 Gone"


def disable_reason(
    status: int | None,
    failing_since: datetime | None,
    now: datetime,
    disable_after: float,
) -> tuple[str, str] | None:
    """Why an endpoint whose attempt just ended with ``status`` (``None``: no answer) is to
    be disabled, as (metric label, reason for people); ``None`` when it is not.
    ``failing_since`` is since when every attempt at it has failed (this one included),
    ``None`` when this attempt succeeded."""
    if status == 410:
        return "gone", GONE_REASON
    if failing_since is None or disable_after <= 0:
        return None
    if now - failing_since >= timedelta(seconds=disable_after):
        return "failing", (
            f"every attempt failed since {failing_since.isoformat(timespec='seconds')}"
            f" (dispatcher.disable_after = {disable_after:g} s)"
        )
    return None
