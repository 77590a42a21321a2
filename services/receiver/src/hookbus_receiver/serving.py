"""The receiver's HTTP server: uvicorn's, with fewer wake-ups and fewer writes.

- ``Server`` wakes once a second while requests come and not at all when none do. uvicorn's
  own main loop wakes ten times a second to see whether it must exit and to refresh the
  cached Date header; idle, those wake-ups were most of the receiver's CPU. Here a signal
  wakes it at once, and the first request after a quiet spell refreshes the Date header
  before it is answered (``touch``), so answers carry the same dates as before.
- ``HttpProtocol`` is uvicorn's httptools protocol writing an answer's head and body in
  one send instead of two: each send to a local client costs a system call and, often,
  a wake-up of the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from email.utils import formatdate
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HttpProtocol", "Server", "touch"]

# The server waiting with no timer for a request (there is one server per process).
_parked: Server | None = None


def touch() -> None:
    """A request has begun: a parked server refreshes its Date header and ticks again.
    Cheap enough for every request."""
    if _parked is not None:
        _parked.unpark()


class Server(uvicorn.Server):
    """uvicorn's server, ticking once a second while it serves and parking when idle."""

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def parked(self) -> bool:
        return _parked is self

    async def main_loop(self) -> None:
        global _parked
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        served = -1
        # Tick 0 each time: the Date header is refreshed on every (one-second) tick.
        while not await self.on_tick(0):
            state = self.server_state
            if state.total_requests == served and not state.tasks:
                # A second with no request begun or in hand: no timer until one comes.
                _parked = self
                try:
                    await wake.wait()
                finally:
                    if _parked is self:
                        _parked = None
                wake.clear()
                continue
            served = state.total_requests
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=1.0)
            wake.clear()

    def unpark(self) -> None:
        """Refresh the Date header now (a request is being read) and tick again."""
        global _parked
        if _parked is self:
            _parked = None
        date = formatdate(time.time(), usegmt=True).encode()
        dated = [(b"date", date)] if self.config.date_header else []
        self.server_state.default_headers = dated + self.config.encoded_headers
        if self._wake is not None:
            self._wake.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)


class _Coalescing:
    """A transport that sends what is written within one step of the event loop at once.

    uvicorn writes an answer's head when the app starts it and its body right after; both
    leave together at the end of the step. Closing sends what is held first; a connection
    already lost drops it, as the socket would have.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self._send)
        self._held.append(data)

    def _send(self) -> None:
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._send()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with one send per answer, and ``touch`` per request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Coalescing(transport, self.loop))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        touch()
        super().on_message_begin()
