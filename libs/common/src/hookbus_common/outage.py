"""Outages of Postgres or NATS: telling one from the work's own failure, and waiting one out.

An outage is not the work's fault, so it spends no retry budget: a consumer that meets one
keeps the message (telling JetStream it is still in progress), polls until the part is
back, and goes on. Only the work's own failures count toward ``max_deliver``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import nats.errors
import nats.js.errors
from asyncpg.exceptions._base import InternalClientError
from prometheus_client import Gauge

from .errors import HookbusError, OutageError

log = logging.getLogger(__name__)

T = TypeVar("T")

WAITING = Gauge(
    "hookbus_consumer_waiting_for_recovery",
    "Messages a consumer holds while it waits for Postgres or NATS to come back",
    ["consumer"],
)

# Postgres is away, restarting, failing over or out of room: none of it is the query's fault.
_POSTGRES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.exceptions.AdminShutdownError,  # 57P01: stopped while we were connected
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.exceptions.IdleSessionTimeoutError,  # 57P05
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: disk full, too many clients
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a standby, mid-failover
)
# Our own errors say what they are; a protocol violation is a bug, not a server away.
_NOT: tuple[type[BaseException], ...] = (HookbusError, asyncpg.exceptions.ProtocolViolationError)

_NATS: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,  # and UnexpectedEOF
    nats.errors.OutboundBufferLimitError,  # too much queued while disconnected
    nats.errors.NoRespondersError,  # JetStream not (yet) answering
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,  # JetStream 503
)

# What a socket says when the other end cannot be reached.
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
        errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.EHOSTDOWN,
        errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EADDRNOTAVAIL,
    }
)  # fmt: skip


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says that a part hookbus runs on is away, rather than that the work
    failed: the one place that decides it.

    An outage: Postgres or NATS cannot be reached, dropped the connection, is starting,
    stopping or failing over, or is out of connections or disk (the drivers' errors, a pool
    acquire timing out, a refused or reset socket), or our own ``OutageError``. Not an
    outage: any other hookbus error, ``RetryableError`` included (an endpoint that answered
    503 or refused the connection is the work's own failure and counts as an attempt), and
    the caller's mistakes (asyncpg's ``DataError``, a bad subject, a missing file).
    """
    if isinstance(exc, BaseExceptionGroup):
        return bool(exc.exceptions) and all(is_outage(e) for e in exc.exceptions)
    if isinstance(exc, OutageError):
        return True
    if isinstance(exc, _NOT):
        return False
    if isinstance(exc, _POSTGRES + _NATS):
        return True
    if type(exc) is asyncpg.InterfaceError:
        # "connection is closed", "pool is closing"; its subclasses (DataError,
        # ClientConfigurationError, …) are mistakes in what was asked.
        return True
    if isinstance(exc, InternalClientError) and "another operation" in str(exc):
        # A pooled connection that Postgres ended while it was idle (a fast shutdown sends
        # FATAL 57P01 to every session) is left consuming that error; the next query on it
        # says "cannot switch to state …; another operation is in progress".
        return True
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        # TimeoutError covers a pool acquire or a connect that ran out of time.
        return True
    if isinstance(exc, OSError):
        if exc.errno in _NETWORK_ERRNOS:
            return True
        # A local Postgres that is stopped has removed its unix socket: connecting says
        # ENOENT without a file name. A missing file or program names it, and is no outage.
        return exc.errno == errno.ENOENT and exc.filename is None
    return False


class Recovery:
    """How one consumer waits out an outage.

    ``retry`` calls an operation again, with backoff, until it stops failing with an outage,
    keeping the message alive meanwhile. The messages waiting are counted (the gauge
    ``hookbus_consumer_waiting_for_recovery``), and one line is logged when the consumer
    starts waiting and one when the last message stops, however many wait together.
    """

    def __init__(
        self, consumer: str, *, heartbeat: float, base: float = 0.1, cap: float = 2.0
    ) -> None:
        self.consumer = consumer
        self.heartbeat = heartbeat
        self.base = base
        self.cap = cap
        self._waiting = 0
        self._since = 0.0
        self.clear = asyncio.Event()
        self.clear.set()

    @property
    def waiting(self) -> int:
        """How many messages are waiting now."""
        return self._waiting

    async def retry(
        self,
        call: Callable[[], Awaitable[T]],
        error: BaseException,
        *,
        keepalive: Callable[[], Awaitable[object]],
        stop: asyncio.Event,
    ) -> T:
        """Call ``call`` until it returns, after ``error`` (an outage) made the first try fail.

        Waits between tries (exponential, ``base`` up to ``cap`` seconds) and calls
        ``keepalive`` every ``heartbeat`` seconds meanwhile, ignoring its failures (NATS
        may be away too). A failure of ``call`` that is not an outage is raised; if ``stop``
        is set first, the last outage error is raised.
        """
        self._enter(error)
        beat = asyncio.create_task(self._beat(keepalive))
        last = error
        tries = 0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._delay(tries))
                if stop.is_set():
                    raise last
                tries += 1
                try:
                    return await call()
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    last = exc
                    log.debug("still away", extra={"consumer": self.consumer, "error": repr(exc)})
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            self._leave(stop.is_set())

    def _delay(self, tries: int) -> float:
        return float(min(self.cap, self.base * 2 ** min(tries, 16)))

    async def _beat(self, keepalive: Callable[[], Awaitable[object]]) -> None:
        while True:
            try:
                await keepalive()
            except Exception as exc:
                log.debug("could not keep the message", extra={"error": repr(exc)})
            await asyncio.sleep(self.heartbeat)

    def _enter(self, error: BaseException) -> None:
        self._waiting += 1
        WAITING.labels(self.consumer).inc()
        if self._waiting == 1:
            self._since = time.monotonic()
            self.clear.clear()
            log.warning(
                "Postgres or NATS is away; holding messages until it is back",
                extra={"consumer": self.consumer, "error": repr(error)},
            )

    def _leave(self, stopping: bool) -> None:
        self._waiting -= 1
        WAITING.labels(self.consumer).dec()
        if self._waiting == 0:
            self.clear.set()
            waited = round(time.monotonic() - self._since, 3)
            if stopping:
                log.info(
                    "stopped while waiting for Postgres or NATS; messages given back",
                    extra={"consumer": self.consumer, "waited_seconds": waited},
                )
            else:
                log.info(
                    "Postgres and NATS are back; going on",
                    extra={"consumer": self.consumer, "waited_seconds": waited},
                )
