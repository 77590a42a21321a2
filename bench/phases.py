"""The measured phases: ingest (saturation and fixed rate), end to end, fan-out."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats

from hookbus_common import events as ev
from hookbus_common.bus import stream_name

from . import cpu, openloop, payloads, wrk
from .sides import read_stamps
from .stats import summary_ms
from .system import Servers, System

RECEIVED = ev.WebhookReceived.TYPE
TERMINAL = (ev.JobSucceeded.TYPE, ev.JobFailed.TYPE)
# Each hop of a chain, by the type its event has now (the router writes job.requested v2).
HOPS = (RECEIVED, ev.JobRequestedV2.TYPE, ev.JobStarted.TYPE, *TERMINAL)


@dataclass
class Options:
    duration: float
    warmup: float
    connections: int
    wrk_threads: int
    workers: int
    e2e_rate: float
    e2e_duration: float
    fanout_rules: int
    fanout_rate: float
    fanout_duration: float
    executor_in_flight: int | None = None
    bodies: int = 2048
    settle_timeout: float = 60.0
    signed: list[payloads.Signed] = field(default_factory=list)


def run_id(tag: str) -> str:
    return f"{tag}{secrets.token_hex(3)}"


def accepted_metric(url: str) -> float:
    """The receiver's own count of 202s (its Prometheus counter), summed over sources."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("hookbus_receiver_requests_total{") and 'outcome="accepted"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _db(servers: Servers, schema: str) -> asyncpg.Connection:
    return await asyncpg.connect(servers.database_url, server_settings={"search_path": schema})


async def log_count(servers: Servers, schema: str, rid: str) -> int:
    conn = await _db(servers, schema)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM events WHERE type = $1 AND dedupe_key LIKE $2",
                RECEIVED,
                f"{payloads.SOURCE}:{rid}-%",
            )
        )
    finally:
        await conn.close()


async def log_and_bus(servers: Servers, system: System, timeout: float) -> tuple[int, int, int]:
    """(events in the log, messages in the stream, outbox rows) once the outbox drained."""
    conn = await _db(servers, system.prefix)
    nc = await nats.connect(servers.nats.url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            logged = int(await conn.fetchval("SELECT count(*) FROM events"))
            outbox = int(await conn.fetchval("SELECT count(*) FROM outbox"))
            info = await js.stream_info(stream_name(system.prefix))
            on_bus = int(info.state.messages)
            if (outbox == 0 and on_bus == logged) or time.monotonic() > deadline:
                return logged, on_bus, outbox
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
        await conn.close()


async def _settled_count(servers: Servers, schema: str, rid: str) -> int:
    """The log count for ``rid`` once it stops moving (abandoned requests finish first)."""
    last = -1
    while True:
        n = await log_count(servers, schema, rid)
        if n == last:
            return n
        last = n
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- ingest


async def settled_metric(url: str) -> float:
    """The receiver's 202 count once requests a stopped wrk left in flight have finished."""
    last = -1.0
    while True:
        n = accepted_metric(url)
        if n == last:
            return n
        last = n
        await asyncio.sleep(0.3)


async def ingest(
    servers: Servers,
    workdir: Path,
    opt: Options,
    fixed_rate: float | None,
    floor: Callable[[float], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Receiver only: saturation with wrk, then a fixed offered rate with the open-loop client
    (by default half the rate reached at saturation); ``floor(rate)`` measures the bare app
    at that same rate, between the two."""
    out: dict[str, Any] = {"workers": opt.workers}
    with System(servers, workdir / "ingest", _config(), workers=opt.workers) as system:
        system.start("receiver")
        data_file = workdir / "ingest" / "requests.bin"
        payloads.write_wrk_data(data_file, "127.0.0.1", system.port, opt.signed)
        url = f"{system.url}/hooks/{payloads.SOURCE}"
        if opt.warmup > 0:
            await asyncio.to_thread(
                wrk.run, url, data_file, run_id=run_id("warm"), duration=opt.warmup,
                connections=opt.connections, threads=opt.wrk_threads, max_requests=10**7,
            )  # fmt: skip
        rid = run_id("sat")
        before = await settled_metric(system.url)
        cpu0 = cpu.snapshot()
        sat = await asyncio.to_thread(
            wrk.run, url, data_file, run_id=rid, duration=opt.duration,
            connections=opt.connections, threads=opt.wrk_threads, max_requests=10**7,
        )  # fmt: skip
        cpu_sat = cpu.usage(cpu0, cpu.snapshot(), system.roles(), solo=BENCH)
        logged = await _settled_count(servers, system.prefix, rid)
        server_202 = await settled_metric(system.url) - before
        in_flight = sat.sent - sat.requests
        out["saturation"] = {
            "accepted_per_s": sat.rate,
            "responses": sat.requests,
            "status_202": sat.status_202,
            "status_200_duplicate": sat.status_200,
            "errors": sat.status_other + sat.socket_errors,
            "p50_ms": sat.p50_ms,
            "p90_ms": sat.p90_ms,
            "p99_ms": sat.p99_ms,
            "p999_ms": sat.p999_ms,
            "max_ms": sat.max_ms,
            "connections": opt.connections,
            "events_in_log": logged,
            "receiver_202_sent": server_202 if opt.workers == 1 else None,
            "abandoned_in_flight": in_flight,
            # wrk stops with up to `connections` requests in flight: those may be committed
            # (the receiver answered, wrk did not read it). The log must hold exactly what the
            # receiver answered 202 to, and at least every 202 that wrk read.
            "log_matches_202s": (
                sat.status_202 <= logged <= sat.status_202 + in_flight
                and (opt.workers != 1 or logged == server_202)
            ),
            "cpu_cores": cpu_sat,
            "receiver_cpu_us_per_request": _per_request(
                cpu_sat, "receiver", sat.duration_s, sat.status_202
            ),
        }

        rid = run_id("fix")
        signed = opt.signed
        fixed_rate = fixed_rate or max(10.0, round(sat.rate / 2, -1))
        out["fixed_rate"] = fixed_rate
        out["bare_app_fixed"] = await floor(fixed_rate)

        def make_for(tag: str) -> Callable[[int], tuple[str, bytes]]:
            return payloads.requests_for(system.port, signed, tag)

        if opt.warmup > 0:
            # Connections to open and a first batch to commit: not what a steady rate costs.
            await openloop.run(
                system.port, make_for(rid + "w"), rate=fixed_rate, duration=opt.warmup
            )
        cpu0 = cpu.snapshot()
        fixed = await openloop.run(
            system.port, make_for(rid), rate=fixed_rate, duration=opt.duration
        )
        cpu_fixed = cpu.usage(cpu0, cpu.snapshot(), system.roles(), solo=BENCH)
        logged = await _settled_count(servers, system.prefix, rid)
        out["fixed"] = _openloop_summary(fixed) | {
            "cpu_cores": cpu_fixed,
            "receiver_cpu_us_per_request": _per_request(
                cpu_fixed, "receiver", opt.duration, fixed.count(202)
            ),
            "events_in_log": logged,
            "log_matches_202s": logged == fixed.count(202),
        }
        total_log, on_bus, outbox = await log_and_bus(servers, system, opt.settle_timeout)
        out["bus"] = {
            "events_in_log": total_log,
            "messages_on_bus": on_bus,
            "outbox_left": outbox,
            "bus_matches_log": on_bus == total_log and outbox == 0,
        }
    return out


BENCH = {"bench (load generator)": os.getpid()}


def _per_request(used: dict[str, float], role: str, seconds: float, n: int) -> float | None:
    return round(used.get(role, 0.0) * seconds / n * 1e6, 1) if n else None


def _openloop_summary(r: openloop.OpenLoopResult) -> dict[str, Any]:
    ok = [s for s in r.samples if 200 <= s.status < 300]
    accepted = r.count(202)
    lat = summary_ms([s.latency_s for s in ok])
    lags = summary_ms([s.send_lag_s for s in r.samples])
    return {
        "offered_per_s": r.offered_rate,
        "accepted_per_s": accepted / r.duration_s,
        "requests": len(r.samples),
        "status_202": accepted,
        "errors": sum(1 for s in r.samples if not 200 <= s.status < 300),
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "p999_ms": lat["p999_ms"],
        "max_ms": lat["max_ms"],
        "connections": r.connections_opened,
        "generator_lag_p99_ms": lags["p99_ms"],
    }


async def bare_fixed(
    port: int, rate: float, duration: float, signed: list[payloads.Signed], warmup: float
) -> dict[str, Any]:
    """The bare app at the same offered rate: the latency floor of the stack and generator."""

    make = payloads.requests_for(port, signed, "bare")

    if warmup > 0:
        await openloop.run(port, make, rate=rate, duration=warmup)
    return _openloop_summary(await openloop.run(port, make, rate=rate, duration=duration))


def _config(extra: str = "") -> str:
    from .system import source_config

    return source_config() + extra


# ----------------------------------------------------------------------- end to end

# The action: a bash script appending "<delivery id> $EPOCHREALTIME" to $BENCH_STAMPS.
STAMP = Path(__file__).resolve().with_name("stamp.sh")


async def end_to_end(servers: Servers, workdir: Path, opt: Options) -> dict[str, Any]:
    base = workdir / "e2e"
    base.mkdir(parents=True, exist_ok=True)
    script = STAMP
    stamps = base / "stamps.txt"
    stamps.write_text("")
    rule = f"""
[[rules]]
name = "bench-e2e"
source = "github"
event = "push"
branch = "main"
actions = [{{ kind = "shell", command = ["{script}"], timeout = 30, env = {{ BENCH_STAMPS = "{stamps}" }} }}]
"""
    extra = ""
    if opt.executor_in_flight:
        extra = f"\n[executor]\nmax_in_flight = {opt.executor_in_flight}\n"
    with System(servers, base, _config(extra + rule), workers=opt.workers) as system:
        system.start("receiver", "router", "executor")
        rid = run_id("e2e")
        signed = opt.signed

        make = payloads.requests_for(system.port, signed, rid)

        cpu0 = cpu.snapshot()
        r = await openloop.run(system.port, make, rate=opt.e2e_rate, duration=opt.e2e_duration)
        sent_at = {s.key: s.intended_wall for s in r.samples if s.status == 202}
        rows = await _wait_jobs(servers, system.prefix, rid, len(sent_at), opt.settle_timeout)
        cpu_e2e = cpu.usage(cpu0, cpu.snapshot(), system.roles(), solo=BENCH)
    hops: dict[str, list[float]] = {}
    for delivery, typ, recorded in rows:
        t0 = sent_at.get(delivery)
        if t0 is not None:
            hop = "terminal" if typ in TERMINAL else re.sub(r"\.v\d+$", "", typ.split(".", 2)[2])
            hops.setdefault(hop, []).append(recorded - t0)
    started = hops.get("job.started", [])
    finished = hops.get("terminal", [])
    failed = sum(1 for _, typ, _ in rows if typ == ev.JobFailed.TYPE)
    action = [when - sent_at[d] for d, when in read_stamps(stamps).items() if d in sent_at]
    return {
        "ingest": _openloop_summary(r),
        "to_committed": {hop: summary_ms(v) for hop, v in hops.items()},
        "to_job_started": summary_ms(started),
        "to_action_started": summary_ms(action),
        "to_terminal": summary_ms(finished),
        "jobs_accepted": len(sent_at),
        "jobs_finished": len(finished),
        "jobs_failed": failed,
        "cpu_cores": cpu_e2e,
    }


async def _wait_jobs(
    servers: Servers, schema: str, rid: str, expected: int, timeout: float
) -> list[tuple[str, str, float]]:
    """(delivery id, job event type, recorded_at epoch) once every job has finished."""
    conn = await _db(servers, schema)
    sql = """
        SELECT split_part(w.dedupe_key, ':', 2), j.type, extract(epoch FROM j.recorded_at)
        FROM events w JOIN events j ON j.correlation_id = w.id
        WHERE w.type = $1 AND w.dedupe_key LIKE $2
          AND j.type = ANY($3::text[])
    """
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch(sql, RECEIVED, f"{payloads.SOURCE}:{rid}-%", list(HOPS))
            done = sum(1 for r in rows if r[1] in TERMINAL)
            if done >= expected or time.monotonic() > deadline:
                return [(r[0], r[1], float(r[2])) for r in rows]
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- fan-out


async def fanout(servers: Servers, workdir: Path, opt: Options, sink_port: int) -> dict[str, Any]:
    base = workdir / "fanout"
    rules = "".join(
        f"""
[[rules]]
name = "fan-{k:02d}"
source = "github"
event = "push"
actions = [{{ kind = "webhook", url = "http://127.0.0.1:{sink_port}/r{k}" }}]
"""
        for k in range(opt.fanout_rules)
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{sink_port}/_reset", timeout=5):
        pass
    with System(servers, base, _config(rules), workers=opt.workers) as system:
        system.start("receiver", "router", "dispatcher")
        rid = run_id("fan")
        signed = opt.signed

        make = payloads.requests_for(system.port, signed, rid)

        cpu0 = cpu.snapshot()
        r = await openloop.run(
            system.port, make, rate=opt.fanout_rate, duration=opt.fanout_duration
        )
        sent_at = {s.key: s.intended_wall for s in r.samples if s.status == 202}
        expected = len(sent_at) * opt.fanout_rules
        records = await _wait_sink(sink_port, expected, opt.settle_timeout)
        cpu_fan = cpu.usage(cpu0, cpu.snapshot(), system.roles(), solo=BENCH)
        conn = await _db(servers, system.prefix)
        try:
            rows = await conn.fetch(
                """
                SELECT d.data->>'delivery_id', split_part(w.dedupe_key, ':', 2)
                FROM events d JOIN events w ON d.correlation_id = w.id
                WHERE d.type = 'io.hookbus.delivery.requested.v1' AND w.dedupe_key LIKE $1
                """,
                f"{payloads.SOURCE}:{rid}-%",
            )
        finally:
            await conn.close()
    webhook_of = {r[0]: r[1] for r in rows}
    latencies = []
    arrivals = []
    for arrived, _path, dlv in records:
        t0 = sent_at.get(webhook_of.get(dlv, ""))
        if t0 is not None:
            latencies.append(arrived - t0)
            arrivals.append(arrived)
    first = min(sent_at.values()) if sent_at else 0.0
    span = (max(arrivals) - first) if arrivals else 0.0
    return {
        "rules": opt.fanout_rules,
        "webhooks_per_s": opt.fanout_rate,
        "webhooks_accepted": len(sent_at),
        "deliveries_expected": expected,
        "deliveries_received": len(latencies),
        "deliveries_per_s": len(latencies) / span if span else 0.0,
        "offered_deliveries_per_s": opt.fanout_rate * opt.fanout_rules,
        "latency": summary_ms(latencies),
        "cpu_cores": cpu_fan,
    }


async def _wait_sink(port: int, expected: int, timeout: float) -> list[tuple[float, str, str]]:
    import json

    deadline = time.monotonic() + timeout
    while True:
        raw = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/_records")
        records = [tuple(json.loads(ln)) for ln in raw.splitlines() if ln.strip()]
        mine = [(float(a), str(p), str(d)) for a, p, d in records if re.match(r"/r\d+$", str(p))]
        if len(mine) >= expected or time.monotonic() > deadline:
            return mine
        await asyncio.sleep(0.25)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())
