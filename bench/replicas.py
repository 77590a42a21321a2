"""Per-service scaling: how fast the router drains a backlog with 1 replica, then with more;
and how fast the dispatcher sends one with 1 process, then 2.

All replicas of a service share one durable pull consumer, so adding a process adds a
consumer of the same messages. For each replica count, on a stream and schema of its own:

1. the receiver alone takes a backlog of signed pushes (each matching one rule with a
   shell action, so the router records a routing and a job request per webhook; no
   executor runs), and is stopped once every event is on the bus;
2. N router processes start together and drain it;
3. the routed rate is read from the log: routings committed between the 10th and the
   95th percentile of their ``recorded_at`` (so start-up and the tail count for nothing),
   divided by the time between the two.

On a 2-core machine shared with Postgres and NATS a second router can only add what
CPU is left: the ratio is what this machine gives, not a property of hookbus.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hookbus_cli.embedded import free_port
from hookbus_common.service import runtime

from . import cpu, delivery, openloop, payloads
from .fairness import _until, start_dispatchers
from .phases import BENCH, _db, log_and_bus, run_id
from .report import Row
from .system import Servers, System, source_config, start_sink, stop, wait_http

SECTION = "replicas"
ROUTED = "io.hookbus.webhook.routed.v1"
RULE = """
[[rules]]
name = "bench-replicas"
source = "github"
event = "push"
actions = [{ kind = "shell", command = ["/bin/true"], payload = "none" }]
"""


@dataclass
class ReplicaOptions:
    backlog: int  # webhooks queued before the routers start
    counts: tuple[int, ...] = (1, 2)
    ingest_rate: float = 1000.0  # webhooks/s offered while the backlog is made
    settle_timeout: float = 90.0


def start_routers(system: System, n: int) -> list[subprocess.Popen[bytes]]:
    """``n`` router processes on one config, each with its own health port; returns once
    every one is ready."""
    procs = []
    ports = []
    for i in range(1, n + 1):
        port = free_port()
        env = {**system.env, "HOOKBUS_ROUTER__HEALTH_PORT": str(port)}
        argv = [sys.executable, "-m", "hookbus_router", "--config", str(system.config)]
        with open(system.workdir / f"router-{i}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=system.workdir
            )
        procs.append(proc)
        ports.append(port)
    try:
        for i, (proc, port) in enumerate(zip(procs, ports, strict=True), 1):
            wait_http(f"http://127.0.0.1:{port}/readyz", proc, f"router-{i}")
    except BaseException:
        stop(procs)
        raise
    return procs


async def _routed_times(
    servers: Servers, schema: str, expected: int, timeout: float
) -> list[float]:
    """``recorded_at`` (epoch seconds) of every routing, once there are ``expected``."""
    conn = await _db(servers, schema)
    try:
        deadline = time.monotonic() + timeout
        while True:
            n = int(await conn.fetchval("SELECT count(*) FROM events WHERE type = $1", ROUTED))
            if n >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        rows = await conn.fetch(
            "SELECT extract(epoch FROM recorded_at) FROM events WHERE type = $1 ORDER BY 1",
            ROUTED,
        )
        return [float(r[0]) for r in rows]
    finally:
        await conn.close()


def drain_rate(times: list[float], lo: float = 0.10, hi: float = 0.95) -> float | None:
    """Routings per second between the ``lo`` and ``hi`` quantiles of their commit times."""
    if len(times) < 20:
        return None
    a, b = int(lo * (len(times) - 1)), int(hi * (len(times) - 1))
    span = times[b] - times[a]
    return (b - a) / span if span > 0 else None


async def _one(
    servers: Servers, workdir: Path, n: int, opt: ReplicaOptions, signed: list[payloads.Signed]
) -> dict[str, Any]:
    with System(servers, workdir, source_config() + RULE, workers=1) as system:
        system.start("receiver")
        make = payloads.requests_for(system.port, signed, run_id(f"r{n}"))
        r = await openloop.run(
            system.port, make, rate=opt.ingest_rate, duration=opt.backlog / opt.ingest_rate
        )
        accepted = r.count(202)
        logged, on_bus, outbox = await log_and_bus(servers, system, opt.settle_timeout)
        stop([system.procs.pop("receiver")])
        cpu0 = cpu.snapshot()
        t0 = time.time()
        routers = start_routers(system, n)
        try:
            times = await _routed_times(servers, system.prefix, accepted, opt.settle_timeout)
            roles = {f"router-{i}": {p.pid} for i, p in enumerate(routers, 1)}
            used = cpu.usage(cpu0, cpu.snapshot(), roles, solo=BENCH)
        finally:
            stop(routers)
    rate = drain_rate(times)
    return {
        "routers": n,
        "accepted": accepted,
        "backlog_on_bus": on_bus == logged and outbox == 0,
        "routed": len(times),
        "complete": len(times) == accepted,
        "routed_per_s": round(rate, 1) if rate else None,
        "start_to_last_routed_s": round(times[-1] - t0, 2) if times else None,
        "cpu_cores": used,
    }


async def run(
    servers: Servers,
    workdir: Path,
    opt: ReplicaOptions,
    signed: list[payloads.Signed],
    log: Callable[[str], None],
) -> dict[str, Any]:
    out: dict[str, Any] = {"backlog": opt.backlog, "runs": []}
    for n in opt.counts:
        log(f"replicas: a backlog of {opt.backlog} webhooks drained by {n} router(s)")
        out["runs"].append(await _one(servers, workdir / f"replicas-{n}", n, opt, signed))
    rates = {run["routers"]: run["routed_per_s"] for run in out["runs"]}
    one = rates.get(1)
    out["ratio_to_one"] = {
        str(k): round(v / one, 2) if (v and one) else None for k, v in rates.items()
    }
    return out


def rows(r: dict[str, Any]) -> list[Row]:
    runs = {run["routers"]: run for run in r["runs"]}
    one = (runs.get(1) or {}).get("routed_per_s")
    out = []
    for n, run in sorted(runs.items()):
        routers = run["cpu_cores"]
        busy = sum(v for k, v in routers.items() if k.startswith("router-"))
        more = n > 1 and one is not None
        rate = run["routed_per_s"]
        out.append(
            Row(
                f"router replicas: {n} draining a backlog of {r['backlog']}: routed/s"
                f" (routers busy {busy:.2f} cores, machine {routers.get('machine_busy', 0):.2f})",
                rate,
                "req/s",
                one if more else None,
                "1 replica" if more else "",
                "> 1 replica" if more else "",
                (rate is not None and one is not None and rate > one) if more else None,
                multiple=True,
            )
        )
    done = all(run["complete"] and run["backlog_on_bus"] for run in runs.values())
    out.append(
        Row("router replicas: every webhook of each backlog routed", "yes" if done else "no",
            "", None, "", "all", done)
    )  # fmt: skip
    for row in out:
        row.section = SECTION
    return out


# ------------------------------------------------------------------ dispatchers

DISPATCHER_SECTION = "replicas"


@dataclass
class DispatcherReplicaOptions:
    backlog: int  # delivery requests each replica count drains
    counts: tuple[int, ...] = (1, 2)
    settle_timeout: float = 120.0


async def dispatchers(
    servers: Servers, workdir: Path, opt: DispatcherReplicaOptions, log: Callable[[str], None]
) -> dict[str, Any]:
    """Deliveries/s to the local sink with 1, then 2 (…) dispatcher processes on one
    durable, each count draining a backlog of 2 KB requests committed while none ran."""
    body = payloads.push_body(0)
    sink, port = start_sink(workdir)
    out: dict[str, Any] = {"backlog": opt.backlog, "runs": []}
    try:
        with System(servers, workdir / "dispatchers", delivery._config(), workers=1) as system:
            settings = system.settings(workdir)
            async with runtime(settings, "bench") as rt:
                for n in opt.counts:
                    log(
                        f"replicas: a backlog of {opt.backlog} deliveries sent by {n} dispatcher(s)"
                    )
                    tag = f"d{n}"
                    url = f"http://127.0.0.1:{port}"
                    reqs = [delivery._request(tag, i, url, body) for i in range(opt.backlog)]
                    for i in range(0, len(reqs), delivery.BATCH):
                        await rt.outbox.commit_and_publish(reqs[i : i + delivery.BATCH])
                    procs = start_dispatchers(system, n)
                    try:
                        cpu0 = cpu.snapshot()
                        await _until(
                            functools.partial(_arrived, port, tag, opt.backlog),
                            opt.settle_timeout,
                        )
                        roles = {f"dispatcher-{i}": {p.pid} for i, p in enumerate(procs, 1)}
                        used = cpu.usage(cpu0, cpu.snapshot(), roles, solo=BENCH)
                    finally:
                        stop(procs)
                    fig = delivery._figures(
                        await delivery._committed_at(rt, reqs),
                        delivery._arrivals(port, tag),
                        opt.backlog,
                    )
                    out["runs"].append({"dispatchers": n, "cpu_cores": used} | fig)
    finally:
        stop([sink])
    rates = {run["dispatchers"]: run["deliveries_per_s"] for run in out["runs"]}
    one = rates.get(1)
    out["ratio_to_one"] = {
        str(k): round(v / one, 2) if (v and one) else None for k, v in rates.items()
    }
    return out


def _arrived(port: int, tag: str, expected: int) -> bool:
    return len(delivery._arrivals(port, tag)) >= expected


def dispatcher_rows(r: dict[str, Any]) -> list[Row]:
    runs = {run["dispatchers"]: run for run in r["runs"]}
    one = (runs.get(1) or {}).get("deliveries_per_s")
    out = []
    for n, run in sorted(runs.items()):
        used = run["cpu_cores"]
        busy = sum(v for k, v in used.items() if k.startswith("dispatcher-"))
        more = n > 1 and one is not None
        out.append(
            Row(
                f"dispatcher replicas: {n} sending a backlog of {r['backlog']}: deliveries/s"
                f" (dispatchers busy {busy:.2f} cores, machine {used.get('machine_busy', 0):.2f})",
                run["deliveries_per_s"],
                "deliv/s",
                one if more else None,
                "1 replica" if more else "",
                multiple=True,
            )
        )
    done = all(run["complete"] for run in runs.values())
    out.append(
        Row("dispatcher replicas: every delivery of each backlog arrived", "yes" if done else "no",
            "", None, "", "all", done)
    )  # fmt: skip
    for row in out:
        row.section = DISPATCHER_SECTION
    return out
