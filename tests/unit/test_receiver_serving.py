"""The receiver's HTTP server: it parks when idle, dates answers as they go out, and sends
each answer's head and body together."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from hookbus_receiver import serving


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b'{"ok":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 202,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _served() -> AsyncIterator[tuple[serving.Server, int]]:
    port = _free_port()
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=serving.HttpProtocol, log_config=None,
        lifespan="on", access_log=False,
    )  # fmt: skip
    server = serving.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), task.result()
        await asyncio.sleep(0.01)
    try:
        yield server, port
    finally:
        server.should_exit = True
        server.unpark()
        await asyncio.wait_for(task, 20)


async def _post(port: int, requests: int = 1) -> list[bytes]:
    """Send ``requests`` pipelined POSTs on one connection; return each answer's bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    one = b"POST /hooks/x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
    writer.write(one * requests)
    answers = []
    try:
        for _ in range(requests):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            answers.append(head + await reader.readexactly(length))
    finally:
        writer.close()
    return answers


def _date(answer: bytes) -> float:
    line = next(h for h in answer.split(b"\r\n") if h.lower().startswith(b"date:"))
    return parsedate_to_datetime(line.split(b":", 1)[1].strip().decode()).timestamp()


class _Recording:
    """A transport that records what reaches it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_writes_of_one_loop_step_leave_in_one_send() -> None:
    real = _Recording()
    held = serving._Coalescing(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
    held.write(b"{}")
    assert real.sent == []
    await asyncio.sleep(0)
    assert real.sent == [b"HTTP/1.1 202 Accepted\r\n\r\n{}"]
    # Anything else is the transport's own.
    assert held.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_closing_sends_what_is_held_first_and_a_lost_connection_drops_it() -> None:
    real = _Recording()
    held = serving._Coalescing(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    held.write(b"answer")
    held.close()
    assert real.sent == [b"answer"]
    assert real.closed
    gone = _Recording()
    gone.closed = True
    lost = serving._Coalescing(gone, asyncio.get_running_loop())  # type: ignore[arg-type]
    lost.write(b"late")
    await asyncio.sleep(0)
    assert gone.sent == []


async def test_answers_are_whole_and_in_order_when_pipelined() -> None:
    async with _served() as (_, port):
        answers = await _post(port, requests=3)
    assert len(answers) == 3
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n")
        assert answer.endswith(b'\r\n\r\n{"ok":true}')


async def test_an_idle_server_parks_and_dates_the_next_answer_when_it_comes() -> None:
    async with _served() as (server, port):
        await _post(port)
        # A second with no request: the server waits with no timer.
        for _ in range(100):
            if server.parked:
                break
            await asyncio.sleep(0.05)
        assert server.parked
        await asyncio.sleep(2.2)  # the date cached at the last tick is now stale
        before = time.time()
        (answer,) = await _post(port)
        after = time.time()
        assert not server.parked
        # Dated when it went out (the header has whole seconds), not at the last tick.
        assert int(before) <= _date(answer) <= after
