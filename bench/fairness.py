"""Noisy neighbours and limits across replicas, measured at a local sink.

1. **Fairness.** A quiet tenant's deliveries (``--fairness-rate`` a second, to a URL on
   the sink) are timed from their commit (taken just before it) to their arrival at the
   sink: first alone, then right after a second tenant flooded ``--fairness-flood``
   deliveries at once. The figure is the ratio of the quiet tenant's p99 with the flood
   (its deliveries sent before the flood's last arrival) to its p99 alone (before and
   after the flood, together), in the same run (target: at most 2x). Beside it, the
   dispatcher's part alone: from the moment the request is on the bus (committed and
   published) to the arrival, split at the moment its request is sent.
2. **Limits.** Three dispatcher replicas on one durable deliver a backlog to an endpoint
   with ``rate = "50/s"``, ``burst = 10``, sized to last 30 s at that rate
   (``--limit-seconds``): the rate the sink saw after the burst, between its first and
   last arrival, against the configured rate (target: within ±10 %: three replicas do
   not send three times it), and the most in any 2 s window (at most 2 x rate + burst,
   and a tenth for arrival jitter).

Deliveries are requested straight into the log and onto the bus (as the router records
them), so only the dispatcher's work is measured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from hookbus_cli.embedded import free_port
from hookbus_common import events as ev
from hookbus_common.service import runtime

from .report import Row
from .stats import summary_ms
from .system import Servers, System, start_sink, stop, wait_http

SECTION = "fairness"
LIMIT_RATE = 50
LIMIT_BURST = 10


@dataclass
class FairnessOptions:
    flood: int = 2000
    quiet_rate: float = 20.0
    quiet_seconds: float = 10.0
    limit_seconds: float = 30.0
    limit_replicas: int = 3
    settle_timeout: float = 120.0


def _config(sink_port: int) -> str:
    return f"""
[log]
level = "INFO"

[dispatcher]
allow_networks = ["127.0.0.0/8", "::1/128"]

[endpoints.limited]
url = "http://127.0.0.1:{sink_port}/l"
allow_private = true
rate = "{LIMIT_RATE}/s"
burst = {LIMIT_BURST}
"""


def _request(tenant: str, n: int, *, url: str = "", endpoint: str | None = None) -> ev.Event[Any]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=f"dlv_{tenant}_{n}", rule="bench", webhook_id=f"evt_{tenant}_{n}",
            url=url, body=msgspec.Raw(b'{"bench": true}'), tenant=tenant, endpoint=endpoint,
            headers={"content-type": "application/json"},
        ),
        source="/bench",
        tenant=tenant,
    )  # fmt: skip


def _records(port: int) -> list[tuple[float, str, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_records", timeout=10) as resp:
        text = resp.read().decode()
    return [tuple(json.loads(line)) for line in text.splitlines() if line]


def _count(port: int, segment: str) -> int:
    """Requests that came to the sink on paths under ``/<segment>`` (cheap to ask while
    deliveries arrive, unlike the records)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_count/{segment}", timeout=10) as resp:
        return int(resp.read())


def _reset(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_reset", timeout=10):
        pass


def start_dispatchers(system: System, n: int) -> list[subprocess.Popen[bytes]]:
    procs, ports = [], []
    for i in range(1, n + 1):
        port = free_port()
        env = {**system.env, "HOOKBUS_DISPATCHER__HEALTH_PORT": str(port)}
        argv = [sys.executable, "-m", "hookbus_dispatcher", "--config", str(system.config)]
        with open(system.workdir / f"dispatcher-{i}.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=system.workdir
                )
            )
        ports.append(port)
    try:
        for i, (proc, port) in enumerate(zip(procs, ports, strict=True), 1):
            wait_http(f"http://127.0.0.1:{port}/readyz", proc, f"dispatcher-{i}")
    except BaseException:
        stop(procs)
        raise
    return procs


async def _until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def _quiet_p99(
    rt: Any, port: int, opt: FairnessOptions, tag: str, flood: int
) -> dict[str, Any]:
    """Flood (if any), then the quiet tenant at its rate; the quiet tenant's latencies."""
    _reset(port)
    url = f"http://127.0.0.1:{port}"
    if flood:
        reqs = [_request(f"flood{tag}", i, url=f"{url}/f/{i}") for i in range(flood)]
        for i in range(0, flood, 250):
            await rt.outbox.commit_and_publish(reqs[i : i + 250])
    sent: dict[str, float] = {}  # before its commit
    on_bus: dict[str, float] = {}  # committed and published
    count = int(opt.quiet_rate * opt.quiet_seconds)
    start = time.perf_counter()
    for i in range(count):
        due = start + i / opt.quiet_rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        # Its own endpoint, as tenants have (here: the sink by another name).
        req = _request(f"quiet{tag}", i, url=f"http://localhost:{port}/q/{i}")
        sent[req.data.delivery_id] = time.time()
        await rt.outbox.commit_and_publish([req])
        on_bus[req.data.delivery_id] = time.time()

    def arrived() -> bool:
        return _count(port, "q") >= count and _count(port, "f") >= flood

    complete = await _until(arrived, opt.settle_timeout)
    recs = _records(port)
    floods = sorted(r[0] for r in recs if r[1].startswith("/f/"))
    # Beside a flood, only what was sent while it was still being delivered counts.
    until = floods[-1] if floods else float("inf")
    quiet = [
        r[0] - sent[r[2]]
        for r in recs
        if r[1].startswith("/q/") and r[2] in sent and sent[r[2]] <= until
    ]
    arrivals = {r[2]: r[0] for r in recs if r[1].startswith("/q/")}
    counted = {d: t for d, t in on_bus.items() if d in arrivals and sent[d] <= until}
    dispatcher = [arrivals[d] - t for d, t in counted.items()]
    before_send, on_the_wire = await _split(rt, counted, arrivals)
    out = summary_ms(quiet) | {
        "complete": complete,
        "latencies": quiet,
        "dispatcher": dispatcher,
        "before_send": before_send,
        "on_the_wire": on_the_wire,
    }
    if floods:
        out["flood_drain_s"] = round(floods[-1] - floods[0], 2)
    return out


# When each quiet delivery's request went out: its attempt's time (taken as the answer
# came) less the attempt's duration.
_SENT_AT = """
SELECT data->>'delivery_id' AS id,
       extract(epoch FROM time)::float8 - (data->>'duration_ms')::float8 / 1000 AS sent_at
FROM events WHERE type = $1 AND data->>'delivery_id' = ANY($2::text[])
  AND (data->>'attempt')::int = 1
"""


async def _split(
    rt: Any, on_bus: dict[str, float], arrivals: dict[str, float]
) -> tuple[list[float], list[float]]:
    """Where the dispatcher's part of each delivery went, in seconds: from the moment its
    request was on the bus until the dispatcher sent it (reading it, its turn, where it
    stands, building it), and from there until the sink had it."""
    rows = await rt.pool.fetch(_SENT_AT, ev.DeliveryAttempted.TYPE, list(on_bus))
    before, wire = [], []
    for row in rows:
        d = row["id"]
        before.append(row["sent_at"] - on_bus[d])
        wire.append(arrivals[d] - row["sent_at"])
    return before, wire


def _most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    most, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + window:
            j += 1
        most = max(most, j - i)
    return most


async def run(
    servers: Servers, workdir: Path, opt: FairnessOptions, log: Callable[[str], None]
) -> dict[str, Any]:
    sink_proc, port = start_sink(workdir)
    out: dict[str, Any] = {"flood": opt.flood, "quiet_rate": opt.quiet_rate}
    try:
        with System(servers, workdir / "fairness", _config(port), workers=1) as system:
            settings = system.settings(workdir)
            async with runtime(settings, "bench") as rt:
                system.start("dispatcher")
                # Warm up first (connections, caches), so start-up is not taken for "alone".
                await _quiet_p99(rt, port, dataclasses.replace(opt, quiet_seconds=1.0), "w", 0)
                log(f"fairness: the quiet tenant alone at {opt.quiet_rate:.0f}/s")
                before = await _quiet_p99(rt, port, opt, "a", 0)
                log(f"fairness: the quiet tenant beside a flood of {opt.flood}")
                flooded = await _quiet_p99(rt, port, opt, "b", opt.flood)
                log("fairness: the quiet tenant alone again")
                after = await _quiet_p99(rt, port, opt, "c", 0)
                # Alone before and after the flood together: a busy moment of a shared
                # machine weighs on the reference less, and it has twice the samples.
                flooded.pop("latencies")
                flooded["before_send"] = summary_ms(flooded["before_send"])
                flooded["on_the_wire"] = summary_ms(flooded["on_the_wire"])
                flooded["dispatcher"] = summary_ms(flooded["dispatcher"])
                out["flooded"] = flooded
                out["alone"] = summary_ms(before.pop("latencies") + after.pop("latencies")) | {
                    "complete": before["complete"] and after["complete"],
                    "p99_before_ms": before["p99_ms"],
                    "p99_after_ms": after["p99_ms"],
                    "before_send": summary_ms(before.pop("before_send") + after.pop("before_send")),
                    "on_the_wire": summary_ms(before.pop("on_the_wire") + after.pop("on_the_wire")),
                    "dispatcher": summary_ms(before.pop("dispatcher") + after.pop("dispatcher")),
                }
                system.stop()
                alone, flooded = out["alone"]["p99_ms"], out["flooded"]["p99_ms"]
                out["p99_ratio"] = round(flooded / alone, 2) if alone else None

                backlog = int(LIMIT_RATE * opt.limit_seconds) + LIMIT_BURST
                n = opt.limit_replicas
                log(f"limits: {backlog} deliveries, {n} dispatchers, {LIMIT_RATE}/s")
                _reset(port)
                reqs = [_request("default", i, endpoint="limited") for i in range(backlog)]
                for i in range(0, len(reqs), 250):
                    await rt.outbox.commit_and_publish(reqs[i : i + 250])
                procs = start_dispatchers(system, n)
                try:

                    def drained() -> bool:
                        return _count(port, "l") >= backlog

                    complete = await _until(drained, opt.limit_seconds * 2 + opt.settle_timeout)
                finally:
                    stop(procs)
                times = sorted(r[0] for r in _records(port) if r[1] == "/l")
                span = times[-1] - times[0] if len(times) > 1 else 0.0
                out["limits"] = {
                    "replicas": n,
                    "seconds": round(span, 1),
                    "configured_per_s": LIMIT_RATE,
                    "burst": LIMIT_BURST,
                    "delivered": len(times),
                    "complete": complete,
                    # Beyond the burst, which the bucket lets go at once.
                    "sent_per_s": round((len(times) - LIMIT_BURST) / span, 1) if span else None,
                    "most_in_2s": _most_in_window(times, 2.0),
                }
    finally:
        stop([sink_proc])
    return out


def _split_rows(alone: dict[str, Any], flooded: dict[str, Any]) -> list[Row]:
    """The dispatcher's part of the quiet tenant's latency, and where it went, beside the
    flood against alone."""
    out = []
    for key, what in (("dispatcher", "on the bus → sink (the dispatcher's part)"),
                      ("before_send", "on the bus → its request sent"),
                      ("on_the_wire", "request sent → at the sink")):  # fmt: skip
        a, f = alone.get(key), flooded.get(key)
        if not a or not f or not a.get("count") or not f.get("count"):
            continue
        for p in ("p50", "p99"):
            out.append(Row(f"fairness: quiet {what}, {p} beside the flood", f[f"{p}_ms"], "ms",
                           a[f"{p}_ms"], "alone", multiple=True))  # fmt: skip
    return out


def rows(r: dict[str, Any]) -> list[Row]:
    alone, flooded, lim = r["alone"], r["flooded"], r["limits"]
    ratio = r.get("p99_ratio")
    sent = lim["sent_per_s"]
    out = [
        Row(f"fairness: quiet tenant at {r['quiet_rate']:.0f}/s alone, commit → sink, p99",
            alone["p99_ms"], "ms"),
        Row(f"fairness: the same beside a flood of {r['flood']} (drained in "
            f"{flooded.get('flood_drain_s', '?')} s; {flooded.get('count')} sent meanwhile), p99",
            flooded["p99_ms"], "ms",
            alone["p99_ms"], "alone"),
        Row("fairness: quiet p99 with the flood / alone", ratio, "x", None, "", "≤ 2x",
            ratio is not None and ratio <= 2.0),
        Row("fairness: quiet p50 beside the flood", flooded["p50_ms"], "ms", alone["p50_ms"],
            "alone", multiple=True),
        *_split_rows(alone, flooded),
        Row(f"limits: {lim['replicas']} dispatchers, endpoint rate {lim['configured_per_s']}/s:"
            f" sent over {lim['seconds']} s (after the burst)",
            sent, "req/s", float(lim["configured_per_s"]), "configured", "within ±10 %",
            sent is not None and abs(sent / lim["configured_per_s"] - 1) <= 0.10),
        Row("limits: most arriving in any 2 s", float(lim["most_in_2s"]), "req",
            float(2 * lim["configured_per_s"] + lim["burst"]), "2 x rate + burst",
            "≤ 2 x rate + burst (+10 %: arrival jitter)",
            lim["most_in_2s"] <= (2 * lim["configured_per_s"] + lim["burst"]) * 1.1),
        Row("fairness and limits: every delivery arrived",
            "yes" if alone["complete"] and flooded["complete"] and lim["complete"] else "no",
            "", None, "", "all", alone["complete"] and flooded["complete"] and lim["complete"]),
    ]  # fmt: skip
    for row in out:
        row.section = SECTION
    return out
