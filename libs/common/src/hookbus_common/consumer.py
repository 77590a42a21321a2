"""The consume loop: fetch, hand each message to a handler, commit what it yields, then
ack, nak with a delay, or terminate and dead-letter — all in this one place. An outage of
Postgres or NATS is waited out here, so it never counts toward a message's retries; a
handler's ``Deferred`` ("not now") gives the message back without counting either."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from . import eventlog, looplag, metrics, tracing
from . import events as ev
from .bus import Bus
from .errors import Deferred, HookbusError, OutageError, RetryableError
from .eventlog import Appended, Gate
from .events import Event
from .logs import correlated
from .outage import Recovery, is_outage
from .outbox import Outbox
from .pull import StandingPull

log = logging.getLogger(__name__)

# How long a health probe may take before Postgres counts as still away.
_PROBE_TIMEOUT = 5.0
# How long one fetch waits for messages (a long poll). A fetch returns as soon as there
# are messages, so this adds no latency; it sets how often an idle consumer asks NATS
# again (each ask costs this process, nats-server and its 408 answer some CPU). A stop
# ends the wait at once, and so does a reconnect (a restarted server forgot the pull).
FETCH_WAIT = 15.0
# How long the events a message's work committed may wait to be published together with
# what it commits next (an action's start with its end, when the action is quick): one
# publish and one round of stream acks instead of two, which at low rates is a wake-up of
# this process and several of nats-server's less per job. Every commit still goes out
# within this time of being made; the outbox backs it meanwhile (its relay takes only rows
# older than 2 s). A message's last commit goes out as soon as its handler ends.
PUBLISH_HOLD = 0.2
# Marks a message as a copy of a recorded event published again for consumers outside
# hookbus (``hookbus replay --republish``; the value names the replay). hookbus's own
# consumers handled the original: they ack such a copy without acting on it.
REPLAY_HEADER = "Hookbus-Replay"
# How often a consume loop reports its durable's backlog (``metrics.CONSUMER_PENDING``):
# one JetStream API request per interval per process, only while it consumes.
LAG_SAMPLE_SECONDS = 15.0


@dataclass(frozen=True)
class Incoming:
    """A decoded bus message as a handler sees it.

    ``deliveries`` is JetStream's count of deliveries of this message: redeliveries after
    a crash or a lost ack are in it, so it is not a count of attempts. A handler that
    numbers its attempts reads them from the log (as the dispatcher and the executor do).

    ``tries`` is the number of this delivery as the failure budget (``max_deliver``)
    counts it: the deliveries that ended in a deferral (``errors.Deferred``) are left out.
    """

    event: Event[Any]
    subject: str
    deliveries: int
    _msg: Msg
    counted: int | None = None
    """This delivery's number among those that count; None: ``deliveries``."""

    @property
    def tries(self) -> int:
        return self.deliveries if self.counted is None else self.counted

    async def progress(self) -> None:
        """Tell JetStream the message is still being worked on (resets its ack timer).

        Best effort: with NATS away the timer cannot be reset, and that is no failure of
        the work in hand, so it is not raised.
        """
        try:
            await self._msg.in_progress()
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.debug("could not report progress", extra={"error": repr(exc)})


class _Unpublished:
    """What one message's work committed and has not published yet: it goes out with
    what the work commits next, when the handler ends, or ``hold`` seconds after the
    first of it was committed, whichever comes first (``hold`` <= 0: at once)."""

    __slots__ = ("_events", "_hold", "_outbox", "_timer")

    def __init__(self, outbox: Outbox, hold: float) -> None:
        self._outbox = outbox
        self._hold = hold
        self._events: list[Appended] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, appended: Sequence[Appended]) -> None:
        if not appended:
            return
        self._events.extend(appended)
        if self._hold <= 0:
            self.publish()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._hold, self.publish)

    def publish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._events:
            events, self._events = self._events, []
            self._outbox.publish_later(events)


class Gated:
    """Events a handler yields to be committed only if ``gate`` returns a row, in the same
    statement (``eventlog.Gate``): a step and the claim it needs, in one round trip. Once
    the handler resumes, ``inserted`` says whether they went in; iterating gives the
    events committed (none before the commit, or if the gate held them back)."""

    __slots__ = ("events", "gate", "inserted")

    def __init__(self, events: Sequence[Event[Any]], gate: Gate) -> None:
        self.events = list(events)
        self.gate = gate
        self.inserted = False

    def __iter__(self) -> Iterator[Event[Any]]:
        return iter(self.events if self.inserted else ())


Yielded = Event[Any] | Sequence[Event[Any]] | Gated
Handler = Callable[[Incoming], AsyncIterator[Yielded]]


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Nak:
    delay: float


@dataclass(frozen=True)
class Defer:
    """Give the message back for ``delay`` seconds; no failure (``errors.Deferred``)."""

    delay: float
    reason: str


@dataclass(frozen=True)
class Term:
    reason: str


Outcome = Ack | Nak | Defer | Term


def backoff(deliveries: int, *, base: float = 0.5, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter on the upper half, in seconds."""
    # The exponent is bounded: the count keeps growing on a message that is never dropped.
    ceiling = min(cap, base * 2 ** min(max(0, deliveries - 1), 32))
    return float(ceiling / 2 + random.random() * ceiling / 2)  # noqa: S311 (jitter, not crypto)


def disposition(exc: BaseException, deliveries: int, max_deliver: int) -> Outcome:
    """The one mapping from a handler's failure to what happens to the message.

    ``deliveries`` is the delivery's number in the failure budget (``Incoming.tries``).
    A ``Deferred`` is no failure: it is given back after its delay, never terminated.
    An outage (``outage.is_outage``) reaches here only when the consumer stops while
    waiting for Postgres or NATS, or when the parts answered again at once twice running;
    it is naked, never terminated, however often the message was delivered.
    """
    if isinstance(exc, Deferred):
        return Defer(exc.delay, exc.reason)
    if is_outage(exc):
        return Nak(backoff(deliveries))
    if isinstance(exc, msgspec.ValidationError | msgspec.DecodeError) or (
        isinstance(exc, HookbusError) and exc.code != "unavailable"
    ):
        # Invalid, not found, conflict: the same message will fail the same way again.
        return Term(f"{type(exc).__name__}: {exc}")
    if deliveries >= max_deliver:
        return Term(f"gave up after {deliveries} deliveries: {type(exc).__name__}: {exc}")
    if isinstance(exc, RetryableError) and exc.delay is not None:
        return Nak(exc.delay)
    return Nak(backoff(deliveries))


class _Ledger:
    """What this process knows of each message beyond JetStream's delivery count, by
    stream sequence: how often it deferred it, and how often it failed here.

    JetStream counts a deferral's nak as a delivery like any other, so once a message has
    been deferred, its failure budget is what it failed here instead. Bounded: the oldest
    entries are forgotten (such a message is counted by its deliveries again).
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._entries: OrderedDict[int, list[int]] = OrderedDict()  # seq → [deferred, failed]

    def tries(self, seq: int, deliveries: int) -> int:
        entry = self._entries.get(seq)
        if entry is None or entry[0] == 0:
            return deliveries
        return entry[1] + 1

    def settled(self, seq: int, outcome: Outcome) -> None:
        if isinstance(outcome, Ack | Term):
            self._entries.pop(seq, None)
            return
        entry = self._entries.setdefault(seq, [0, 0])
        entry[0 if isinstance(outcome, Defer) else 1] += 1
        self._entries.move_to_end(seq)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class Consumer:
    """Consumes ``filter_subjects`` through one durable, handing each message to ``handler``.

    With a ``terminal_step``, a message whose ``derived_id(event.id, terminal_step)`` is
    already in the log (its work finished, but the process died before the ack) is acked
    without calling the handler, so handlers need not check for it themselves.

    An outage of Postgres or NATS spends no retry budget (see ``process``); while any
    message waits for one to end, no more messages are fetched. A handler that raises
    ``errors.Deferred`` gives its message back for a while: it leaves its place among the
    ``max_in_flight`` at once, and its deferrals count toward nothing.

    At a stop, no more messages are fetched, and the work in hand gets ``drain_timeout``
    seconds (default: ``ack_wait``) to finish. Work that may take longer than ``ack_wait``
    must report progress (``Incoming.progress``), or JetStream hands its message to
    another replica meanwhile.
    """

    def __init__(
        self,
        *,
        service: str,
        bus: Bus,
        outbox: Outbox,
        durable: str,
        filter_subjects: Sequence[str],
        handler: Handler,
        max_in_flight: int,
        max_deliver: int,
        ack_wait: float = 30.0,
        terminal_step: str | None = None,
        drain_timeout: float | None = None,
        publish_hold: float = PUBLISH_HOLD,
    ) -> None:
        self.service = service
        self.bus = bus
        self.outbox = outbox
        self.durable = durable
        # The durable's metric children, looked up once: ``labels`` takes a lock and a
        # lookup on every call, several times per message.
        self._in_flight_gauge = metrics.IN_FLIGHT.labels(durable)
        self._handle_seconds = metrics.HANDLE_SECONDS.labels(durable)
        self._handled = {
            kind: metrics.MESSAGES_HANDLED.labels(durable, kind)
            for kind in ("ack", "nak", "defer", "term")
        }
        self.filter_subjects = tuple(filter_subjects)
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.max_deliver = max_deliver
        self.ack_wait = ack_wait
        self.terminal_step = terminal_step
        self.drain_timeout = ack_wait if drain_timeout is None else drain_timeout
        self.publish_hold = publish_hold
        # Messages delivered and not yet acked that JetStream allows this durable (across
        # its replicas); a subclass that reads ahead of its handlers asks for more.
        self.max_ack_pending = max(1000, max_in_flight * 4)
        self.lag_interval = LAG_SAMPLE_SECONDS
        self._ledger = _Ledger()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()  # run() hands in the service's
        self._puller: StandingPull | None = None
        # Messages being handled, by stream sequence, with the copies JetStream sent again
        # meanwhile (handled once; acked with the one in hand).
        self._in_hand: dict[int, list[Msg]] = {}
        # A waiting message tells JetStream it is in progress well within the ack wait.
        self._recovery = Recovery(durable, heartbeat=max(0.1, ack_wait / 3))

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        sub = await self.bus.ensure_consumer(
            self.durable,
            self.filter_subjects,
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
        )
        log.info(
            "consuming", extra={"consumer": self.durable, "filter": ", ".join(self.filter_subjects)}
        )
        try:
            await self._loop(sub, stop)
        finally:
            if self._tasks:
                # Let work in hand finish (its side effects are recorded); JetStream
                # redelivers anything not acked once the ack wait passes.
                log.info(
                    "stopping: waiting for messages in hand",
                    extra={"consumer": self.durable, "in_flight": len(self._tasks),
                           "drain_timeout": self.drain_timeout},
                )  # fmt: skip
                _, pending = await asyncio.wait(self._tasks, timeout=self.drain_timeout)
                if pending:
                    log.warning(
                        "stopped with messages still in hand; they are redelivered",
                        extra={"consumer": self.durable, "in_flight": len(pending)},
                    )
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _loop(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        stopped = asyncio.ensure_future(stop.wait())
        self.bus.on_reconnect(self._refetch)
        sampling = asyncio.create_task(self._sample_lag(sub, stop), name=f"lag-{self.durable}")
        try:
            await self._fetch_loop(sub, stop, stopped)
        finally:
            stopped.cancel()
            sampling.cancel()

    async def _sample_lag(
        self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        """Report the durable's backlog every ``LAG_SAMPLE_SECONDS`` while consuming:
        messages not yet delivered and delivered but not acked. Every replica reports the
        same durable's numbers (dashboards take the max by consumer)."""
        pending = metrics.CONSUMER_PENDING.labels(self.durable)
        unacked = metrics.CONSUMER_ACK_PENDING.labels(self.durable)
        while not stop.is_set():
            try:
                info = await sub.consumer_info()
            except Exception as exc:  # NATS away: the gauges keep their last values
                log.debug("could not read the consumer's backlog", extra={"error": repr(exc)})
            else:
                pending.set(info.num_pending or 0)
                unacked.set(info.num_ack_pending or 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.lag_interval)

    def _refetch(self) -> None:
        """NATS reconnected: the server may no longer hold our pull requests."""
        if self._puller is not None:
            self._puller.forget()

    @contextlib.asynccontextmanager
    async def _pulling(
        self, sub: JetStreamContext.PullSubscription, stopped: asyncio.Future[Any], size: int
    ) -> AsyncIterator[StandingPull]:
        """The standing pull a fetch loop takes its messages from (see ``pull``): asked
        again after a reconnect, woken by a stop, closed at the end."""
        puller = StandingPull(self.bus.nc, sub, size=size, expires=FETCH_WAIT)
        await puller.start()
        self._puller = puller
        stopped.add_done_callback(lambda _f: puller.wake())
        try:
            yield puller
        finally:
            self._puller = None
            with contextlib.suppress(Exception):
                await puller.close()

    async def _asked(self, puller: StandingPull, free: int) -> bool:
        """Ask the standing pull for up to ``free`` messages; False (after a pause) when
        not now: Postgres or NATS is away, or the request could not be sent."""
        if self._recovery.waiting:
            # Postgres or NATS is away: more messages would only wait as well, and left
            # in the stream they are not delivered (nor counted) again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recovery.clear.wait(), timeout=1.0)
            return False
        try:
            await puller.ask(free)
        except (nats.errors.Error, OSError) as exc:
            log.warning("fetch failed; retrying", extra={"error": repr(exc)})
            await asyncio.sleep(0.5)
            return False
        return True

    async def _fetch_loop(
        self,
        sub: JetStreamContext.PullSubscription,
        stop: asyncio.Event,
        stopped: asyncio.Future[Any],
    ) -> None:
        """Messages come on a standing pull (see ``pull``): asked for as slots free up,
        without a request per message."""
        async with self._pulling(sub, stopped, self.max_in_flight) as puller:
            while not stop.is_set():
                if len(self._tasks) >= self.max_in_flight:
                    await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not await self._asked(puller, self.max_in_flight - len(self._tasks)):
                    continue
                for msg in await puller.take():
                    if stop.is_set():
                        break  # not acked: JetStream delivers it again
                    task = asyncio.create_task(self._handle(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        looplag.touch()
        deliveries = msg.metadata.num_delivered or 1
        seq = msg.metadata.sequence.stream
        copies = self._in_hand.get(seq)
        if copies is not None:
            # JetStream sent the message again while we still work on it (its ack wait
            # passed with NATS away, so no progress reached it): handled once, here, and
            # this copy is acked with it if it ends acked.
            copies.append(msg)
            log.info(
                "a copy of a message in hand; not handled twice",
                extra={"consumer": self.durable, "stream_seq": seq, "deliveries": deliveries},
            )
            return
        self._in_hand[seq] = copies = []
        tries = self._ledger.tries(seq, deliveries)
        self._in_flight_gauge.inc()
        started = time.perf_counter()
        try:
            outcome = await self._run_handler(msg, deliveries, tries)
            await self._settle(msg, outcome, deliveries)
            self._ledger.settled(seq, outcome)
            if isinstance(outcome, Ack):
                for copy in copies:
                    await copy.ack()
        except Exception as exc:
            # Settling itself failed (NATS away): JetStream redelivers after the ack wait.
            log.warning("could not settle message", extra={"error": repr(exc)})
        finally:
            del self._in_hand[seq]
            self._in_flight_gauge.dec()
            self._handle_seconds.observe(time.perf_counter() - started)

    async def _run_handler(self, msg: Msg, deliveries: int, tries: int) -> Outcome:
        if msg.headers and REPLAY_HEADER in msg.headers:
            return Ack()  # a republished copy: acted on once already, as the original
        try:
            event = ev.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Term(f"undecodable message: {exc}")
        with correlated(event.correlationid):
            if tracing.enabled():
                return await self._traced(msg, event, deliveries, tries)
            incoming = Incoming(
                event=event, subject=msg.subject, deliveries=deliveries, _msg=msg, counted=tries
            )
            return await self.process(incoming)

    async def _traced(self, msg: Msg, event: Event[Any], deliveries: int, tries: int) -> Outcome:
        """``process`` inside a span continuing the event's trace; the handler sees the
        event carrying the span's context, so what it derives belongs under this span."""
        with tracing.consuming(self.service, event, msg.subject, self.durable, deliveries) as (
            span,
            traced,
        ):
            incoming = Incoming(
                event=traced, subject=msg.subject, deliveries=deliveries, _msg=msg, counted=tries
            )
            outcome = await self.process(incoming)
            tracing.settled(span, type(outcome).__name__.lower(), getattr(outcome, "reason", None))
            return outcome

    async def process(self, incoming: Incoming) -> Outcome:
        """Handle one decoded message and commit what the handler yields; the outcome says
        how to settle the message (the caller acks, naks or terminates it).

        An outage of Postgres or NATS is waited out here instead of being handed back as
        a nak, so it never counts toward ``max_deliver``: a commit that fails for one is
        tried again, with what the handler yielded kept in memory, until Postgres is back
        (work that was done is recorded, not done again); a handler that fails for one is
        run again once both answer. If the consumer stops meanwhile, the message is naked.
        """
        answered_at_once = False
        while True:
            try:
                return await self._work(incoming)
            except Exception as exc:
                if is_outage(exc) and not self._stop.is_set():
                    if not await self._answers():
                        if await self._recovered(exc, incoming):
                            continue
                    elif not answered_at_once:
                        # Back already (a dropped connection, a quick restart): once more
                        # now; the same again is the work's own failure.
                        answered_at_once = True
                        log.info(
                            "Postgres or NATS failed the work but answers now; running it again",
                            extra={"event_id": incoming.event.id, "error": repr(exc)},
                        )
                        continue
                return self._failed(exc, incoming)

    async def _work(self, incoming: Incoming) -> Outcome:
        event = incoming.event
        if await self._finished(event):
            log.info("already finished; not handled again", extra={"event_id": event.id})
            return Ack()
        # Committed is what counts before going on (and before the ack); the publish
        # follows on its own, backed by the outbox, with the work's next commit if that
        # comes soon (PUBLISH_HOLD).
        unpublished = _Unpublished(self.outbox, self.publish_hold)
        try:
            async for out in self.handler(incoming):
                if isinstance(out, Gated):
                    # Not published unless inserted: held back, they are not in the log.
                    inserted, _ = await self._commit(out.events, incoming.progress, out.gate)
                    out.inserted = bool(inserted)
                    unpublished.add(inserted)
                    continue
                batch = [out] if isinstance(out, Event) else list(out)
                if batch:
                    inserted, known = await self._commit(batch, incoming.progress)
                    unpublished.add([*inserted, *known])
        finally:
            unpublished.publish()
        return Ack()

    async def _commit(
        self,
        batch: Sequence[Event[Any]],
        keepalive: Callable[[], Awaitable[object]],
        gate: Gate | None = None,
    ) -> tuple[list[Appended], list[Appended]]:
        """Commit ``batch``; while Postgres is away, keep it and try again until it is back.

        The work it records may have had its effect already (a job ran, a request was
        sent): recorded late, it is not done again. Only a stop gives up (raising)."""
        try:
            return await self.outbox.commit(batch, gate=gate)
        except Exception as exc:
            if not is_outage(exc):
                raise
            return await self._recovery.retry(
                lambda: self.outbox.commit(batch, gate=gate),
                exc,
                keepalive=keepalive,
                stop=self._stop,
            )

    async def _recovered(self, exc: BaseException, incoming: Incoming) -> bool:
        """Wait until Postgres and NATS answer; False if the consumer stops first."""
        try:
            await self._recovery.retry(
                self._probe, exc, keepalive=incoming.progress, stop=self._stop
            )
        except Exception as last:  # stopped: the last outage met (``exc`` or the probe's)
            if not is_outage(last):
                raise
            return False
        return True

    async def _answers(self) -> bool:
        try:
            await self._probe()
        except OutageError:
            return False
        return True

    async def _probe(self) -> None:
        """Raise ``OutageError`` unless NATS is connected and Postgres answers a query."""
        if not self.bus.connected:
            raise OutageError("NATS is not connected")
        try:
            async with self.outbox.pool.acquire(timeout=_PROBE_TIMEOUT) as conn:
                await conn.fetchval("SELECT 1", timeout=_PROBE_TIMEOUT)
        except Exception as exc:
            raise OutageError(f"Postgres does not answer: {exc!r}") from exc

    def _failed(self, exc: Exception, incoming: Incoming) -> Outcome:
        """Settle a failure through ``disposition``, and log it."""
        outcome = disposition(exc, incoming.tries, self.max_deliver)
        if isinstance(outcome, Defer):
            log.info(
                "deferred",
                extra={"event_id": incoming.event.id, "reason": outcome.reason,
                       "delay": outcome.delay, "deliveries": incoming.deliveries},
            )  # fmt: skip
            return outcome
        level = logging.ERROR if isinstance(outcome, Term) else logging.WARNING
        log.log(
            level,
            "handler failed",
            extra={
                "event_id": incoming.event.id,
                "deliveries": incoming.deliveries,
                "tries": incoming.tries,
                "error": repr(exc),
            },
            exc_info=not (isinstance(exc, HookbusError) or is_outage(exc)),
        )
        return outcome

    async def _finished(self, event: Event[Any]) -> bool:
        """Whether the event's terminal step is already recorded (we died before the ack)."""
        if self.terminal_step is None:
            return False
        async with self.outbox.pool.acquire() as conn:
            return await eventlog.exists(conn, ev.derived_id(event.id, self.terminal_step))

    async def _settle(self, msg: Msg, outcome: Outcome, deliveries: int) -> None:
        match outcome:
            case Ack():
                await msg.ack()
            case Nak(delay) | Defer(delay):
                await msg.nak(delay=delay)
            case Term(reason):
                if not await self._dead_letter(msg, reason, deliveries):
                    await msg.nak(delay=backoff(deliveries))
                    self._handled["nak"].inc()
                    return
                await msg.term()
        self._handled[type(outcome).__name__.lower()].inc()

    async def _dead_letter(self, msg: Msg, reason: str, deliveries: int) -> bool:
        """Record the message before terminating it; never drop it unrecorded."""
        seq = msg.metadata.sequence.stream
        data = ev.MessageDeadLettered(
            service=self.service,
            bus_subject=msg.subject,
            stream_sequence=seq,
            deliveries=deliveries,
            error=reason[:2000],
            message=msg.data[:65536].decode("utf-8", errors="replace"),
        )
        try:
            cause = ev.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            cause = None
        event = ev.make_event(
            data,
            source=f"/hookbus/{self.service}",
            id=ev.derived_id(f"{self.bus.stream}:{seq}", f"deadletter/{self.durable}"),
            cause=cause,
        )
        try:
            # Postgres away: held here until it is back, like any commit.
            inserted, known = await self._commit([event], msg.in_progress)
            self.outbox.publish_later([*inserted, *known])
        except Exception as exc:
            log.warning("could not record dead letter; will retry", extra={"error": repr(exc)})
            return False
        return True
