"""A standing pull on a JetStream durable: ask once for many messages, take them as they come.

``PullSubscription.fetch`` sends a pull request per call and, when the stream is drained,
ends each call with a status message: at low rates every consumed message costs a pull
request and a status besides the message and its ack. A standing pull asks for up to the
consumer's free slots at once (with an expiry); the server sends each message as it
arrives on that one request, and the loop asks again only when half of what it asked
for has come (so, under load, about one request per ``capacity / 2`` messages) or the
request expired (one request and one "408" per expiry while idle, as a long poll).

The server ends a request early with a status (408 expired, 409 e.g. a leadership change
or too many waiting requests) saying how many of its messages were left undelivered
(``Nats-Pending-Messages``), so what is still asked for stays known. A reconnect forgets
every request (the server may be a new one), and so does the passing of a request's
expiry with no word from the server: either way the loop asks again.

The same design as the Go client's ``Consume`` (one standing pull, topped up at half).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

_PENDING = "Nats-Pending-Messages"
_STATUS = "Status"
# After a request's expiry, how long to wait for its "408" before forgetting it anyway.
_GRACE = 1.0
_encode = msgspec.json.encode


class StandingPull:
    """Messages of ``sub``'s durable, through one inbox and as few pull requests as can be.

    ``ask(free)`` keeps what is asked for at most ``free`` (the consumer's free slots) and
    asks for more once at least half of ``size`` is missing; ``take()`` waits for messages
    (or a wake-up) and returns those that came. Status messages are consumed here.
    """

    def __init__(
        self,
        nc: Client,
        sub: JetStreamContext.PullSubscription,
        *,
        size: int,
        expires: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nc = nc
        self._next_subject = sub._nms  # $JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>
        self.size = max(1, size)
        self.expires = expires
        self.clock = clock
        self.asked = 0  # messages asked for and not yet come, over every live request
        self._last_ask = 0.0
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._came: deque[Msg] = deque()
        self._ready = asyncio.Event()
        self.requests = 0  # pull requests sent (for tests and metrics)

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    def forget(self) -> None:
        """The server may no longer hold our requests (a reconnect): ask afresh."""
        self.asked = 0
        self._ready.set()

    def wake(self) -> None:
        """End a ``take`` now (a stop)."""
        self._ready.set()

    async def ask(self, free: int) -> None:
        """Top up the standing request so that up to ``free`` messages may come."""
        now = self.clock()
        if self.asked and now > self._last_ask + self.expires + _GRACE:
            self.asked = 0  # every request sent has expired, its 408 lost or not yet read
        want = min(free, self.size) - self.asked
        if want <= 0 or (self.asked and want < max(1, self.size // 2)):
            return
        request = {"batch": want, "expires": int(self.expires * 1e9)}
        await self._nc.publish(self._next_subject, _encode(request), reply=self._inbox)
        self.asked += want
        self._last_ask = now
        self.requests += 1

    async def take(self) -> list[Msg]:
        """Messages that came since the last call; waits for some, for a wake-up, or
        until the requests sent have surely expired (so the caller asks again)."""
        if not self._came:
            self._ready.clear()
            loop = asyncio.get_running_loop()
            timer = loop.call_later(
                max(0.0, self._last_ask + self.expires + _GRACE - self.clock()) + 0.01,
                self._ready.set,
            )
            try:
                await self._ready.wait()
            finally:
                timer.cancel()
        came = list(self._came)
        self._came.clear()
        return came

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers and _STATUS in headers and not msg.data:
            pending = headers.get(_PENDING)
            if pending is not None and pending.isdigit():
                self.asked = max(0, self.asked - int(pending))
            elif headers[_STATUS] != "100":  # a heartbeat ends nothing
                self.asked = 0
            self._ready.set()
            return
        self.asked = max(0, self.asked - 1)
        self._came.append(msg)
        self._ready.set()
