"""Is the process itself the slow part? Event-loop lag and garbage-collection pauses, as
metrics and as log lines when they are long enough to show in request latency."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import Histogram

log = logging.getLogger(__name__)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LOOP_LAG = Histogram(
    "hookbus_event_loop_lag_seconds",
    "How late the event loop ran a timer: time it spent on other work, blocked, or unscheduled",
    buckets=_BUCKETS,
)
GC_PAUSE = Histogram(
    "hookbus_gc_pause_seconds", "Garbage-collection pauses by generation", ["generation"],
    buckets=_BUCKETS,
)  # fmt: skip
# Long enough to show up in a webhook's answer time.
REPORT_SECONDS = 0.05

_gc_started: float | None = None
_deliberate = False


@contextlib.contextmanager
def deliberate() -> Iterator[None]:
    """Collections run on purpose inside (start-up's, before any work is taken) stall
    nothing anyone waits for: they are neither observed as pauses nor logged."""
    global _deliberate
    _deliberate = True
    try:
        yield
    finally:
        _deliberate = False


def _gc_callback(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if _deliberate:
        return
    try:
        if phase == "start":
            _gc_started = time.perf_counter()
            return
        started, _gc_started = _gc_started, None
        if started is None:
            return  # its start went unrecorded (below)
        took = time.perf_counter() - started
        GC_PAUSE.labels(str(info.get("generation", "?"))).observe(took)
        if took >= REPORT_SECONDS:
            log.warning(
                "long garbage collection",
                extra={"generation": info.get("generation"), "ms": round(took * 1000, 1),
                       "collected": info.get("collected")},
            )  # fmt: skip
    except RecursionError:
        # A collection runs on whatever stack allocated last, at times a few frames
        # short of the recursion limit (a deeply nested payload being decoded): that
        # pause goes unmeasured. Raised from a GC callback, the error would be printed
        # as unraisable, and the hook printing it would run out of room too.
        _gc_started = None


def watch_gc() -> None:
    if _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)


def unwatch_gc() -> None:
    if _gc_callback in gc.callbacks:
        gc.callbacks.remove(_gc_callback)


# How often the probe sets a timer to see how late it runs. Every stall that lasts longer
# than this delays one of its timers, so none of those goes unseen; a shorter stall shows
# when it overlaps a timer (a sample, in proportion to its length).
INTERVAL = 0.5
# Ticks with no work (``touch``) before the probe parks: an idle process then sets no
# timer at all until work comes back (each wake-up costs CPU, and a stall with no work
# delays nobody).
IDLE_TICKS = 10

_busy = False
_parked: asyncio.Event | None = None


def touch() -> None:
    """Say that work arrived (a request, a message): the probe runs while there is work.
    Cheap enough for every request."""
    global _busy
    _busy = True
    if _parked is not None:
        _parked.set()


async def _park(stop: asyncio.Event) -> None:
    """Wait, with no timer, until ``touch`` or ``stop``."""
    global _parked
    _parked = parked = asyncio.Event()
    try:
        if _busy:
            return  # work came while we decided to park
        waiters = {asyncio.ensure_future(parked.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
    finally:
        _parked = None


async def watch_loop(
    stop: asyncio.Event,
    interval: float = INTERVAL,
    *,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    idle_ticks: int = IDLE_TICKS,
) -> None:
    """Measure how late each timer fires until ``stop`` is set; park after ``idle_ticks``
    ticks without work, until work comes again."""
    global _busy
    quiet = 0
    while not stop.is_set():
        if quiet >= idle_ticks:
            await _park(stop)
            quiet = 0
            continue
        started = clock()
        await sleep(interval)
        lag = max(0.0, clock() - started - interval)
        LOOP_LAG.observe(lag)
        if lag >= REPORT_SECONDS:
            log.warning("event loop ran late", extra={"ms": round(lag * 1000, 1)})
        if _busy:
            _busy = False
            quiet = 0
        else:
            quiet += 1
