"""Requests waiting for the end of the job their webhook caused (a source's
``respond_wait``): one core NATS subscription per receiver process to the job ends, each
end handed to the request waiting for its chain (by correlation id).

Nothing here blocks the event loop: a waiting request is a future, its deadline a timeout.
Their number is bounded (``receiver.respond_max_waiting``); past it a request is answered
202 at once. An end published before the request began to wait is found in the log, which
is read once after registering (so an end is never missed between the two).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from hookbus_common import events as ev
from hookbus_common.bus import Bus

log = logging.getLogger(__name__)

# The job events that may end the wait (a retried attempt's job.failed or job.interrupted
# does not: ``ending``).
_ENDS: tuple[str, ...] = ("succeeded", "failed", "interrupted", "skipped")
_ENDED_TYPES: tuple[str, ...] = (
    ev.JobSucceeded.TYPE, ev.JobFailed.TYPE, ev.JobInterrupted.TYPE, ev.JobSkipped.TYPE,
)  # fmt: skip


class _Envelope(msgspec.Struct):
    """What the subscription reads of each message: whose chain, and the job's end."""

    type: str
    correlationid: str
    data: msgspec.Raw = msgspec.Raw(b"null")


_envelope = msgspec.json.Decoder(_Envelope)


class Ended(msgspec.Struct, frozen=True):
    """A job's end, as a waiting request answers it."""

    type: str
    data: ev.JobFinished


def ending(type_: str, raw: bytes) -> Ended | None:
    """The job end in a message, or None when it is not one (a retried attempt's)."""
    if type_ not in _ENDED_TYPES:
        return None
    data = ev.decode_data(type_, raw)
    assert isinstance(data, ev.JobFinished)
    if getattr(data, "retrying", False):
        return None
    return Ended(type_, data)


class Full(Exception):
    """As many requests wait as ``respond_max_waiting`` allows."""


class Waiters:
    """The requests of this process waiting for their chain's first job to end."""

    def __init__(self, bus: Bus, pool: asyncpg.Pool, max_waiting: int) -> None:
        self.bus = bus
        self.pool = pool
        self.max_waiting = max_waiting
        self._waiting: dict[str, asyncio.Future[Ended]] = {}
        self._subs: list[Subscription] = []

    @property
    def count(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        prefix = self.bus.prefix
        for end in _ENDS:
            self._subs.append(
                await self.bus.nc.subscribe(f"{prefix}.job.{end}.>", cb=self._on_message)
            )

    async def close(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def _on_message(self, msg: Msg) -> None:
        if not self._waiting:
            return  # nobody waits: not even decoded
        try:
            env = _envelope.decode(msg.data)
            future = self._waiting.get(env.correlationid)
            if future is None or future.done():
                return
            end = ending(env.type, bytes(env.data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.debug("undecodable job event", extra={"error": repr(exc)})
            return
        if end is not None:
            future.set_result(end)

    async def wait(self, correlation_id: str, within: float) -> Ended | None:
        """The end of the first job of the chain, or None if none ended ``within`` seconds.
        Raises ``Full`` when too many requests wait already."""
        if correlation_id in self._waiting:
            future = self._waiting[correlation_id]
        else:
            if len(self._waiting) >= self.max_waiting:
                raise Full()
            future = asyncio.get_running_loop().create_future()
            self._waiting[correlation_id] = future
        try:
            # Ended before we began to listen? (The log has every end the bus had.)
            found = await self._logged(correlation_id)
            if found is not None:
                return found
            return await asyncio.wait_for(asyncio.shield(future), within)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(correlation_id, None)

    async def _logged(self, correlation_id: str) -> Ended | None:
        try:
            async with self.pool.acquire() as conn:
                rows: list[Any] = await conn.fetch(
                    "SELECT type, data::text AS data FROM events WHERE correlation_id = $1"
                    " AND type = ANY($2::text[]) ORDER BY seq",
                    correlation_id,
                    list(_ENDED_TYPES),
                )
        except Exception as exc:
            # The bus still tells; the log was only a second look.
            log.debug("could not read the log for a job's end", extra={"error": repr(exc)})
            return None
        for r in rows:
            end = ending(r["type"], r["data"].encode())
            if end is not None:
                return end
        return None
