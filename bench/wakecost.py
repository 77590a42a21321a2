"""What a wake-up costs on this machine: the CPU a bare Python process spends reading one
small message when it sleeps between messages, as every service does at low rates.

A child process (uvloop, an asyncio stream reader: how every service reads its sockets)
reads 100-byte messages from a socket pair, sent ``rate`` times a second; its CPU comes
from the kernel's own accounting of its threads (``/proc/<pid>/task/*/schedstat``). The
child does nothing with a message but read it, so its CPU per message is the cost of
being woken: the floor of each wake-up of a hookbus service before any of its own work.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

from . import procs

MESSAGE = b"x" * 100

# The reader: says it is ready (one byte back), then reads until the sender closes.
_READER = """
import asyncio, socket, sys, uvloop
async def main():
    sock = socket.socket(fileno=int(sys.argv[1]))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"r")
    while await reader.read(65536):
        pass
    writer.close()
uvloop.run(main())
"""


async def measure(*, rate: float, count: int) -> float:
    """The reader's CPU per message, in µs, with ``count`` messages sent ``rate`` a second."""
    mine, theirs = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-c", _READER, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    try:
        loop = asyncio.get_running_loop()
        mine.setblocking(False)
        if await loop.sock_recv(mine, 1) != b"r":
            raise RuntimeError("the wake-up reader did not start")
        await asyncio.sleep(0.2)  # its start-up is over
        before, _ = procs.threads(child.pid)
        started = time.perf_counter()
        for n in range(count):
            wait = started + n / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            await loop.sock_sendall(mine, MESSAGE)
        await asyncio.sleep(0.2)  # the last one read
        after, _ = procs.threads(child.pid)
    finally:
        mine.close()  # the reader's end of input: it exits
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if before is None or after is None:
        raise RuntimeError("the wake-up reader ended early")
    return per_message_us(after - before, count)


def per_message_us(cpu_s: float, count: int) -> float:
    return cpu_s * 1e6 / max(1, count)
