"""What delivery costs: one dispatcher process sending to the local sink, next to the
HTTP client's own ceiling measured in the same run.

1. **Fixed rate.** Delivery requests committed at ``--delivery-rate`` a second (300 by
   default) for the phase's seconds, to a URL on the sink, while the dispatcher runs:
   deliveries/s, and latency from each request's commit (its ``delivery.requested``
   event's ``recorded_at``) to the sink's receipt.
2. **Saturation.** With the dispatcher stopped, a backlog of ``--delivery-backlog``
   requests is committed, spread over eight sinks (eight destinations: the default cap of
   an eighth of the slots per destination lets every slot work); then the dispatcher
   starts and drains it: deliveries/s between
   the first and the last arrival at the sink (start-up counts for nothing), the CPU per
   delivery of the dispatcher, and of this run's Postgres and nats-server, and latency
   from commit (mostly time spent waiting in the backlog).
3. **Clients.** The dispatcher's HTTP client as it is built (its own requests sent by an
   aiohttp session, every connection's addresses checked by the SSRF guard) posting to
   eight sinks (eight destinations), 64 requests in flight (the dispatcher's default), sent
   as an attempt sends: one
   shared client, a pool of four clients, one client per destination; and two unguarded
   references, httpx with its own transport (httpcore) and a bare aiohttp session; each
   in turn for the same time in this process.

Requests go straight into the log and onto the bus (as the router records them), so only
the dispatcher's work is measured. The figures are read against the ``ceilings`` phase's
"its client → sink": the dispatcher's own client alone, sending as an attempt sends
(measured in the same run).
"""

from __future__ import annotations

import asyncio
import ipaddress
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec

from hookbus_common import events as ev
from hookbus_common.service import Runtime, runtime
from hookbus_dispatcher import httpclient
from hookbus_dispatcher.ssrf import guarded_client

from . import cpu, payloads
from .ceilings import post_as_attempt
from .fairness import _count, _records, _reset, _until
from .report import Row
from .stats import summary_ms
from .system import Servers, System, start_sink, stop

SECTION = "delivery"
BATCH = 250
DRAIN_GOAL = 2000.0
"""Deliveries/s one dispatcher process should drain (or 80 % of its client's ceiling)."""
ROUNDS = 6
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@dataclass
class DeliveryOptions:
    rate: float = 300.0
    seconds: float = 8.0
    backlog: int = 3000
    client_seconds: float = 2.0
    client_in_flight: int = 64
    destinations: int = 8
    settle_timeout: float = 90.0


def _config() -> str:
    return """
[log]
level = "INFO"

[dispatcher]
allow_networks = ["127.0.0.0/8", "::1/128"]
"""


def _request(tag: str, n: int, url: str, body: bytes) -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=f"dlv_{tag}_{n}", rule="bench", webhook_id=f"evt_{tag}_{n}",
            url=f"{url}/{tag}/{n}", body=msgspec.Raw(body), tenant="default",
            headers={"content-type": "application/json"},
        ),
        source="/bench",
    )  # fmt: skip


async def _committed_at(
    rt: Runtime, reqs: list[ev.Event[ev.DeliveryRequested]]
) -> dict[str, float]:
    """delivery id -> its request's ``recorded_at`` (epoch seconds)."""
    rows = await rt.pool.fetch(
        "SELECT id, extract(epoch FROM recorded_at)::float8 AS at FROM events WHERE id = ANY($1)",
        [r.id for r in reqs],
    )
    by_id = {r.id: r.data.delivery_id for r in reqs}
    return {by_id[row["id"]]: float(row["at"]) for row in rows}


def _arrivals(port: int | list[int], tag: str) -> dict[str, float]:
    """delivery id -> first arrival at the sink (or sinks), for this tag's requests."""
    out: dict[str, float] = {}
    for p in [port] if isinstance(port, int) else port:
        for at, path, delivery in _records(p):
            if path.startswith(f"/{tag}/") and (delivery not in out or at < out[delivery]):
                out[delivery] = at
    return out


def _arrived(port: int | list[int], tag: str, n: int) -> bool:
    """Whether ``n`` of this tag's deliveries arrived: counted by the sinks first (cheap
    while deliveries arrive), then by delivery id (a repeat counts once)."""
    ports = [port] if isinstance(port, int) else port
    return sum(_count(p, tag) for p in ports) >= n and len(_arrivals(port, tag)) >= n


def _figures(
    committed: dict[str, float], arrived: dict[str, float], expected: int
) -> dict[str, Any]:
    lat = [arrived[d] - committed[d] for d in arrived if d in committed]
    times = sorted(arrived.values())
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return summary_ms(lat) | {
        "expected": expected,
        "delivered": len(arrived),
        "complete": len(arrived) >= expected,
        "arrival_span_s": round(span, 3),
        "deliveries_per_s": round((len(times) - 1) / span, 1) if span else None,
    }


async def _fixed(
    rt: Runtime, port: int, opt: DeliveryOptions, body: bytes
) -> tuple[dict[str, Any], float]:
    """Requests at ``opt.rate`` for ``opt.seconds``, committed in the batches due each
    tick (a commit per request would cost the bench more than the dispatcher)."""
    tag = "fixed"
    url = f"http://127.0.0.1:{port}"
    count = int(opt.rate * opt.seconds)
    reqs = [_request(tag, i, url, body) for i in range(count)]
    start = time.perf_counter()
    sent = 0
    while sent < count:
        due = min(count, int((time.perf_counter() - start) * opt.rate) + 1)
        if due > sent:
            await rt.outbox.commit_and_publish(reqs[sent:due])
            sent = due
        await asyncio.sleep(max(0.0, start + sent / opt.rate - time.perf_counter()))
    offered_s = time.perf_counter() - start
    await _until(lambda: _arrived(port, tag, count), opt.settle_timeout)
    out = _figures(await _committed_at(rt, reqs), _arrivals(port, tag), count)
    out["offered_per_s"] = opt.rate
    out["committed_per_s"] = round(count / offered_s, 1)
    return out, offered_s


async def _backlog(
    rt: Runtime,
    system: System,
    servers: Servers,
    ports: list[int],
    opt: DeliveryOptions,
    body: bytes,
) -> dict[str, Any]:
    """A backlog committed with no dispatcher running, spread over ``ports`` (one
    destination each, so the per-destination cap lets the dispatcher's every slot work),
    then drained by one dispatcher."""
    tag = "backlog"
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    reqs = [_request(tag, i, urls[i % len(urls)], body) for i in range(opt.backlog)]
    for i in range(0, len(reqs), BATCH):
        await rt.outbox.commit_and_publish(reqs[i : i + BATCH])
    t0 = time.perf_counter()
    system.start("dispatcher")
    ready_s = time.perf_counter() - t0
    before, t1 = cpu.snapshot(), time.perf_counter()
    complete = await _until(lambda: _arrived(ports, tag, opt.backlog), opt.settle_timeout)
    after, wall = cpu.snapshot(), time.perf_counter() - t1
    roles = {"dispatcher": {system.pid("dispatcher")}, **_servers_of(servers)}
    used = cpu.usage(before, after, roles, solo={})
    out = _figures(await _committed_at(rt, reqs), _arrivals(ports, tag), opt.backlog)
    out["complete"] = complete and out["complete"]
    out["destinations"] = len(ports)
    out["dispatcher_ready_s"] = round(ready_s, 2)
    out["cpu_cores"] = used
    span = out["arrival_span_s"]
    busy = used.get("dispatcher", 0.0)
    if span and out["delivered"]:
        # CPU seconds the dispatcher spent (from readiness to the drain seen) per delivery.
        out["dispatcher_cpu_us_per_delivery"] = round(busy * wall / out["delivered"] * 1e6, 1)
        # The same for this run's Postgres and NATS (their own processes, not a neighbour's).
        for role in ("postgres", "nats"):
            if role in used:
                out[f"{role}_cpu_us_per_delivery"] = round(
                    used[role] * wall / out["delivered"] * 1e6, 1
                )
    return out


def _servers_of(servers: Servers) -> dict[str, set[int]]:
    """This run's Postgres (its postmaster; backends count with it) and nats-server pids,
    found by their data directory, so a machine shared with other runs does not blur them."""
    found: dict[str, set[int]] = {}
    base = str(servers.base)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in args]
        if not any(base in a for a in text):
            continue
        if any(a.endswith("postgres") for a in text[:1]) and "-D" in text:
            found.setdefault("postgres", set()).add(int(entry.name))
        elif any(a.endswith("nats-server") for a in text[:1]):
            found.setdefault("nats", set()).add(int(entry.name))
    return found


Post = Callable[[int, str], Awaitable[None]]
"""Sends one request: (worker number, URL)."""


def _httpx_post(made: list[httpx.AsyncClient], pick: Callable[[int], int], body: bytes) -> Post:
    async def post(w: int, url: str) -> None:
        r = await made[pick(w)].post(url, content=body, headers=HEADERS)
        r.raise_for_status()

    return post


def _dispatcher_post(
    made: list[httpclient.Client], pick: Callable[[int], int], body: bytes
) -> Post:
    """As an attempt sends: a request built, sent, and its answer read and let go of."""

    async def post(w: int, url: str) -> None:
        await post_as_attempt(made[pick(w)], url, httpclient.Headers(HEADERS), body)

    return post


def _aiohttp_post(session: aiohttp.ClientSession, body: bytes) -> Post:
    async def post(w: int, url: str) -> None:
        async with session.post(url, data=body, headers=HEADERS) as r:
            await r.read()
            r.raise_for_status()

    return post


async def clients(
    ports: list[int], *, seconds: float, in_flight: int, body: bytes
) -> dict[str, dict[str, Any]]:
    """Requests/s of the ways to hold the dispatcher's HTTP clients, ``in_flight`` at once
    over ``len(ports)`` destinations, every guarded variant with the SSRF guard (every
    connection's addresses checked), and two unguarded references: httpx with its own
    transport (httpcore), and a bare aiohttp session (what the dispatcher's transport
    sends with)."""
    urls = [f"http://127.0.0.1:{p}/clients" for p in ports]

    def guarded() -> httpclient.Client:
        return guarded_client(allow_networks=LOOPBACK, timeout=10.0)

    shared = [guarded()]
    pool = [guarded() for _ in range(4)]
    per_destination = [guarded() for _ in urls]
    plain = httpx.AsyncClient(
        timeout=10.0,
        trust_env=False,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    made: dict[str, Post] = {
        "one shared client": _dispatcher_post(shared, lambda w: 0, body),
        "a pool of 4 clients": _dispatcher_post(pool, lambda w: w // 4 % 4, body),
        "one client per destination": _dispatcher_post(
            per_destination, lambda w: w % len(urls), body
        ),
        "httpx with httpcore, no SSRF guard": _httpx_post([plain], lambda w: 0, body),
        "bare aiohttp session, no SSRF guard": _aiohttp_post(session, body),
    }
    names = list(made)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    try:
        for name in names:  # connections made before anything is measured
            await _drive(made[name], urls, 0.3, in_flight)
        # Short rounds, the order turning each round, so a burst of someone else's work on
        # a shared machine falls on every variant alike; ratios are paired by round.
        for r in range(ROUNDS):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name].append(await _drive(made[name], urls, seconds / ROUNDS, in_flight))
    finally:
        for c in [*shared, *pool, *per_destination]:
            await c.aclose()
        await plain.aclose()
        await session.close()
    first = runs[names[0]]
    return {
        name: {
            "req_per_s": round(statistics.median(rate for rate, _ in got), 1),
            "cpu_us_per_request": round(statistics.median(us for _, us in got), 1),
            "paired_ratio": round(
                statistics.median(a[0] / b[0] for a, b in zip(got, first, strict=True)), 2
            ),
            "rounds": [round(rate, 1) for rate, _ in got],
        }
        for name, got in runs.items()
    }


HEADERS = {"content-type": "application/json", "x-hookbus-delivery": "c"}


async def _drive(
    post: Post, urls: list[str], seconds: float, in_flight: int
) -> tuple[float, float]:
    """(requests/s, this process's CPU µs per request) over ``seconds``."""
    done = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(w: int) -> None:
        nonlocal done
        url = urls[w % len(urls)]
        while time.perf_counter() < deadline:
            await post(w, url)
            done += 1

    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    elapsed = time.perf_counter() - start
    return done / elapsed, (time.process_time() - cpu0) / max(1, done) * 1e6


async def run(
    servers: Servers,
    workdir: Path,
    opt: DeliveryOptions,
    sink_port: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    body = payloads.push_body(0)
    out: dict[str, Any] = {
        "rate": opt.rate,
        "seconds": opt.seconds,
        "backlog": opt.backlog,
        "body_bytes": len(body),
    }
    _reset(sink_port)
    extra = [start_sink(workdir) for _ in range(opt.destinations - 1)]
    ports = [sink_port] + [port for _, port in extra]
    try:
        with System(servers, workdir / "delivery", _config(), workers=1) as system:
            settings = system.settings(workdir)
            async with runtime(settings, "bench") as rt:
                system.start("dispatcher")
                log(f"delivery: {opt.rate:.0f}/s for {opt.seconds:.0f}s, one dispatcher")
                before = cpu.snapshot()
                fixed, _ = await _fixed(rt, sink_port, opt, body)
                used = cpu.usage(before, cpu.snapshot(), system.roles(), solo={})
                fixed["cpu_cores"] = used
                out["fixed"] = fixed
                system.stop()
                log(
                    f"delivery: a backlog of {opt.backlog} over {len(ports)} destinations,"
                    " then one dispatcher drains it"
                )
                out["saturation"] = await _backlog(rt, system, servers, ports, opt, body)
                system.stop()
        log(
            f"delivery: HTTP clients, {opt.client_in_flight} in flight over"
            f" {len(ports)} destinations"
        )
        out["clients"] = await clients(
            ports, seconds=opt.client_seconds, in_flight=opt.client_in_flight, body=body
        )
        out["clients_in_flight"] = opt.client_in_flight
        out["clients_destinations"] = len(ports)
    finally:
        stop([p for p, _ in extra])
    return out


def rows(r: dict[str, Any], ceiling: dict[str, Any] | None) -> list[Row]:
    fx, sat = r["fixed"], r["saturation"]
    top = (ceiling or {}).get("req_per_s")
    # The target: 2,000 deliveries/s, or 80 % of the client's own ceiling if that is lower.
    goal = min(DRAIN_GOAL, 0.8 * top) if top else DRAIN_GOAL
    complete = fx["complete"] and sat["complete"]
    out = [
        Row(f"delivery at {r['rate']:.0f}/s offered: delivered", fx["deliveries_per_s"],
            "deliv/s", float(r["rate"]), "offered"),
        Row(f"delivery at {r['rate']:.0f}/s: commit → sink, p50", fx["p50_ms"], "ms"),
        Row(f"delivery at {r['rate']:.0f}/s: commit → sink, p99", fx["p99_ms"], "ms"),
        Row(f"delivery at {r['rate']:.0f}/s: dispatcher CPU busy",
            fx["cpu_cores"].get("dispatcher"), "cores"),
        Row(f"delivery, backlog of {r['backlog']} over {sat.get('destinations', 1)}"
            " destinations: one dispatcher", sat["deliveries_per_s"],
            "deliv/s", top, "its client → sink", f"≥ {goal:,.0f}/s",
            goal is not None and sat["deliveries_per_s"] is not None
            and sat["deliveries_per_s"] >= goal),
        Row("delivery, backlog: dispatcher CPU per delivery",
            sat.get("dispatcher_cpu_us_per_delivery"), "µs"),
        Row("delivery, backlog: Postgres CPU per delivery",
            sat.get("postgres_cpu_us_per_delivery"), "µs"),
        Row("delivery, backlog: nats-server CPU per delivery",
            sat.get("nats_cpu_us_per_delivery"), "µs"),
        Row("delivery, backlog: commit → sink, p50 (waiting in the backlog)", sat["p50_ms"], "ms"),
        Row("delivery, backlog: commit → sink, p99", sat["p99_ms"], "ms"),
        Row("delivery: every request delivered", "yes" if complete else "no", "", None, "",
            "all", complete),
    ]  # fmt: skip
    shared = r["clients"].get("one shared client", {})
    for name, fig in r["clients"].items():
        label = f"delivery clients ({r['clients_in_flight']} in flight, {r['clients_destinations']} destinations)"
        out += [
            Row(f"{label}: {name}", fig["req_per_s"], "req/s", shared.get("req_per_s"),
                "one shared client"),
            Row(f"{label}: {name}, CPU per request", fig["cpu_us_per_request"], "µs",
                shared.get("cpu_us_per_request"), "one shared client"),
        ]  # fmt: skip
    for row in out:
        row.section = SECTION
    return out
