"""The dispatcher's handler: a delivery request in; attempts and one outcome out."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import random
import time
from collections import ChainMap
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any, Final, NamedTuple

import asyncpg
import msgspec

from hookbus_common import events as ev
from hookbus_common.batched import Batched
from hookbus_common.consumer import Handler, Incoming, Yielded
from hookbus_common.errors import PermanentError, RetryableError
from hookbus_common.events import DeliveryRequested, Event

from . import (
    endpointstate,
    endpointstore,
    health,
    httpclient,
    notify,
    retryafter,
    schedule,
    smtp,
)
from .config import Endpoint, Notification
from .schedule import retry_delay
from .ssrf import DestinationRefused
from .templates import TemplateFailed

SOURCE = "/hookbus/dispatcher"
USER_AGENT = "hookbus-dispatcher/0.1"

log = logging.getLogger(__name__)

OUTCOME_STEP: Final = "outcome"
"""The step a delivery's end (succeeded, failed for good, dead) derives its id from: one
end per request event, whoever records it."""

RESPONSE_BODY_LIMIT: Final = 4096
"""Bytes of an answer's body kept on its ``delivery.attempted`` event (read no further)."""

RESPONSE_BODY_SECONDS: Final = 5.0
"""How long reading those bytes may take, once the status is in."""

REDELIVERY_ALLOWANCE = 20
"""Deliveries of a message beyond ``max_attempts`` that the consumer tolerates.

A delivery is dead after ``max_attempts`` attempts that the log records; redeliveries that
are not attempts (a dispatcher killed mid-request, a NATS restart losing an ack) are not
counted there. The consumer's ``max_deliver`` is only a safety net for a handler that
keeps failing without attempting, so it leaves this much room for those."""


def max_deliver(max_attempts: int) -> int:
    """The dispatcher consumer's ``max_deliver`` for ``max_attempts``."""
    return max_attempts + REDELIVERY_ALLOWANCE


async def attempts_made(pool: asyncpg.Pool, delivery_id: str) -> int:
    """How many attempts at ``delivery_id`` the log records (its read model, kept in the
    same transaction as the attempts): 0 for one never attempted.

    The next attempt's number is this plus one. JetStream's delivery count is not used: a
    redelivery after a crash is not an attempt unless a request went out, and an outage
    makes no attempt at all. An attempt whose request went out but whose record did not
    (killed in between) is made again under the same number, so the log holds one
    ``attempted`` event per number.
    """
    value = await pool.fetchval(
        "SELECT attempts FROM deliveries WHERE delivery_id = $1", delivery_id
    )
    return int(value or 0)


class Standing(NamedTuple):
    """Where a delivery stands when its request comes in: the attempts the log records,
    whether its outcome is recorded already (delivered or dead before an ack was lost),
    and its endpoint's health (``None`` without a named endpoint)."""

    attempts: int
    ended: bool
    health: endpointstate.Health | None


_STANDING = (
    "SELECT (SELECT attempts FROM deliveries WHERE delivery_id = r.delivery_id) AS attempts,"
    " EXISTS (SELECT 1 FROM events WHERE id = r.outcome) AS ended, "
    + endpointstate.columns("r.endpoint")
    + " FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY"
    " AS r(delivery_id, outcome, endpoint, i) ORDER BY r.i"
)

StandingKey = tuple[str, str, str | None]
"""(delivery id, its outcome's event id, its endpoint or ``None``)."""


def standing_reads(pool: asyncpg.Pool) -> Batched[StandingKey, Standing]:
    """``Standing`` of deliveries, read together: the deliveries that come in while one
    read is under way are read in the next, in one round trip (it was one each, and
    three before that: the consume loop's finished check, the attempts, the endpoint's
    state)."""

    async def read(keys: Sequence[StandingKey]) -> list[Standing]:
        rows = await pool.fetch(
            _STANDING, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
        )
        return [
            Standing(
                int(row["attempts"] or 0),
                bool(row["ended"]),
                endpointstate.health_of(row) if key[2] is not None else None,
            )
            for key, row in zip(keys, rows, strict=True)
        ]

    # Two lanes: under load a delivery's read goes at once beside a batch already running,
    # instead of waiting for it to end (half the wait, for a few more round trips).
    return Batched(read, lanes=2)


def standing_key(event: Event[DeliveryRequested], endpoint: str | None) -> StandingKey:
    return (event.data.delivery_id, ev.derived_id(event.id, OUTCOME_STEP), endpoint)


def retryable_status(status: int) -> bool:
    """Worth another attempt: server errors, timeouts, too early, and being told to slow down.

    Every other status that is not 2xx is final, 3xx included: redirects are not followed
    (a receiver must not send our requests on to an address of its choosing), and the
    same request will be answered with the same redirect.
    """
    return status >= 500 or status in (408, 425, 429)


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """Where one delivery goes and how: a request's own URL, or its endpoint resolved."""

    url: str
    endpoint: str | None = None
    config: Endpoint | None = None
    # A notification channel instead (its name and config): `url` is then its label.
    channel: str | None = None
    notification: Notification | None = None

    def allow_private(self) -> bool:
        cfg = self.config or self.notification
        return cfg is not None and cfg.allow_private

    def own_schedule(self) -> Sequence[float] | None:
        cfg = self.config or self.notification
        return cfg.retry_schedule if cfg is not None else None


ABORT_ERROR: Final = "the receiver asked for no more attempts (webhook-delivery: abort-message)"


def aborts(headers: Mapping[str, str]) -> bool:
    """Whether a failed answer asks us to stop trying this delivery: the header
    ``webhook-delivery: abort-message`` (a receiver that will never take this message,
    whatever its status says)."""
    return str(headers.get("webhook-delivery", "")).strip().lower() == "abort-message"


def _outcome(
    cls: type[ev.DeliveryOutcome],
    cause: Event[DeliveryRequested],
    step: str,
    target: Target,
    **fields: Any,
) -> Event[Any]:
    req = cause.data
    data = cls(
        delivery_id=req.delivery_id,
        url=target.url,
        tenant=req.tenant,
        endpoint=target.endpoint,
        **fields,
    )
    return ev.make_event(
        data, source=SOURCE, id=ev.derived_id(cause.id, step), cause=cause, subject=req.delivery_id
    )


def resolve(
    req: DeliveryRequested,
    endpoints: Mapping[str, Endpoint],
    notifications: Mapping[str, Notification] | None = None,
) -> Target:
    """The request's destination; ``ValueError`` (final) when its endpoint cannot take it:
    not configured (any more), another tenant's, or not subscribed to its event type."""
    if req.notification is not None:
        n = (notifications or {}).get(req.notification)
        if n is None:
            raise ValueError(f"no notification channel named {req.notification!r} is configured")
        if n.tenant != req.tenant:
            raise ValueError(
                f"notification channel {req.notification!r} belongs to tenant {n.tenant!r},"
                f" not {req.tenant!r}"
            )
        return Target(url=notify.label(req.notification), channel=req.notification, notification=n)
    if req.endpoint is None:
        return Target(url=req.url)
    ep = endpoints.get(req.endpoint)
    if ep is None:
        raise ValueError(f"no endpoint named {req.endpoint!r} is configured")
    if ep.tenant != req.tenant:
        raise ValueError(
            f"endpoint {req.endpoint!r} belongs to tenant {ep.tenant!r}, not {req.tenant!r}"
        )
    if req.event_type is not None and not any(
        fnmatch.fnmatchcase(req.event_type, glob) for glob in ep.events
    ):
        raise ValueError(
            f"endpoint {req.endpoint!r} does not take {req.event_type!r} events ({ep.events})"
        )
    return Target(url=ep.url, endpoint=req.endpoint, config=ep)


def _build(req: DeliveryRequested, target: Target, now: float) -> httpclient.Request:
    """The request to send; ``ValueError`` when it never can be."""
    # Header names are case-insensitive: a configured "User-Agent" replaces ours rather
    # than adding a second one, and no configured header can forge or double the id or
    # the signature.
    headers = httpclient.Headers({"user-agent": USER_AGENT})
    ep = target.config
    if ep is not None:
        headers.update(ep.headers)
    headers.update(req.headers)
    headers["x-hookbus-delivery"] = req.delivery_id
    body = bytes(req.body)
    signer = ep.signer() if ep is not None else None
    if signer is not None:
        # The message id: the delivery id, the same on every attempt; a replay of a dead
        # delivery keeps the id of the delivery replayed, so a receiver can drop repeats.
        headers.update(signer.headers(req.message_id or req.delivery_id, int(now), body))
    timeout = ep.timeout if ep is not None else None
    return httpclient.request(req.method, target.url, headers, body, timeout)


async def _read_start(resp: httpclient.Answer) -> str | None:
    """Up to ``RESPONSE_BODY_LIMIT`` bytes of an answer's body, decoded leniently (the
    rest is never read: an endpoint cannot make us hold a large answer)."""
    kept = resp.complete(RESPONSE_BODY_LIMIT)  # most answers are in whole with their head
    if kept is not None:
        resp.close()
        return _decoded(kept, resp.charset)
    kept = b""
    try:
        # The status already decided the attempt: a body trickled out slowly gets this long.
        async with asyncio.timeout(RESPONSE_BODY_SECONDS):
            while len(kept) < RESPONSE_BODY_LIMIT:
                chunk = await resp.read(RESPONSE_BODY_LIMIT - len(kept))
                if not chunk:
                    break
                kept += chunk
    except (httpclient.SendError, TimeoutError):
        pass  # a body cut short is still worth keeping
    finally:
        resp.close()
    return _decoded(kept, resp.charset)


def _decoded(kept: bytes, charset: str | None) -> str | None:
    if not kept:
        return None
    try:
        return kept.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return kept.decode("utf-8", errors="replace")


async def attempt(
    client: httpclient.Sender,
    event: Event[DeliveryRequested],
    number: int,
    max_attempts: int,
    *,
    clock: retryafter.Clock = retryafter.utcnow,
    endpoints: Mapping[str, Endpoint] | None = None,
    private_client: httpclient.Sender | None = None,
    retry_schedule: Sequence[float] = schedule.DEFAULT_SCHEDULE,
    rand: Callable[[], float] = random.random,
    notifications: Mapping[str, Notification] | None = None,
) -> tuple[list[Event[Any]], RetryableError | None]:
    """Send once; return the events to record and, when another attempt is due, why.

    ``clock`` is what an HTTP-date in ``Retry-After`` is measured against, the signature's
    timestamp, and what the next attempt's due time counts from. Without a
    ``Retry-After``, the wait is ``retry_schedule``'s (an endpoint's own schedule, when it
    has one, also sets how many attempts it gets), spread by ``rand``. ``private_client`` sends to endpoints with ``allow_private``
    (a client of its own, so that no pooled connection is shared across the two policies).
    """
    req = event.data
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    response_body: str | None = None
    request: httpclient.Request | None = None
    email: EmailMessage | None = None
    final = False
    target = Target(url=req.url, endpoint=req.endpoint)
    try:
        target = resolve(req, endpoints or {}, notifications)
        if target.notification is not None and target.channel is not None:
            n = target.notification
            text, subject = notify.render(req, target.channel, n)
            if n.type == "email":
                email = smtp.message(
                    sender=n.sender or "",
                    to=n.to,
                    subject=subject,
                    body=text,
                    message_id=req.message_id or req.delivery_id,
                )
            else:
                request = notify.request(req, target.channel, n, text)
        else:
            request = _build(req, target, clock().timestamp())
    except TemplateFailed as exc:
        # The same event renders the same way next time: final.
        error = f"notification cannot be rendered: {exc}"[:500]
    except ValueError as exc:
        error = f"request cannot be sent: {type(exc).__name__}: {exc}"[:500]
    if email is not None and target.notification is not None:
        assert target.notification.smtp is not None  # checked at load
        sent = await smtp.send(target.notification.smtp, email, target.notification.timeout)
        error, final, response_body = sent.error, sent.final, sent.reply
    if request is not None:
        sender = client
        if target.allow_private() and private_client:
            sender = private_client
        # The whole exchange, up to the answer's status and headers, gets the request's
        # timeout: that timeout bounds connecting and each read, not their sum, so a
        # receiver sending its answer a byte at a time, each inside it, would otherwise
        # hold an attempt (and its sending slot) for as long as it liked.
        limit = sender.timeout if request.timeout is None else request.timeout
        try:
            async with asyncio.timeout(limit):
                resp = await sender.send(request)
        except DestinationRefused as exc:
            error, final = str(exc)[:500], True
        except httpclient.UnsupportedProtocol as exc:
            # A URL no attempt can send (an address written in a non-canonical form).
            error, final = f"request cannot be sent: {exc}"[:500], True
        except httpclient.SendError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        except TimeoutError:
            error = f"timed out: no complete answer within {limit:g} s"
        else:
            status = resp.status
            retry_after = retryafter.parse(resp.headers.get("retry-after"), clock())
            if not 200 <= status < 300 and aborts(resp.headers):
                error, final = ABORT_ERROR, True
            response_body = await _read_start(resp)
    if target.notification is not None and target.channel is not None:
        error = notify.clean(error, target.notification, target.channel)
        response_body = notify.clean(response_body, target.notification, target.channel)
    fields: dict[str, Any] = {"attempt": number, "status_code": status, "error": error}
    fields["duration_ms"] = (time.perf_counter() - started) * 1000
    own = target.own_schedule()
    if own is not None:
        retry_schedule, max_attempts = own, len(own) + 1
    ok = (status is not None and 200 <= status < 300) or (email is not None and error is None)
    unsendable = request is None and email is None
    settled = (
        ok
        or unsendable
        or final
        or (status is not None and not retryable_status(status))
        or number >= max_attempts
    )
    # Retry-After 0 (or a date already past) is honoured: the receiver asked for it.
    delay = 0.0
    if not settled:
        delay = (
            retry_after if retry_after is not None else retry_delay(number, retry_schedule, rand)
        )
    attempted = _outcome(
        ev.DeliveryAttempted,
        event,
        f"attempt/{number}",
        target,
        response_body=response_body,
        next_attempt_at=None if settled else clock() + timedelta(seconds=delay),
        **fields,
    )
    kind = target.notification.type if target.notification is not None else None
    if ok:
        _count(kind, "succeeded")
        return [
            attempted,
            _outcome(ev.DeliverySucceeded, event, OUTCOME_STEP, target, **fields),
        ], None
    # A request that cannot be built will not build next time either, and a destination
    # refused now is refused next time.
    if unsendable or final or (status is not None and not retryable_status(status)):
        _count(kind, "failed")
        return [attempted, _outcome(ev.DeliveryFailed, event, OUTCOME_STEP, target, **fields)], None
    if number >= max_attempts:
        _count(kind, "dead")
        return [attempted, _outcome(ev.DeliveryDead, event, OUTCOME_STEP, target, **fields)], None
    _count(kind, "retrying")
    why = f"attempt {number} failed: {status or error}"
    return [attempted], RetryableError(why, delay=delay)


def _count(kind: str | None, outcome: str) -> None:
    if kind is not None:
        notify.SENT.labels(kind, outcome).inc()


async def _next_attempt_at(
    pool: asyncpg.Pool, event: Event[DeliveryRequested], number: int
) -> datetime | None:
    """When attempt ``number``'s event says the next one is due (``None``: not recorded,
    or it gave no time)."""
    text = await pool.fetchval(
        "SELECT data::text FROM events WHERE id = $1", ev.derived_id(event.id, f"attempt/{number}")
    )
    if text is None:
        return None
    return msgspec.json.decode(text, type=ev.DeliveryAttempted).next_attempt_at


def _failed(attempted: ev.DeliveryAttempted) -> bool | None:
    """Whether the attempt failed at the endpoint's end (``None``: it says nothing about
    the endpoint, as a request that could not even be built)."""
    status = attempted.status_code
    if status is not None:
        return not 200 <= status < 300
    if attempted.error and attempted.error.startswith("request cannot be sent"):
        return None
    return attempted.error is not None


async def _health(
    pool: asyncpg.Pool,
    event: Event[DeliveryRequested],
    name: str,
    state: endpointstate.Health,
    attempted: ev.DeliveryAttempted,
    now: datetime,
    disable_after: float,
) -> list[Event[Any]]:
    """Keep the endpoint's failure streak; the endpoint.disabled event when this attempt
    ends its life (a 410, or failing for ``disable_after``)."""
    failed = _failed(attempted)
    if failed is None:
        return []
    since = None
    if failed:
        since = await endpointstate.failed(pool, name, now)
    elif state.failing_since is not None:
        await endpointstate.recovered(pool, name)
    decided = health.disable_reason(attempted.status_code, since, now, disable_after)
    if decided is None:
        return []
    metric, reason = decided
    health.DISABLED.labels(metric).inc()
    await endpointstate.recovered(pool, name)
    data = ev.EndpointDisabled(
        endpoint=name, reason=reason, tenant=event.data.tenant, delivery_id=event.data.delivery_id
    )
    disabled = ev.make_event(
        data,
        source=SOURCE,
        id=ev.derived_id(event.id, f"endpoint-disabled/{attempted.attempt}"),
        cause=event,
        subject=name,
    )
    return [disabled]


def make_handler(
    client: httpclient.Sender,
    pool: asyncpg.Pool,
    max_attempts: int,
    *,
    endpoints: Mapping[str, Endpoint] | None = None,
    private_client: httpclient.Sender | None = None,
    retry_schedule: Sequence[float] = schedule.DEFAULT_SCHEDULE,
    scheduler: schedule.Scheduler | None = None,
    clock: retryafter.Clock = retryafter.utcnow,
    notifications: Mapping[str, Notification] | None = None,
    disable_after: float = 0.0,
    runtime: endpointstore.Store | None = None,
    paused_recheck: float = 300.0,
) -> Handler:
    """The dispatcher's handler. A failed attempt that is to be made again is put on the
    durable schedule and its message acked: waiting holds no consumer capacity, and the
    ``scheduler`` (which this process runs) publishes the request again when it is due."""

    reads = standing_reads(pool)

    async def handle(incoming: Incoming) -> AsyncIterator[Yielded]:
        event = incoming.event
        if not isinstance(event.data, DeliveryRequested):
            raise PermanentError(f"dispatcher cannot handle {event.type}")
        delivery_id = event.data.delivery_id
        name = event.data.endpoint if event.data.notification is None else None
        # Read before anything is sent: with Postgres away, the consume loop waits and
        # runs this again, and no request has gone out.
        made, ended, state = await reads(standing_key(event, name))
        if ended:
            # Delivered or dead before this process (or another) died unacked: its
            # outcome is in the log, so nothing is sent again.
            log.info("delivery already ended; not sent again", extra={"delivery_id": delivery_id})
            return
        if made:
            due = await _next_attempt_at(pool, event, made)
            if due is not None and due > clock():
                # Not yet (a message redelivered while the delivery waits, or whose
                # schedule row was never written): back on the schedule, nothing sent.
                await schedule.put(pool, delivery_id, event.id, made + 1, due)
                if scheduler is not None:
                    scheduler.wake()
                return
        number = made + 1
        if name and state is not None and state.disabled:
            # Not attempted: dead at once (`hookbus endpoints enable --recover-since`
            # requests these again).
            error = f"endpoint {name!r} is disabled: {state.reason}"[:500]
            target = Target(url=event.data.url, endpoint=name)
            yield [
                _outcome(ev.DeliveryDead, event, OUTCOME_STEP, target, attempt=made, error=error)
            ]
            return
        eps = endpoints or {}
        if name and runtime is not None and name not in eps:
            # A run-time endpoint (`hookbus endpoints add`): resolved now, not at start.
            found = await runtime.get(name)
            if found is not None and found.paused:
                found = await runtime.get(name, fresh=True)  # never hold on a stale pause
            if found is not None and found.paused:
                # Held, not attempted: `hookbus endpoints resume` makes it due at once.
                due = clock() + timedelta(seconds=paused_recheck)
                await schedule.put(pool, delivery_id, event.id, number, due, waited=True)
                return
            if found is not None:
                eps = ChainMap({name: found.endpoint}, dict(eps))
        events, retry = await attempt(
            client,
            event,
            number,
            max_attempts,
            clock=clock,
            endpoints=eps,
            private_client=private_client,
            retry_schedule=retry_schedule,
            notifications=notifications,
        )
        if name and state is not None and name in eps:
            events += await _health(
                pool, event, name, state, events[0].data, clock(), disable_after
            )
        yield events
        if retry is not None:
            # The attempt is recorded (the loop committed it before coming back here); if
            # this process dies before the row is written, the message comes back and the
            # check above writes it.
            next_at = events[0].data.next_attempt_at
            await schedule.put(pool, delivery_id, event.id, number + 1, next_at)
            if scheduler is not None:
                scheduler.wake()

    return handle
