"""An open-loop HTTP/1.1 load generator: requests leave on a fixed schedule, whatever the
server does, and latency is measured from each request's *intended* send time, so a slow
server cannot hide its stalls by slowing the generator down (no coordinated omission).

Requests are written over keep-alive connections from a pool; when every connection is
busy a new one is opened, up to ``max_connections``; beyond that a request waits for a
free connection and the wait counts in its latency.

Every time is taken with ``time.perf_counter()``: the event loop's clock (``loop.time()``)
has a 1 ms resolution under uvloop, which would round sub-millisecond latencies to whole
milliseconds. uvloop's timers fire to the millisecond too, so with ``spin`` the client
wakes that long before a request is due and yields to the loop until it is, to send
within tens of microseconds of the schedule (``send_lag_s`` says how late each one left).
Wall-clock times (to compare with stamps other processes write) are derived from the
perf-counter times with the offset between the two clocks read at each send.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future[int] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        self.buf = self.buf[end + 4 + length :]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    async def request(self, data: bytes, timeout: float) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await asyncio.wait_for(self.waiter, timeout)


@dataclass
class Sample:
    key: str
    intended_wall: float  # wall-clock time the request was meant to leave (time.time() scale)
    latency_s: float  # from intended send to the complete response (inf: no response)
    status: int  # 0: socket error or timeout
    send_lag_s: float  # how late the generator actually wrote it


@dataclass
class OpenLoopResult:
    offered_rate: float
    duration_s: float
    samples: list[Sample] = field(default_factory=list)
    connections_opened: int = 0

    def count(self, status: int) -> int:
        return sum(1 for s in self.samples if s.status == status)


async def run(
    port: int,
    make_request: Callable[[int], tuple[str, bytes]],
    *,
    rate: float,
    duration: float,
    max_connections: int = 256,
    timeout: float = 10.0,
    spin: float = 0.0,
) -> OpenLoopResult:
    """Send ``rate x duration`` requests to 127.0.0.1:``port`` on a fixed schedule.

    ``make_request(i)`` gives the i-th request's key (e.g. its delivery id) and bytes;
    requests are built before the run starts so building them costs nothing on the clock.
    ``spin``: seconds before each send to stop sleeping and yield to the loop instead
    (costs the generator CPU; at 100 requests/s and 1.5 ms, up to 15 % of a core).
    """
    loop = asyncio.get_running_loop()
    perf = time.perf_counter
    total = int(rate * duration)
    prepared = [make_request(i) for i in range(total)]
    idle: deque[_Conn] = deque()
    free = asyncio.Condition()
    opened = 0
    result = OpenLoopResult(offered_rate=rate, duration_s=duration)

    async def get_conn() -> _Conn:
        nonlocal opened
        while True:
            while idle:
                c = idle.pop()
                if not c.lost:
                    return c
            if opened < max_connections:
                opened += 1
                _, proto = await loop.create_connection(_Conn, "127.0.0.1", port)
                return proto
            async with free:
                await free.wait()

    async def put_conn(c: _Conn) -> None:
        nonlocal opened
        if c.lost:
            opened -= 1
        else:
            idle.append(c)
        async with free:
            free.notify()

    async def one(i: int, intended: float) -> None:
        key, data = prepared[i]
        status = 0
        lag = 0.0
        wall_offset = time.time() - perf()
        try:
            conn = await get_conn()
            lag = perf() - intended
            try:
                status = await conn.request(data, timeout)
            except (ConnectionError, TimeoutError):
                if conn.transport is not None:
                    conn.transport.abort()
                conn.lost = True
            await put_conn(conn)
        except OSError:
            pass
        done = perf()
        latency = done - intended if status else float("inf")
        result.samples.append(Sample(key, intended + wall_offset, latency, status, lag))

    # Warm a few connections so the first requests do not all pay for a handshake.
    for _ in range(min(8, max_connections)):
        opened += 1
        _, proto = await loop.create_connection(_Conn, "127.0.0.1", port)
        idle.append(proto)

    tasks: set[asyncio.Task[None]] = set()
    start = perf() + 0.01
    i = 0
    while i < total:
        now = perf()
        while i < total and start + i / rate <= now:
            t = asyncio.create_task(one(i, start + i / rate))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        if i < total:
            wait = start + i / rate - perf()
            await asyncio.sleep(wait - spin if wait > spin else 0.0)
    if tasks:
        await asyncio.wait(tasks)
    result.connections_opened = opened
    for c in idle:
        if c.transport is not None:
            c.transport.close()
    return result
