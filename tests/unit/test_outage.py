"""Telling an outage of Postgres or NATS from the work's own failure, and waiting one out."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import asyncpg
import httpx
import msgspec
import nats.errors
import nats.js.errors
import pytest
from asyncpg.exceptions._base import InternalClientError
from prometheus_client import REGISTRY

from hookbus_common.errors import (
    ConflictError,
    NotFoundError,
    OutageError,
    PermanentError,
    RetryableError,
    UnavailableError,
)
from hookbus_common.outage import Recovery, is_outage

pg = asyncpg.exceptions


def _enoent(filename: str | None = None) -> FileNotFoundError:
    if filename is None:
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), filename)


OUTAGES = {
    # ours
    "outage-error": OutageError("postgres unreachable"),
    # Postgres away, restarting, failing over, full
    "connection-lost": pg.ConnectionDoesNotExistError("connection was closed in the middle"),
    "connection-failure": pg.ConnectionFailureError("connection failure"),
    "client-cannot-connect": pg.ClientCannotConnectError("cannot connect"),
    "admin-shutdown": pg.AdminShutdownError("terminating connection due to administrator"),
    "crash-shutdown": pg.CrashShutdownError("crash"),
    "starting-up": pg.CannotConnectNowError("the database system is starting up"),
    "idle-session-timeout": pg.IdleSessionTimeoutError("idle session timeout"),
    "too-many-clients": pg.TooManyConnectionsError("sorry, too many clients already"),
    "disk-full": pg.DiskFullError("could not extend file"),
    "read-only-standby": pg.ReadOnlySQLTransactionError("read-only transaction"),
    "connection-closed": asyncpg.InterfaceError("connection is closed"),
    "pool-closing": asyncpg.InterfaceError("pool is closing"),
    # a pooled connection Postgres ended while idle (fast shutdown), used again
    "ended-while-idle": InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    ),
    # sockets, a pool acquire out of time
    "timeout": TimeoutError(),
    "js-fetch-timeout": nats.js.errors.FetchTimeoutError(),
    "refused": ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
    "reset": ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "broken-pipe": BrokenPipeError(errno.EPIPE, "Broken pipe"),
    "dns": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    "host-unreachable": OSError(errno.EHOSTUNREACH, "No route to host"),
    "network-unreachable": OSError(errno.ENETUNREACH, "Network is unreachable"),
    "unix-socket-gone": _enoent(),  # a stopped local Postgres removed its socket
    # NATS away or JetStream not answering
    "nats-closed": nats.errors.ConnectionClosedError(),
    "nats-reconnecting": nats.errors.ConnectionReconnectingError(),
    "nats-draining": nats.errors.ConnectionDrainingError(),
    "nats-no-servers": nats.errors.NoServersError(),
    "nats-stale": nats.errors.StaleConnectionError(),
    "nats-eof": nats.errors.UnexpectedEOF(),
    "nats-buffer-full": nats.errors.OutboundBufferLimitError(),
    "nats-timeout": nats.errors.TimeoutError(),
    "nats-no-responders": nats.errors.NoRespondersError(),
    "js-no-stream-response": nats.js.errors.NoStreamResponseError(),
    "js-unavailable": nats.js.errors.ServiceUnavailableError(),
    # several at once, all outages
    "group": ExceptionGroup("both", [TimeoutError(), nats.errors.ConnectionClosedError()]),
}

NOT_OUTAGES = {
    # a downstream's failure is an attempt: it counts
    "retryable": RetryableError("endpoint answered 503", delay=1.0),
    "retryable-no-delay": RetryableError("connection refused by the endpoint"),
    "unavailable": UnavailableError("a dependency of the work"),
    "httpx-connect": httpx.ConnectError("All connection attempts failed"),
    "httpx-timeout": httpx.ReadTimeout("timed out"),
    # the work's own failures
    "permanent": PermanentError("cannot ever work"),
    "not-found": NotFoundError("no such partner"),
    "conflict": ConflictError("exists"),
    "unique-violation": pg.UniqueViolationError("duplicate key"),
    "data-error": pg.DataError("invalid input for query argument"),
    "statement-timeout": pg.QueryCanceledError("canceling statement due to statement timeout"),
    "protocol-violation": pg.ProtocolViolationError("protocol violation"),
    "serialization": pg.SerializationError("could not serialize access"),
    "missing-file": _enoent("/srv/hookbus/deploy.sh"),
    "permission": PermissionError(errno.EACCES, "Permission denied", "/srv/x"),
    "local-disk-full": OSError(errno.ENOSPC, "No space left on device"),
    "plain-oserror": OSError("could not start the program"),
    "nats-bad-subject": nats.errors.BadSubjectError(),
    "js-stream-not-found": nats.js.errors.NotFoundError(),
    "js-bad-request": nats.js.errors.BadRequestError(),
    "validation": msgspec.ValidationError("Expected `str`"),
    "runtime": RuntimeError("boom"),
    "client-internal": InternalClientError("unexpected message type"),
    "key": KeyError("k"),
    "value": ValueError("bad"),
    "mixed-group": ExceptionGroup("mixed", [TimeoutError(), RuntimeError("boom")]),
}


@pytest.mark.parametrize("exc", OUTAGES.values(), ids=OUTAGES.keys())
def test_outages_of_postgres_and_nats_are_recognised(exc: BaseException) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize("exc", NOT_OUTAGES.values(), ids=NOT_OUTAGES.keys())
def test_the_works_own_failures_are_not_outages(exc: BaseException) -> None:
    assert not is_outage(exc)


def _reach_postgres_by_socket() -> None:
    try:
        raise _enoent("/run/postgresql/.s.PGSQL.5432")
    except OSError as exc:
        raise OutageError("Postgres unreachable") from exc


def test_our_code_says_outage_where_a_drivers_error_does_not() -> None:
    # A path named in the error reads as a missing file; code that knows it was reaching
    # Postgres says so.
    with pytest.raises(OutageError) as caught:
        _reach_postgres_by_socket()
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert not is_outage(caught.value.__cause__)
    assert is_outage(caught.value)


# --------------------------------------------------------------------------- Recovery


def _waiting(consumer: str) -> float:
    value = REGISTRY.get_sample_value(
        "hookbus_consumer_waiting_for_recovery", {"consumer": consumer}
    )
    return value or 0.0


def _recovery(name: str) -> Recovery:
    return Recovery(name, heartbeat=0.01, base=0.001, cap=0.005)


async def test_retry_calls_again_until_the_outage_ends_keeping_the_message_meanwhile() -> None:
    recovery = _recovery("unit-ends")
    calls = 0
    beats = 0
    gauge_while_waiting: list[float] = []

    async def call() -> str:
        nonlocal calls
        calls += 1
        gauge_while_waiting.append(_waiting("unit-ends"))
        if calls < 4:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        return "committed"

    async def keepalive() -> None:
        nonlocal beats
        beats += 1
        if beats % 2:
            raise nats.errors.ConnectionClosedError()  # NATS away too: ignored

    first = TimeoutError()
    result = await recovery.retry(call, first, keepalive=keepalive, stop=asyncio.Event())

    assert result == "committed"
    assert calls == 4
    assert beats >= 1  # told JetStream at once, and every heartbeat after
    assert gauge_while_waiting == [1.0, 1.0, 1.0, 1.0]
    assert _waiting("unit-ends") == 0
    assert recovery.waiting == 0
    assert recovery.clear.is_set()


async def test_retry_raises_a_failure_that_is_not_an_outage() -> None:
    recovery = _recovery("unit-real")

    async def call() -> None:
        raise pg.UniqueViolationError("duplicate key")

    with pytest.raises(pg.UniqueViolationError):
        await recovery.retry(call, TimeoutError(), keepalive=_nothing, stop=asyncio.Event())
    assert _waiting("unit-real") == 0


async def test_retry_gives_up_with_the_last_outage_when_stopped() -> None:
    recovery = _recovery("unit-stop")
    stop = asyncio.Event()
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()
        raise pg.CannotConnectNowError("the database system is shutting down")

    with pytest.raises(pg.CannotConnectNowError):
        await recovery.retry(call, TimeoutError(), keepalive=_nothing, stop=stop)
    assert calls == 3
    assert recovery.waiting == 0


async def test_messages_waiting_together_are_counted_and_fetching_resumes_after_the_last() -> None:
    recovery = _recovery("unit-many")
    back = asyncio.Event()

    async def call() -> None:
        if not back.is_set():
            raise nats.errors.NoServersError()

    waiters = [
        asyncio.create_task(
            recovery.retry(call, TimeoutError(), keepalive=_nothing, stop=asyncio.Event())
        )
        for _ in range(3)
    ]
    while recovery.waiting < 3:
        await asyncio.sleep(0.001)
    assert _waiting("unit-many") == 3
    assert not recovery.clear.is_set()
    back.set()
    await asyncio.gather(*waiters)
    assert _waiting("unit-many") == 0
    assert recovery.clear.is_set()


async def _nothing() -> None:
    return None
