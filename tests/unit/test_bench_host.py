"""The bench's reading of the machine's CPU times: time the host took (steal) is neither
busy nor idle, and a run that lost enough of it says so."""

from __future__ import annotations

import pytest
from bench import host

# Two readings 10 s apart on 2 cores (100 ticks a second: 2,000 ticks in all).
BEFORE = "cpu  1000 0 500 8000 100 0 0 400 0 0\ncpu0 ...\n"
AFTER = "cpu  1600 0 700 8600 100 0 100 900 0 0\ncpu0 ...\n"


def test_steal_is_its_own_share_not_busy_time() -> None:
    a, b = host.parse(BEFORE), host.parse(AFTER)
    assert b.total_s - a.total_s == pytest.approx(2000 * host.TICK_S)
    # user 600 + system 200 + softirq 100 ticks ran; 500 were the host's.
    assert b.busy_s - a.busy_s == pytest.approx(900 * host.TICK_S)
    assert host.stolen_share(a, b) == pytest.approx(0.25)


def test_a_kernel_without_the_later_columns_reads_as_no_steal() -> None:
    old = host.parse("cpu  10 0 5 80 1\n")
    assert old.stolen_s == 0
    assert old.busy_s == pytest.approx(15 * host.TICK_S)


def test_the_note_warns_only_above_a_noticeable_share() -> None:
    assert "lower than this machine gives" in host.note(0.25)
    assert "25%" in host.note(0.25)
    quiet = host.note(0.01)
    assert "1%" in quiet
    assert "lower than" not in quiet
