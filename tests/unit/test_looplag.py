"""Loop-lag and GC-pause watching: a blocked loop is measured and reported."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest

from hookbus_common import looplag


def _count(hist: object) -> float:
    return sum(
        s.value
        for m in hist.collect()
        for s in m.samples
        if s.name.endswith("_count")  # type: ignore[attr-defined]
    )


async def test_a_blocked_loop_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    before = _count(looplag.LOOP_LAG)
    with caplog.at_level(logging.WARNING, logger="hookbus_common.looplag"):
        task = asyncio.create_task(looplag.watch_loop(stop, interval=0.01))
        await asyncio.sleep(0.02)
        time.sleep(0.12)  # block the loop, as a long GC or a blocking call would
        await asyncio.sleep(0.05)
        stop.set()
        await task
    assert _count(looplag.LOOP_LAG) > before
    lates = [r for r in caplog.records if r.getMessage() == "event loop ran late"]
    assert lates
    assert max(r.ms for r in lates) >= 50  # type: ignore[attr-defined]


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
