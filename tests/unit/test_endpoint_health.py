"""When the dispatcher disables an endpoint: a 410, or failing for disable_after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hookbus_dispatcher.health import GONE_REASON, disable_reason

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0


@pytest.mark.parametrize(
    ("status", "since", "after", "expected"),
    [
        (410, None, DAY, "gone"),
        (410, NOW, 0.0, "gone"),  # a 410 disables even with disable_after off
        (503, NOW - timedelta(hours=23), DAY, None),
        (503, NOW - timedelta(hours=24), DAY, "failing"),
        (None, NOW - timedelta(days=3), DAY, "failing"),  # no answer at all
        (503, NOW - timedelta(days=3), 0.0, None),  # off
        (200, None, DAY, None),
        (404, NOW, DAY, None),  # just started failing
    ],
)
def test_when_an_endpoint_is_disabled(
    status: int | None, since: datetime | None, after: float, expected: str | None
) -> None:
    decided = disable_reason(status, since, NOW, after)
    assert (decided[0] if decided else None) == expected
    if expected == "gone":
        assert decided is not None
        assert decided[1] == GONE_REASON
    if expected == "failing":
        assert decided is not None
        assert "dispatcher.disable_after = 86400 s" in decided[1]
