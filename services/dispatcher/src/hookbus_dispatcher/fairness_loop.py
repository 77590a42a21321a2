"""The dispatcher's consume loop: the kernel's ``Consumer``, reading ahead of its sending
slots into a :class:`~hookbus_dispatcher.fairness.FairQueue` and handing each free slot
to the next tenant and destination in turn.

Everything else is the kernel's: each message is still handled, committed and then acked
by ``Consumer._handle``; a message read ahead is only not handled yet. It stays unacked
(JetStream's at-least-once holds), and is told to JetStream as in progress while it
waits, so it is not handed to another replica meanwhile. At a stop, what waits is given
back at once (nak without delay) for another replica to take.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge

from hookbus_common import events as ev
from hookbus_common.consumer import Consumer, Defer
from hookbus_common.events import token
from hookbus_common.pull import StandingPull

from . import presence, schedule
from .backlog import REFRESH_SECONDS, Reporter
from .config import DispatcherConfig
from .delivery import attempts_made
from .fairness import FairQueue, Pace
from .presence import Presence

log = logging.getLogger(__name__)

PULL_SIZE: Final = 1024
"""Most messages the standing pull asks for at once (topped up at half)."""

HEARTBEAT_CHUNK: Final = 32
"""Messages told in progress (or given back) between two turns of the event loop."""

HEARTBEAT_PAUSE: Final = 0.001
"""Seconds between two chunks of messages told in progress: a flood read ahead together
comes due together, and telling thousands at once held every other delivery's next step
back for tens of milliseconds; spread out, they take a fraction of a second in all."""

READ_CHUNK: Final = 128
"""Messages put in the read-ahead between two turns of the event loop (a flood comes
1,024 to a pull, 4-5 ms of work that other deliveries would otherwise wait behind)."""

BEHIND_EVERY: Final = 1.0
"""Seconds between looks at whether the stream holds more behind a full read-ahead."""

SHARE_HORIZON: Final = 2.0
"""Seconds of sending (at this replica's recent pace) it keeps read ahead at least while
another replica waits for work."""

SHARE_HOLD: Final = 10.0
"""Seconds a replica that gave work back keeps its read-ahead that short."""

GIVEN_BACK = Counter(
    "hookbus_dispatcher_given_back_total",
    "Deliveries read ahead and given back to the bus for another dispatcher replica that"
    " said it waits for work",
)
SPILLED = Counter(
    "hookbus_dispatcher_spilled_total",
    "Deliveries moved from a full read-ahead onto the schedule (one destination held most)",
)
BACKLOG = Gauge(
    "hookbus_dispatcher_backlog",
    "Deliveries read by this dispatcher and waiting for a sending slot, by tenant and destination",
    ["tenant", "endpoint"],
)


class _RouteData(msgspec.Struct):
    tenant: str = "default"
    endpoint: str | None = None
    notification: str | None = None
    url: str = ""


class _Route(msgspec.Struct):
    data: _RouteData = msgspec.field(default_factory=_RouteData)


_ROUTE = msgspec.json.Decoder(_Route)


def destination(data: _RouteData) -> str:
    """What a delivery's in-flight cap and turn are counted by: its endpoint, its
    notification channel, or (a ``url`` action) the URL's host."""
    if data.notification:
        return f"notification:{data.notification}"
    if data.endpoint:
        return data.endpoint
    rest = data.url.partition("://")[2]
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"url:{host.lower()}"


def route(msg: Msg) -> tuple[str, str]:
    """(tenant, destination) of a message, read from its data without the full decode
    (an undecodable message gets a place of its own; its handler terminates it)."""
    try:
        data = _ROUTE.decode(msg.data).data
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "_", "_"
    return token(data.tenant), destination(data)


@dataclass
class _Held:
    msg: Msg
    touched: float


Spill = Callable[[Msg], Awaitable[bool]]
"""Moves a message out of the read-ahead buffer (onto the durable schedule, acked);
False when it could not (it stays)."""


class FairConsumer(Consumer):
    """``Consumer`` with a fair read-ahead: up to ``buffer`` messages are fetched ahead of
    the ``max_in_flight`` sending slots and served by tenant and destination
    (:class:`FairQueue`), at most ``cap_for(destination)`` at once per destination.

    With the buffer full and one destination holding more than half of it, ``spill`` (if
    given) moves that destination's newest message out, so a slow destination's backlog
    cannot stop the loop from reading what other tenants sent. Only while something is
    behind them: with nothing left in the stream (the durable's ``num_pending``, looked at
    once a second while the buffer is full), reading on would read nothing, and moving
    deliveries out and back would cost two writes and a second read each for nothing.

    Replicas share one durable, and the first to read a backlog reads it ahead while a
    replica started later finds nothing. With ``share``, a replica holding more than
    ``SHARE_HORIZON`` seconds of its own sending says so once a second (``presence``); a
    replica holding clearly less answers that it waits, with what it holds, and the holder
    gives back the newest of what it holds beyond its part (what they hold together,
    split evenly, never below those seconds of sending) — a nak without delay, which the
    server hands to a waiting pull request — and reads ahead only its part for
    ``SHARE_HOLD`` seconds. A lone replica hears nobody and never gives anything back.
    """

    def __init__(
        self,
        *,
        buffer: int,
        cap_for: Callable[[str], int],
        weight_for: Callable[[str], float] = lambda _t: 1.0,
        spill: Spill | None = None,
        backlog_pool: asyncpg.Pool | None = None,
        backlog_every: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        share: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.share = share
        self.presence: Presence | None = None
        self.pace = Pace()
        self._shared_until = float("-inf")
        self.backlog_pool = backlog_pool
        self.backlog_every = backlog_every
        self.buffer = max(1, buffer)
        self._share = self.buffer  # what it reads ahead while sharing
        self.queue: FairQueue[_Held] = FairQueue(cap_for=cap_for, weight_for=weight_for)
        self.spill = spill
        # Messages in the stream not yet delivered to any replica, as last looked at
        # (None: not looked at yet).
        self.behind: int | None = None
        self._behind_at = float("-inf")
        self._sub: JetStreamContext.PullSubscription | None = None
        self.clock = clock
        self.max_ack_pending = max(self.max_ack_pending, self.buffer + self.max_in_flight * 2)
        self._changed = asyncio.Event()
        # Set when the read-ahead grows deep enough that sharing it could matter: until
        # then the sharing loop sleeps (an idle dispatcher wakes for nothing).
        self._deep = asyncio.Event()
        self._seen: set[tuple[str, str]] = set()
        self._closing = False
        # Messages taken from the read-ahead and being handled: an attempt may outlast
        # ``ack_wait`` (an endpoint's timeout is its own), so they are kept alive too.
        self._sending: dict[asyncio.Task[None], _Held] = {}
        self._drain_beat: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the loop

    async def _fetch_loop(
        self,
        sub: JetStreamContext.PullSubscription,
        stop: asyncio.Event,
        stopped: asyncio.Future[Any],
    ) -> None:
        self._sub = sub
        feeder = asyncio.create_task(self._feed(stop), name="fair-feed")
        helpers = [feeder]
        if self.backlog_pool is not None:
            # The backlog of every replica together, from Postgres (one query a while).
            reporter = Reporter()
            helpers.append(
                asyncio.create_task(
                    reporter.run(self.backlog_pool, stop, self.backlog_every), name="backlog"
                )
            )
        # Messages come on a standing pull (the kernel's, see ``pull``): what the server
        # sends lands in one list, taken in bulk, so reading a flood into the read-ahead
        # costs no turn of the event loop per message (a fetch's per-message waits did).
        try:
            if self.share:
                self.presence = Presence(
                    self.bus.nc, self.bus.prefix, wants_work=self._wants_work,
                    clock=self.clock,
                )  # fmt: skip
                await self.presence.start()
                helpers.append(asyncio.create_task(self._share_out(stop), name="share"))
            async with self._pulling(sub, stopped, min(self.buffer, PULL_SIZE)) as puller:
                try:
                    await self._read_ahead(puller, stop)
                finally:
                    self._closing = True  # nothing more starts, closing the pull included
        finally:
            self._closing = True
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if self.presence is not None:
                await self.presence.close()
            await self._give_back()
            if self._sending:
                # Ends by itself once they are done, or the drain's time is up.
                self._drain_beat = asyncio.create_task(
                    self._keep_sending_alive(), name="drain-beat"
                )

    async def _read_ahead(self, puller: StandingPull, stop: asyncio.Event) -> None:
        """Fill the read-ahead from the standing pull until a stop."""
        while not stop.is_set():
            room = self._limit() - len(self.queue)
            if room <= 0:
                # Only a full read-ahead spills: one held short while it shares a backlog
                # with other replicas just reads nothing more (moved to the schedule, a
                # delivery would wait there 15-45 s, for no reason).
                full = len(self.queue) >= self.buffer
                if not (full and await self._spill_one()):
                    await self._wait_change(1.0)
                continue
            if not await self._asked(puller, room):
                continue
            msgs = await puller.take()
            if stop.is_set():
                for msg in msgs:  # given back, as what waits in the queue is
                    with contextlib.suppress(Exception):
                        await msg.nak()
                break
            for at in range(0, len(msgs), READ_CHUNK):
                if at:
                    await asyncio.sleep(0)  # let deliveries in flight take their next step
                now = self.clock()
                for msg in msgs[at : at + READ_CHUNK]:
                    tenant, dest = route(msg)
                    self.queue.put(tenant, dest, _Held(msg, now))
                # Started here, not by the feeder's next turn: under load every hop
                # through the event loop is a wait.
                self._start_what_fits()
            if len(self.queue) >= self._deep_at():
                self._deep.set()
            if msgs:
                self._changed.set()

    async def _wait_change(self, seconds: float | None) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout=seconds)

    async def _feed(self, stop: asyncio.Event) -> None:
        """Hand free slots to messages in fair order; keep held messages alive."""
        older, every = self._beat_times()
        last_beat = self.clock()
        while not stop.is_set():
            self._start_what_fits()
            self._report()
            now = self.clock()
            if now - last_beat >= every:
                await self._heartbeat(now, older)
                last_beat = now
            # Nothing waiting or being sent, nothing to keep alive: sleep until something
            # comes.
            await self._wait_change(every if self.queue or self._sending else None)

    def _start_what_fits(self) -> int:
        """Start handling as many waiting messages as there are free slots (and room at
        their destinations); how many were started."""
        started = 0
        while not self._closing and len(self._tasks) < self.max_in_flight:
            taken = self.queue.take()
            if taken is None:
                break
            _tenant, dest, held = taken
            task = asyncio.create_task(self._handle(held.msg))
            self._tasks.add(task)
            self._sending[task] = held
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(self._sent)
            task.add_done_callback(functools.partial(self._finished_one, dest))
            started += 1
        return started

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.pop(task, None)

    def _finished_one(self, dest: str, _task: object = None) -> None:
        self.queue.done(dest)
        self.pace.finished(self.clock())
        self._start_what_fits()  # the freed slot goes to the next in turn at once
        self._changed.set()

    def _beat_times(self) -> tuple[float, float]:
        """(older, every): a message is told in progress once it has waited ``older``
        (half of ``ack_wait``) since it was read or last told, looked for ``every`` (a
        sixth): told at most two thirds of the way, it keeps a third of ``ack_wait`` to
        spare for a busy event loop."""
        older = max(0.1, self.ack_wait / 2)
        return older, older / 3

    async def _keep_sending_alive(self) -> None:
        """At a stop, while the deliveries being sent drain (``drain_timeout`` at most),
        keep telling JetStream they are in progress: one told just before the stop would
        otherwise go to another replica while its attempt here still runs."""
        older, every = self._beat_times()
        deadline = self.clock() + self.drain_timeout
        while self._sending and self.clock() < deadline:
            await asyncio.sleep(every)
            await self._heartbeat(self.clock(), older)

    async def _heartbeat(self, now: float, older: float) -> int:
        """Tell JetStream that every message held ``older`` seconds or more since it was
        read or last told (waiting in the read-ahead, or being sent) is in progress; how
        many were told."""
        told = 0
        for held in [*self.queue, *self._sending.values()]:
            if now - held.touched >= older:
                held.touched = now
                with contextlib.suppress(Exception):
                    await held.msg.in_progress()
                told += 1
                if told % HEARTBEAT_CHUNK == 0:
                    # A flood read ahead is thousands of messages read together, due
                    # together: the deliveries in flight run between chunks.
                    await asyncio.sleep(HEARTBEAT_PAUSE)
        return told

    async def _spill_one(self) -> bool:
        if self.spill is None:
            return False
        longest = self.queue.longest()
        if longest is None:
            return False
        backlog = self.queue.backlog()
        if backlog[longest] * 2 <= self.buffer:
            return False
        if await self._nothing_behind():
            return False  # nothing behind them to read
        held = self.queue.pop_newest(*longest)
        try:
            moved = await self.spill(held.msg)
        except Exception as exc:
            log.warning("could not spill a delivery", extra={"error": repr(exc)})
            moved = False
        if not moved:
            self.queue.put(*longest, held)
        return moved

    # ------------------------------------------------------------------ sharing

    def _wants_work(self, theirs: int) -> int | None:
        """What this replica holds, when another replica holding ``theirs`` should give it
        some (it holds clearly less), else None."""
        mine = len(self.queue)
        if self._closing or mine + 2 * self.max_in_flight >= theirs:
            return None
        return mine

    def _deep_at(self) -> int:
        """The least read-ahead a replica speaks of: what it holds beyond ``_keep`` (at
        least four batches of slots) must come to a batch of slots."""
        return self.max_in_flight * 5

    def _may_share(self) -> bool:
        """Whether the sharing loop has anything to look at: a deep read-ahead, or
        replicas that answered that they wait."""
        assert self.presence is not None
        return len(self.queue) >= self._deep_at() or bool(self.presence.waiting_peers())

    def _keep(self) -> int:
        """What this replica holds read ahead at least while another one waits for work."""
        rate = self.pace.per_second(self.clock())
        return max(self.max_in_flight * 4, int(rate * SHARE_HORIZON))

    def _limit(self) -> int:
        """How many messages to hold read ahead now."""
        if self.clock() < self._shared_until:
            return min(self.buffer, self._share)
        return self.buffer

    async def _share_out(self, stop: asyncio.Event) -> None:
        """Once a second: give the surplus to the replicas that said they wait, then say
        what is held, if it is more than this replica will send soon."""
        assert self.presence is not None
        while not stop.is_set():
            if not self._may_share():
                # Too little held to speak of, and nobody waits on what this replica
                # said: sleep until the read-ahead deepens (the loop is cancelled at a stop).
                self._deep.clear()
                if not self._may_share():
                    await self._deep.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), presence.EVERY)
            if stop.is_set():
                return
            keep = self._keep()
            waiting = self.presence.waiting_peers()
            if waiting:
                # Its part of what it and the waiting replicas hold together.
                share = max(keep, (len(self.queue) + sum(waiting)) // (len(waiting) + 1))
                surplus = len(self.queue) - share
                if surplus >= self.max_in_flight:
                    self._share = share
                    self._shared_until = self.clock() + SHARE_HOLD
                    given = await self._give_back_newest(surplus)
                    self.presence.answered()
                    GIVEN_BACK.inc(given)
                    log.info(
                        "gave read-ahead deliveries back for replicas waiting for work",
                        extra={"consumer": self.durable, "given": given, "waiting": len(waiting),
                               "kept": len(self.queue)},
                    )  # fmt: skip
            if len(self.queue) - keep >= self.max_in_flight:
                await self.presence.hold(len(self.queue))

    async def _give_back_newest(self, n: int) -> int:
        """Give back up to ``n`` waiting messages, the newest of the longest queues first
        (what a small tenant waits for stays here, in its turn). A message given back is
        not a failure: it counts toward no failure budget here."""
        given = 0
        while given < n:
            longest = self.queue.longest()
            if longest is None:
                break
            held = self.queue.pop_newest(*longest)
            self._ledger.settled(held.msg.metadata.sequence.stream, Defer(0.0, "given back"))
            with contextlib.suppress(Exception):
                await held.msg.nak()
            given += 1
            if given % HEARTBEAT_CHUNK == 0:
                await asyncio.sleep(0)
        self._changed.set()
        return given

    async def _nothing_behind(self) -> bool:
        """Whether the stream holds nothing more for this durable (looked at again when
        the last look is older than ``BEHIND_EVERY``)."""
        now = self.clock()
        if self._sub is not None and now - self._behind_at >= BEHIND_EVERY:
            self._behind_at = now
            try:
                self.behind = (await self._sub.consumer_info()).num_pending or 0
            except Exception:  # NATS away: not known, so as if something were behind
                self.behind = None
        return self.behind == 0

    def _report(self) -> None:
        backlog = self.queue.backlog()
        for key in self._seen - backlog.keys():
            BACKLOG.labels(*key).set(0)
        for key, n in backlog.items():
            BACKLOG.labels(*key).set(n)
        self._seen = set(backlog)

    async def _give_back(self) -> None:
        """At a stop: what was read and not started goes back to JetStream at once."""
        for held in self.queue.drain():
            with contextlib.suppress(Exception):
                await held.msg.nak()
        self._report()


SPILL_WAIT: Final = 30.0
"""Seconds (±50%) a delivery moved out of a full read-ahead waits on the schedule."""


def spill_to_schedule(
    pool: asyncpg.Pool,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    rand: Callable[[], float] = random.random,
) -> Spill:
    """Moves a delivery out of the read-ahead onto the durable schedule, a while out, and
    acks its message (it holds nothing meanwhile; its attempt number is unchanged)."""

    async def spill(msg: Msg) -> bool:
        try:
            event = ev.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        req = event.data
        if not isinstance(req, ev.DeliveryRequested):
            return False
        made = await attempts_made(pool, req.delivery_id)
        due = clock() + timedelta(seconds=SPILL_WAIT * (0.5 + rand()))
        await schedule.put(pool, req.delivery_id, event.id, made + 1, due, waited=True)
        await msg.ack()
        SPILLED.inc()
        return True

    return spill


def consumer_for(settings: DispatcherConfig) -> Callable[..., Consumer]:
    """The dispatcher's consume loop for ``settings`` (``run_consumer``'s ``make_consumer``)."""
    d = settings.dispatcher

    def cap_for(dest: str) -> int:
        ep = settings.endpoints.get(dest)
        if ep is not None and ep.max_in_flight is not None:
            return min(ep.max_in_flight, d.max_in_flight)
        return d.destination_cap()

    def weight_for(tenant: str) -> float:
        limits = d.tenants.get(tenant)
        return limits.weight if limits is not None else 1.0

    def make(**kwargs: Any) -> Consumer:
        return FairConsumer(
            buffer=d.read_ahead,
            cap_for=cap_for,
            weight_for=weight_for,
            spill=spill_to_schedule(kwargs["outbox"].pool),
            backlog_pool=kwargs["outbox"].pool,
            **kwargs,
        )

    return make
