"""The systems a whole-system phase drives — hookbus (every service, NATS, Postgres) and
adnanh/webhook — behind one interface, and the rounds run against either.

A round's CPU window opens just before its load starts and closes once the work the load
caused is over (every consumer drained, every action stamped and exited), so work a
system defers past its HTTP answer is counted, and nothing of the next round is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import nats
from nats.aio.client import Client as NATS

from hookbus_common.bus import stream_name

from . import openloop, payloads, procs, wrk
from .adnanh import Adnanh
from .stats import perf_to_wall
from .system import Servers, System

RECEIVED = "io.hookbus.webhook.received.v1"
ROUTED = "io.hookbus.webhook.routed.v1"
TERMINAL = ("io.hookbus.job.succeeded.v1", "io.hookbus.job.failed.v1")
HOOKBUS_ORDER = ("receiver", "router", "executor", "dispatcher", "nats-server", "postgres")


def read_stamps(path: Path, prefix: str = "") -> dict[str, float]:
    """delivery id -> when its action started (wall clock, ``$EPOCHREALTIME``)."""
    out: dict[str, float] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        delivery, _, when = line.partition(" ")
        if when and delivery.startswith(prefix):
            out[delivery] = float(when.replace(",", "."))
    return out


def postmaster_pid(servers: Servers) -> int:
    """The postmaster's pid, from the first line of ``postmaster.pid`` in its data dir."""
    return int((servers.pg.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


@dataclass
class Chain:
    """What a hookbus run's webhooks caused, from the log."""

    received: int
    routed: int
    finished: int  # jobs succeeded or failed
    failed: int
    first_wall: float | None  # earliest recorded_at in the chains (epoch seconds)
    last_wall: float | None  # latest recorded_at: when the last of the work was committed


class Side(Protocol):
    name: str
    port: int
    match_path: str
    quiet_path: str
    stamps: Path
    drained_wall: float | None

    def groups(self) -> list[procs.Group]: ...

    async def settle(self, prefix: str, stamps: int, timeout: float) -> bool:
        """Wait until the work of the last load is done and ``stamps`` actions of the run
        ``prefix`` have stamped; False if ``timeout`` passed first."""
        ...

    async def chain(self, source: str, prefix: str) -> Chain | None: ...


class HookbusSide:
    name = "hookbus"
    match_path = payloads.HOOK_PATH  # /hooks/github
    quiet_path = "/hooks/quiet"

    def __init__(self, servers: Servers, system: System, stamps: Path) -> None:
        self.servers = servers
        self.system = system
        self.stamps = stamps
        self.port = system.port
        self.nc: NATS | None = None
        self.db: asyncpg.Connection | None = None
        self.drained_wall: float | None = None

    async def open(self) -> None:
        self.nc = await nats.connect(self.servers.nats.url)
        self.db = await asyncpg.connect(
            self.servers.database_url, server_settings={"search_path": self.system.prefix}
        )

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        if self.db is not None:
            await self.db.close()

    def groups(self) -> list[procs.Group]:
        out = [
            # The executor's children are the actions it runs: counted apart, never in it.
            procs.Group(name, p.pid, descendants=name != "executor", reaped=name != "executor")
            for name, p in self.system.procs.items()
        ]
        assert self.servers.nats.proc is not None
        out.append(procs.Group("nats-server", self.servers.nats.proc.pid))
        out.append(procs.Group("postgres", postmaster_pid(self.servers)))
        return out

    async def _pending(self) -> tuple[int, int]:
        """(messages not yet acked by any service's durable, messages in the stream)."""
        assert self.nc is not None
        js = self.nc.jetstream()
        stream = stream_name(self.system.prefix)
        pending = 0
        for service in self.system.procs:
            if service == "receiver":
                continue
            info = await js.consumer_info(stream, f"{self.system.prefix}-{service}")
            pending += (info.num_pending or 0) + (info.num_ack_pending or 0)
        state = (await js.stream_info(stream)).state
        return pending, int(state.messages)

    async def settle(self, prefix: str, stamps: int, timeout: float) -> bool:
        # Drained: every action stamped, no durable has a message pending or unacked, and
        # the stream did not grow over the last poll (events published after their commit).
        # ``drained_wall``: when that was first seen (the end of the work, for webhooks that
        # leave no event behind them: a webhook no rule matches is only acknowledged).
        deadline = time.monotonic() + timeout
        last = -1
        self.drained_wall = None
        while True:
            stamped = len(read_stamps(self.stamps, prefix)) >= stamps
            pending, messages = await self._pending()
            if stamped and pending == 0 and self.drained_wall is None:
                self.drained_wall = time.time()
            elif pending:
                self.drained_wall = None
            if stamped and pending == 0 and messages == last:
                return True
            if time.monotonic() > deadline:
                return False
            last = messages
            await asyncio.sleep(0.1)

    async def chain(self, source: str, prefix: str) -> Chain:
        assert self.db is not None
        row = await self.db.fetchrow(
            """
            WITH hooks AS (SELECT id FROM events WHERE dedupe_key LIKE $1 AND type = $2)
            SELECT count(*) FILTER (WHERE type = $2) AS received,
                   count(*) FILTER (WHERE type = $3) AS routed,
                   count(*) FILTER (WHERE type = ANY($4::text[])) AS finished,
                   count(*) FILTER (WHERE type = $5) AS failed,
                   extract(epoch FROM min(recorded_at))::float8 AS first,
                   extract(epoch FROM max(recorded_at))::float8 AS last
            FROM events WHERE correlation_id IN (SELECT id FROM hooks)
            """,
            f"{source}:{prefix}%",
            RECEIVED,
            ROUTED,
            list(TERMINAL),
            TERMINAL[1],
        )
        assert row is not None
        return Chain(
            int(row["received"]), int(row["routed"]), int(row["finished"]), int(row["failed"]),
            row["first"], row["last"],
        )  # fmt: skip


class AdnanhSide:
    name = "adnanh"

    def __init__(self, peer: Adnanh) -> None:
        from .adnanh import MATCH_PATH, QUIET_PATH

        self.peer = peer
        self.port = peer.port
        self.stamps = peer.stamps
        self.match_path = MATCH_PATH
        self.quiet_path = QUIET_PATH
        self.drained_wall: float | None = None  # it does all its work before it answers

    def groups(self) -> list[procs.Group]:
        # One process; its children are the actions, counted apart.
        return [procs.Group("webhook", self.peer.pid, descendants=False, reaped=False)]

    async def settle(self, prefix: str, stamps: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            stamped = len(read_stamps(self.stamps, prefix)) >= stamps
            children = procs.members([procs.Group("c", self.peer.pid)])["c"] - {self.peer.pid}
            if stamped and not children:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)

    async def chain(self, source: str, prefix: str) -> None:
        return None


# ------------------------------------------------------------------------------ rounds


@dataclass
class RateRound:
    side: str
    rate: float
    accepted: int
    errors: int
    settled: bool
    usage: procs.Usage
    to_stamp_s: list[float] = field(default_factory=list)
    missing_stamps: int = 0
    response_s: list[float] = field(default_factory=list)
    send_lag_s: list[float] = field(default_factory=list)


async def rate_round(
    side: Side,
    signed: list[payloads.Signed],
    tag: str,
    *,
    rate: float,
    seconds: float,
    spin: float,
    settle_timeout: float,
) -> RateRound:
    """Matching pushes at a fixed rate (open loop); every one runs the stamp script."""
    groups = side.groups()
    make = payloads.requests_for(side.port, signed, tag, side.match_path)
    before = procs.snapshot(groups)
    r = await openloop.run(side.port, make, rate=rate, duration=seconds, spin=spin)
    sent_at = {s.key: s.intended_wall for s in r.samples if s.status == 202}
    settled = await side.settle(f"{tag}-", len(sent_at), settle_timeout)
    use = procs.usage(before, procs.snapshot(groups), groups)
    stamps = read_stamps(side.stamps, f"{tag}-")
    return RateRound(
        side=side.name,
        rate=rate,
        accepted=len(sent_at),
        errors=sum(1 for s in r.samples if s.status != 202),
        settled=settled,
        usage=use,
        to_stamp_s=[stamps[k] - t for k, t in sent_at.items() if k in stamps],
        missing_stamps=sum(1 for k in sent_at if k not in stamps),
        response_s=[s.latency_s for s in r.samples if s.status == 202],
        send_lag_s=[s.send_lag_s for s in r.samples],
    )


@dataclass
class LoadRound:
    side: str
    processed: int  # webhooks the system verified and finished with
    seconds: float  # from the load's start to the end of the work it caused
    settled: bool
    usage: procs.Usage
    wrk: dict[str, Any]
    stamps_added: int
    chain: Chain | None

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


async def wrk_round(
    side: Side,
    data_file: Path,
    tag: str,
    *,
    source: str,
    path: str,
    seconds: float,
    connections: int,
    threads: int,
    settle_timeout: float,
    max_requests: int = 10**7,
    count: str = "received",
) -> LoadRound:
    """wrk (closed loop) for ``seconds`` or ``max_requests``, then wait for the work to end.

    ``processed``: for hookbus, the run's webhooks in the log (``count`` = "received", or
    "finished" jobs), over the time from wrk's start to the last event committed; for
    adnanh/webhook, which does all its work before it answers, wrk's 202s over wrk's time.
    """
    groups = side.groups()
    url = f"http://127.0.0.1:{side.port}{path}"
    before = procs.snapshot(groups)
    res = await asyncio.to_thread(
        wrk.run, url, data_file, run_id=tag, duration=seconds, connections=connections,
        threads=threads, max_requests=max_requests,
    )  # fmt: skip
    ended = time.perf_counter() + perf_to_wall()
    started = ended - res.duration_s
    settled = await side.settle(f"{tag}-", 0, settle_timeout)
    use = procs.usage(before, procs.snapshot(groups), groups)
    chain = await side.chain(source, f"{tag}-")
    if chain is not None:
        processed = chain.finished if count == "finished" else chain.received
        # The work ended with the last event committed or the last message acknowledged
        # (a webhook no rule matches leaves no event after its own), whichever came last.
        ends = [t for t in (chain.last_wall, side.drained_wall) if t is not None]
        spent = (max(ends) - started) if ends else res.duration_s
    else:
        processed, spent = res.status_202, res.duration_s
    return LoadRound(
        side=side.name,
        processed=processed,
        seconds=spent,
        settled=settled,
        usage=use,
        wrk={
            "status_202": res.status_202, "status_other": res.status_other,
            "socket_errors": res.socket_errors, "duration_s": res.duration_s,
            "sent": res.sent, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms,
        },
        stamps_added=len(read_stamps(side.stamps, f"{tag}-")),
        chain=chain,
    )  # fmt: skip


async def idle(sides: Iterable[Side], seconds: float) -> dict[str, procs.Usage]:
    """Nothing sent, every side measured over the same seconds."""
    sides = list(sides)
    groups = {s.name: s.groups() for s in sides}
    every = [g for gs in groups.values() for g in gs]
    before = procs.snapshot(every)
    await asyncio.sleep(seconds)
    after = procs.snapshot(every)
    return {name: procs.usage(before, after, gs) for name, gs in groups.items()}
