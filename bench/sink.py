"""A local HTTP receiver for the dispatcher's deliveries, run as its own process.

Answers 200 to any POST and records (arrival wall time, path, x-hookbus-delivery);
``GET /_records`` returns them as JSON lines; ``GET /_count/<segment>`` how many requests
came to paths whose first segment it is (what a bench polls while it waits: the records
of thousands of deliveries take the sink tens of milliseconds to write out, and the
deliveries arriving meanwhile would wait for that). Plain asyncio on uvloop, so it costs little
next to what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import cast

import uvloop

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class _Sink(asyncio.Protocol):
    records: list[tuple[float, str, str]] = []
    counts: dict[str, int] = {}

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            method, path, _ = lines[0].split(" ", 2)
            assert self.transport is not None
            if method == "GET" and path == "/_records":
                self._answer("\n".join(json.dumps(r) for r in _Sink.records).encode())
                continue
            if method == "GET" and path.startswith("/_count/"):
                self._answer(b"%d" % _Sink.counts.get(path[len("/_count/") :], 0))
                continue
            if method == "GET" and path == "/_reset":
                _Sink.records = []
                _Sink.counts = {}
            else:
                _Sink.records.append((time.time(), path, headers.get("x-hookbus-delivery", "")))
                segment = path.split("/", 2)[1] if path.startswith("/") else path
                _Sink.counts[segment] = _Sink.counts.get(segment, 0) + 1
            self.transport.write(_OK)

    def _answer(self, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Sink, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
