"""Loop-lag and GC-pause watching: a blocked loop is measured and reported."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from hookbus_common import gcsettle, looplag


def _count(hist: object) -> float:
    return sum(
        s.value
        for m in hist.collect()
        for s in m.samples
        if s.name.endswith("_count")  # type: ignore[attr-defined]
    )


class FakeLoop:
    """A clock and a sleep whose timers fire as late as the test says: ticks on time, then
    one 120 ms late (the loop was blocked, as by a long GC or a blocking call), then stop."""

    def __init__(self, stop: asyncio.Event, lateness: list[float]) -> None:
        self.now = 0.0
        self.stop = stop
        self.lateness = lateness

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.lateness.pop(0)
        if not self.lateness:
            self.stop.set()


async def test_a_blocked_loop_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    loop = FakeLoop(stop, [0.0, 0.001, 0.12, 0.0])
    before = _count(looplag.LOOP_LAG)
    with caplog.at_level(logging.WARNING, logger="hookbus_common.looplag"):
        await looplag.watch_loop(stop, interval=0.01, clock=loop.clock, sleep=loop.sleep)
    assert _count(looplag.LOOP_LAG) == before + 4
    lates = [r for r in caplog.records if r.getMessage() == "event loop ran late"]
    # Only the blocked tick is over the reporting threshold, and it says by how much.
    assert [r.ms for r in lates] == [120.0]  # type: ignore[attr-defined]


def test_gc_pauses_are_observed() -> None:
    looplag.watch_gc()
    looplag.watch_gc()  # idempotent
    try:
        assert gc.callbacks.count(looplag._gc_callback) == 1
        before = _count(looplag.GC_PAUSE)
        gc.collect()
        assert _count(looplag.GC_PAUSE) > before
    finally:
        looplag.unwatch_gc()
    assert looplag._gc_callback not in gc.callbacks


@pytest.fixture(autouse=True)
def no_work_yet() -> None:
    looplag._busy = False  # work seen by an earlier test is not this one's


class CountingSleep:
    """A sleep that takes no time and counts the timers the probe sets; ``work`` says
    whether work arrives during each of them."""

    def __init__(self, work: list[bool]) -> None:
        self.timers = 0
        self.work = work

    async def sleep(self, seconds: float) -> None:
        self.timers += 1
        if self.work and self.work.pop(0):
            looplag.touch()
        await asyncio.sleep(0)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_an_idle_process_parks_the_probe_until_work_comes() -> None:
    stop = asyncio.Event()
    timers = CountingSleep([])
    probe = asyncio.create_task(looplag.watch_loop(stop, 0.5, sleep=timers.sleep, idle_ticks=3))
    await _settle()
    assert timers.timers == 3  # three quiet ticks, then no timer at all
    await _settle()
    assert timers.timers == 3

    looplag.touch()  # a request or a message arrives
    await _settle()
    assert timers.timers == 3 + 1 + 3  # the tick that saw the work, then three quiet ones

    stop.set()
    looplag.touch()
    await asyncio.wait_for(probe, 1)


async def test_a_busy_process_keeps_the_probe_running() -> None:
    stop = asyncio.Event()
    timers = CountingSleep([True] * 8)
    probe = asyncio.create_task(looplag.watch_loop(stop, 0.5, sleep=timers.sleep, idle_ticks=3))
    await _settle()
    assert timers.timers == 8 + 3  # every tick with work, then three quiet ones
    stop.set()
    looplag.touch()
    await asyncio.wait_for(probe, 1)


async def test_a_stop_ends_a_parked_probe() -> None:
    stop = asyncio.Event()
    timers = CountingSleep([])
    probe = asyncio.create_task(looplag.watch_loop(stop, 0.5, sleep=timers.sleep, idle_ticks=1))
    await _settle()
    stop.set()
    await asyncio.wait_for(probe, 1)
    assert timers.timers == 1


def test_a_collection_run_on_purpose_is_not_reported_as_a_pause(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every collection is "long" here: the plain one is logged, start-up's own is not.
    monkeypatch.setattr(looplag, "REPORT_SECONDS", 0.0)
    looplag.watch_gc()
    try:
        with caplog.at_level(logging.WARNING, logger="hookbus_common.looplag"):
            gc.collect()
            assert [r.message for r in caplog.records] == ["long garbage collection"]
            caplog.clear()
            before = _count(looplag.GC_PAUSE)
            try:
                gc.unfreeze()
                gcsettle.settle()
            finally:
                gc.unfreeze()
            assert caplog.records == []
            assert _count(looplag.GC_PAUSE) == before
            gc.collect()  # and the next one is watched again
            assert [r.message for r in caplog.records] == ["long garbage collection"]
    finally:
        looplag.unwatch_gc()


class _NoRoom:
    """What observing a pause does a few frames short of the recursion limit."""

    def labels(self, *_: object) -> _NoRoom:
        raise RecursionError("maximum recursion depth exceeded in comparison")


def test_a_collection_near_the_recursion_limit_goes_unmeasured_without_raising(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A collection can start a few frames short of the recursion limit (a deeply nested
    payload being decoded): the callback then has no room to observe the pause. It drops
    it rather than raise (from a GC callback the error is unraisable, and the hook
    printing it runs out of room too)."""
    stop = {"generation": 2, "collected": 0}
    real = looplag.GC_PAUSE
    monkeypatch.setattr(looplag, "GC_PAUSE", _NoRoom())
    looplag._gc_callback("start", {"generation": 2})
    looplag._gc_callback("stop", stop)  # raises nothing
    monkeypatch.setattr(looplag, "GC_PAUSE", real)
    before = _count(real)
    # A stop whose start went unrecorded is not measured from an older start...
    looplag._gc_callback("stop", stop)
    assert _count(real) == before
    # ...and the next whole collection is measured again.
    looplag._gc_callback("start", {"generation": 2})
    looplag._gc_callback("stop", stop)
    assert _count(real) == before + 1
