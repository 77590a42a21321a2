"""Telling whether a (re)deployed container is healthy: hookbus's own HTTP and TCP probes,
and one loop that asks a check again until it says yes, no, or the deadline passes."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

from hookbus_common.events import HealthProbe

# One probe (connect, ask, read the status line) may take this long at most.
_PROBE_TIMEOUT = 5.0


class Verdict(NamedTuple):
    """What one look found: ``healthy``, ``unhealthy`` (for good: stop waiting) or
    ``waiting`` (not yet); ``detail`` says what was seen."""

    status: Literal["healthy", "unhealthy", "waiting"]
    detail: str


class Health(NamedTuple):
    """How waiting ended: ``healthy``, ``unhealthy``, ``timed_out`` or ``stopped``, and
    the last thing seen."""

    status: Literal["healthy", "unhealthy", "timed_out", "stopped"]
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "healthy"


def tcp_target(value: str) -> tuple[str, int]:
    """``8080`` means 127.0.0.1:8080; ``host:port`` as given. ValueError if neither."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} out of range")
    return host.strip("[]") or "127.0.0.1", number


def check_probe(probe: HealthProbe) -> str | None:
    """What is wrong with a probe as configured, if anything."""
    if (probe.http is None) == (probe.tcp is None):
        return "a health probe takes exactly one of http and tcp"
    if probe.http is not None:
        url = urlsplit(probe.http)
        if url.scheme not in ("http", "https") or not url.hostname:
            return f"health.http: {probe.http!r} is not an http(s) URL"
    if probe.tcp is not None:
        try:
            tcp_target(probe.tcp)
        except ValueError:
            return f"health.tcp: {probe.tcp!r} is not a port or host:port"
    if probe.timeout <= 0 or probe.interval <= 0:
        return "health.timeout and health.interval must be positive"
    return None


async def probe_http(url: str) -> Verdict:
    """GET ``url``: 2xx or 3xx is healthy; anything else, or no answer, not yet."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    context = ssl.create_default_context() if tls else None
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                writer.write(
                    f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                    "User-Agent: hookbus-health\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except TimeoutError:
        return Verdict("waiting", f"GET {url}: no answer within {_PROBE_TIMEOUT:g} s")
    except (OSError, ssl.SSLError) as exc:
        return Verdict("waiting", f"GET {url}: {exc.strerror or exc}")
    words = line.decode("latin-1").split()
    if len(words) < 2 or not words[1].isdigit():
        return Verdict("waiting", f"GET {url}: not an HTTP answer")
    status = int(words[1])
    if 200 <= status < 400:
        return Verdict("healthy", f"GET {url} answered {status}")
    return Verdict("waiting", f"GET {url} answered {status}")


async def probe_tcp(value: str) -> Verdict:
    host, port = tcp_target(value)
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return Verdict("waiting", f"TCP {host}:{port}: no answer within {_PROBE_TIMEOUT:g} s")
    except OSError as exc:
        return Verdict("waiting", f"TCP {host}:{port}: {exc.strerror or exc}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Verdict("healthy", f"TCP {host}:{port} accepted a connection")


async def probe(p: HealthProbe) -> Verdict:
    if p.http is not None:
        return await probe_http(p.http)
    assert p.tcp is not None
    return await probe_tcp(p.tcp)


async def wait_for(
    check: Callable[[], Awaitable[Verdict]],
    *,
    timeout: float,  # noqa: ASYNC109 - a deadline for the looks, each bounded on its own
    interval: float,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Health:
    """Ask ``check`` every ``interval`` seconds until it is healthy or unhealthy, the
    deadline passes (``timed_out``) or ``stop`` is set (``stopped``)."""
    deadline = clock() + timeout
    last = "not checked yet"
    while True:
        if stop is not None and stop.is_set():
            return Health("stopped", last)
        verdict = await check()
        last = verdict.detail
        if verdict.status != "waiting":
            return Health(verdict.status, last)
        left = deadline - clock()
        if left <= 0:
            return Health("timed_out", last)
        pause = min(interval, left)
        if stop is None:
            await asyncio.sleep(pause)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()
