"""The retry schedule's waits (no I/O)."""

from __future__ import annotations

import pytest

from hookbus_dispatcher.config import DispatcherSettings
from hookbus_dispatcher.schedule import DEFAULT_SCHEDULE, JITTER, retry_delay


def test_the_default_schedule_is_svixs() -> None:
    assert DEFAULT_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert DispatcherSettings().attempts() == 8
    assert DispatcherSettings(max_attempts=3).attempts() == 3
    assert DispatcherSettings(retry_schedule=[1.0]).attempts() == 2


@pytest.mark.parametrize(
    ("number", "base"), [(1, 5), (2, 300), (3, 1800), (7, 36000), (8, 36000), (50, 36000)]
)
def test_each_attempt_waits_its_entry_and_the_last_repeats(number: int, base: float) -> None:
    assert retry_delay(number, DEFAULT_SCHEDULE, lambda: 0.5) == pytest.approx(base)


def test_jitter_spreads_each_wait_both_ways() -> None:
    assert retry_delay(2, DEFAULT_SCHEDULE, lambda: 0.0) == pytest.approx(300 * (1 - JITTER))
    assert retry_delay(2, DEFAULT_SCHEDULE, lambda: 1.0) == pytest.approx(300 * (1 + JITTER))


def test_an_empty_or_zero_schedule_retries_at_once() -> None:
    assert retry_delay(1, [], lambda: 0.7) == 0.0
    assert retry_delay(1, [0.0], lambda: 0.7) == 0.0
