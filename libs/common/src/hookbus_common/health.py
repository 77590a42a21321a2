"""A small HTTP listener for services without an HTTP API: /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


def _response(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _route(path: str, ready: ReadyCheck) -> bytes:
    if path == "/healthz":
        return _response("200 OK", b"ok\n")
    if path == "/readyz":
        checks = await ready()
        body = "".join(f"{k}: {'ok' if v else 'down'}\n" for k, v in checks.items()).encode()
        return _response("200 OK" if all(checks.values()) else "503 Service Unavailable", body)
    if path == "/metrics":
        return _response("200 OK", generate_latest(), CONTENT_TYPE_LATEST)
    return _response("404 Not Found", b"not found\n")


@asynccontextmanager
async def serve_health(
    host: str, port: int, ready: ReadyCheck, *, fall_back_when_busy: bool = False
) -> AsyncIterator[int]:
    """Serve until the context exits; yields the bound port (port 0 picks a free one).

    With ``fall_back_when_busy``, a ``port`` another process holds (a second replica of the
    same service on one host) gives way to a free port chosen by the OS, logged as a
    warning: the first replica keeps the configured port, where probes look.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            writer.write(await _route(path, ready))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(handle, host, port)
    except OSError as exc:
        if not (fall_back_when_busy and port and exc.errno == errno.EADDRINUSE):
            raise
        server = await asyncio.start_server(handle, host, 0)
        log.warning(
            "health port %d is in use (another replica on this host?); serving /healthz,"
            " /readyz and /metrics on port %d instead",
            port,
            server.sockets[0].getsockname()[1],
        )
    bound = server.sockets[0].getsockname()[1]
    log.info("health listener up", extra={"port": bound})
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()
