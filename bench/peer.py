"""hookbus against adnanh/webhook, side by side in one run, interleaved.

Both run at once for the whole phase: hookbus with every service (receiver, router,
executor, dispatcher) on the run's NATS and Postgres, adnanh/webhook as its one process.
Each measurement is a series of short rounds that alternate between the two (hookbus
first, then adnanh first, …), so a burst of other work on a shared machine lands on both
alike; figures are summed or pooled over a system's rounds. Requests are the same signed
2 KB GitHub pushes (payloads.py), each with its own ``X-GitHub-Delivery``; the action is
the same ``stamp.sh`` for both.

- CPU per matching webhook at ``cpu_rate``/s: every process of a system (hookbus: its
  four services, nats-server, the postmaster and every backend; adnanh: its process), the
  actions' own CPU left out (see procs.py), over the round until its work has ended.
- request → script started at ``latency_rate``/s: open loop, from each request's intended
  send time to the script's own ``$EPOCHREALTIME`` stamp, pooled over the rounds.
- saturation, verified and nothing runs: wrk on hookbus's ``quiet`` source (signature
  checked, event logged, routed against a rule that does not match) and on adnanh's
  ``quiet`` hook (signature checked first, then a ``ref`` that no push has): webhooks/s
  from wrk's start to the end of the work it caused (for hookbus the last routing record
  committed), and CPU per webhook of every process.
- idle: both measured over the same seconds with nothing sent; memory as PSS per process.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import adnanh, floor, payloads, procs, sides, wakecost
from .report import Row
from .sides import HOOKBUS_ORDER, AdnanhSide, HookbusSide, LoadRound, RateRound, Side
from .stats import summary_ms
from .system import Servers, System, source_config

T = TypeVar("T")
STAMP = Path(__file__).resolve().with_name("stamp.sh")
SECTION = "peer"


@dataclass
class PeerOptions:
    rounds: int
    round_s: float
    sat_round_s: float
    idle_s: float
    warmup_s: float
    cpu_rate: float
    latency_rate: float
    connections: int
    wrk_threads: int
    workers: int
    settle_timeout: float
    spin: float = 0.0015


def hookbus_config(stamps: Path) -> str:
    """Two sources with the same secret: ``github`` (its push to main runs stamp.sh) and
    ``quiet`` (a rule on a branch no push has: verified, logged, routed, nothing runs)."""
    return (
        source_config()
        + f"""
[sources.quiet]
kind = "github"
secrets = [{{ value = "{payloads.SECRET}" }}]

[[rules]]
name = "peer-push"
source = "github"
event = "push"
branch = "main"
actions = [{{ kind = "shell", command = ["{STAMP}"], payload = "none", timeout = 30, env = {{ BENCH_STAMPS = "{stamps}" }} }}]

[[rules]]
name = "peer-quiet"
source = "quiet"
event = "push"
branch = "never-matches"
actions = [{{ kind = "shell", command = ["{STAMP}"], payload = "none", timeout = 30, env = {{ BENCH_STAMPS = "{stamps}" }} }}]
"""
    )


def tag(name: str) -> str:
    return f"{name}{secrets.token_hex(3)}"


async def send_one(port: int, data: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return int(head[9:12])
    finally:
        writer.close()
        await writer.wait_closed()


async def checks(side: Side, signed: list[payloads.Signed], timeout: float) -> dict[str, Any]:
    """One matching push runs the action once; a quiet one and a forged one run nothing,
    and the forged one is refused: both really verify, both really match."""
    good = signed[0]
    forged = payloads.Signed(good.body, payloads.sign(good.body, "not-the-secret"))
    t = tag("chk")
    out: dict[str, Any] = {}
    out["match_status"] = await send_one(
        side.port, payloads.http_request("127.0.0.1", side.port, good, f"{t}-m", side.match_path)
    )
    out["quiet_status"] = await send_one(
        side.port, payloads.http_request("127.0.0.1", side.port, good, f"{t}-q", side.quiet_path)
    )
    out["forged_status"] = await send_one(
        side.port,
        payloads.http_request("127.0.0.1", side.port, forged, f"{t}-f", side.match_path),
    )
    # Drained (hookbus: every consumer; adnanh: no child left): whatever would run has.
    await side.settle(f"{t}-m", 1, timeout)
    stamped = set(sides.read_stamps(side.stamps, f"{t}-"))
    out["ran"] = sorted(stamped)
    out["ok"] = (
        out["match_status"] == 202
        and out["quiet_status"] in (200, 202)
        and not 200 <= out["forged_status"] < 300
        and stamped == {f"{t}-m"}
    )
    return out


async def interleaved(
    all_sides: Sequence[Side],
    rounds: int,
    fn: Callable[[Side], Awaitable[T]],
    between: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, list[T]]:
    """``rounds`` rounds of each side, alternating which goes first; ``between`` is awaited
    after each round of every side."""
    out: dict[str, list[T]] = {s.name: [] for s in all_sides}
    for r in range(rounds):
        order = list(all_sides) if r % 2 == 0 else list(all_sides)[::-1]
        for s in order:
            out[s.name].append(await fn(s))
        if between is not None:
            await between()
    return out


def _sum(usages: Sequence[procs.Usage]) -> procs.Usage:
    total = procs.Usage(0.0)
    for u in usages:
        total = total + u
    return total


def _us_per(cpu_s: float, n: int) -> float | None:
    return round(cpu_s / n * 1e6, 1) if n else None


def summarise_rate(rs: list[RateRound]) -> dict[str, Any]:
    use = _sum([r.usage for r in rs])
    n = sum(r.accepted for r in rs)
    return {
        "rounds": len(rs),
        "rate": rs[0].rate if rs else None,
        "accepted": n,
        "errors": sum(r.errors for r in rs),
        "missing_stamps": sum(r.missing_stamps for r in rs),
        "all_settled": all(r.settled for r in rs),
        "cpu_us_per_webhook": _us_per(use.total(), n),
        "cpu_us_per_webhook_by_process": {k: _us_per(v, n) for k, v in use.cpu_s.items()},
        "actions_cpu_us_per_webhook_excluded": _us_per(sum(use.children_s.values()), n),
        "wakeups_per_webhook": round(sum(use.wakes.values()) / n, 1) if n else None,
        "wakeups_per_webhook_by_process": {
            k: round(v / n, 1) if n else None for k, v in use.wakes.items()
        },
        "window_s": round(use.wall_s, 2),
        "machine_busy_cores": round(use.machine_busy_cores, 2),
        "machine_stolen_cores": round(use.machine_stolen_cores, 2),
        "cpu_from_ticks_of_processes": f"{use.coarse} of {use.coarse + use.precise}",
        "to_script_started": summary_ms([x for r in rs for x in r.to_stamp_s]),
        "to_http_response": summary_ms([x for r in rs for x in r.response_s]),
        "generator_send_lag": summary_ms([x for r in rs for x in r.send_lag_s]),
    }


def summarise_load(rs: list[LoadRound]) -> dict[str, Any]:
    use = _sum([r.usage for r in rs])
    n = sum(r.processed for r in rs)
    seconds = sum(r.seconds for r in rs)
    chains = [r.chain for r in rs if r.chain is not None]
    return {
        "rounds": len(rs),
        "processed": n,
        "seconds": round(seconds, 3),
        "webhooks_per_s": n / seconds if seconds else 0.0,
        "wrk_202_per_s": sum(r.wrk["status_202"] for r in rs)
        / max(1e-9, sum(r.wrk["duration_s"] for r in rs)),
        "errors": sum(r.wrk["status_other"] + r.wrk["socket_errors"] for r in rs),
        "actions_run": sum(r.stamps_added for r in rs),
        "all_settled": all(r.settled for r in rs),
        # Every 202 is in the log and every consumer drained it (routed, or acknowledged
        # with no record when no rule matched).
        "complete": (
            all(r.settled and r.chain.received >= r.wrk["status_202"] for r in rs if r.chain)
            if chains
            else None
        ),
        "cpu_us_per_webhook": _us_per(use.total(), n),
        "cpu_us_per_webhook_by_process": {k: _us_per(v, n) for k, v in use.cpu_s.items()},
        "machine_busy_cores": round(use.machine_busy_cores, 2),
        "machine_stolen_cores": round(use.machine_stolen_cores, 2),
        "cpu_from_ticks_of_processes": f"{use.coarse} of {use.coarse + use.precise}",
        "rounds_detail": [
            {"processed": r.processed, "seconds": round(r.seconds, 3), "wrk": r.wrk}
            | ({"received": r.chain.received, "routed": r.chain.routed} if r.chain else {})
            for r in rs
        ],
    }


IDLE_QUIET_S = 12.0
"""Seconds of quiet after the warm-up before idle is measured: every service's own
idle-time work has settled by then (its loop probe parks after 5 s without work, its
outbox relay backs off)."""


def summarise_idle(u: procs.Usage) -> dict[str, Any]:
    per_s = {k: round(v / u.wall_s * 1000, 3) for k, v in u.cpu_s.items()} if u.wall_s else {}
    return {
        "seconds": round(u.wall_s, 2),
        "cpu_ms_per_s": round(sum(per_s.values()), 3),
        "cpu_ms_per_s_by_process": per_s,
        "wakeups_per_s": round(sum(u.wakes.values()) / u.wall_s, 1) if u.wall_s else None,
        "wakeups_per_s_by_process": (
            {k: round(v / u.wall_s, 1) for k, v in u.wakes.items()} if u.wall_s else {}
        ),
        "machine_busy_cores": round(u.machine_busy_cores, 2),
        "machine_stolen_cores": round(u.machine_stolen_cores, 2),
        "cpu_from_ticks_of_processes": f"{u.coarse} of {u.coarse + u.precise}",
    }


def summarise_memory(m: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {
        "pss_mib": round(sum(v["pss_mib"] for v in m.values()), 1),
        "by_process": m,
    }


async def run(
    servers: Servers,
    workdir: Path,
    opt: PeerOptions,
    signed: list[payloads.Signed],
    log: Callable[[str], None],
) -> dict[str, Any]:
    if adnanh.available() is None:
        return {"skipped": adnanh.INSTALL_HINT}
    base = workdir / "peer"
    base.mkdir(parents=True, exist_ok=True)
    hb_stamps, ad_stamps = base / "hookbus-stamps.txt", base / "adnanh-stamps.txt"
    out: dict[str, Any] = {"adnanh_version": adnanh.version(), "options": vars(opt).copy()}
    with (
        System(servers, base / "hookbus", hookbus_config(hb_stamps), workers=opt.workers) as system,
        adnanh.Adnanh(base / "adnanh", STAMP, ad_stamps) as peer,
    ):
        system.start("receiver", "router", "executor", "dispatcher")
        peer.start()
        hb = HookbusSide(servers, system, hb_stamps)
        await hb.open()
        ad = AdnanhSide(peer)
        both: list[Side] = [hb, ad]
        try:
            out["checks"] = {s.name: await checks(s, signed, opt.settle_timeout) for s in both}
            data = {}
            for s in both:
                data[s.name] = base / f"{s.name}-quiet.bin"
                payloads.write_wrk_data(data[s.name], "127.0.0.1", s.port, signed, s.quiet_path)

            def rate_fn(
                rate: float, seconds: float, spin: float
            ) -> Callable[[Side], Awaitable[RateRound]]:
                async def fn(s: Side) -> RateRound:
                    return await sides.rate_round(
                        s, signed, tag("p" + s.name[0]), rate=rate, seconds=seconds,
                        spin=spin, settle_timeout=opt.settle_timeout,
                    )  # fmt: skip

                return fn

            def sat_fn(seconds: float) -> Callable[[Side], Awaitable[LoadRound]]:
                async def fn(s: Side) -> LoadRound:
                    return await sides.wrk_round(
                        s, data[s.name], tag("s" + s.name[0]), source="quiet", path=s.quiet_path,
                        seconds=seconds, connections=opt.connections, threads=opt.wrk_threads,
                        settle_timeout=opt.settle_timeout,
                    )  # fmt: skip

                return fn

            log(f"peer: warm-up ({opt.warmup_s:.0f}s of each load on each)")
            await interleaved(both, 1, rate_fn(opt.latency_rate, opt.warmup_s, 0.0))
            await interleaved(both, 1, sat_fn(max(1.0, opt.warmup_s)))

            log(f"peer: idle, both at once, {opt.idle_s:.0f}s after {IDLE_QUIET_S:.0f}s of quiet")
            # Idle is the steady state with nothing sent: the warm-up's tail (checkpoints,
            # flushes, outbox deletes, relay rounds backing off, loop probes parking) first.
            await asyncio.sleep(IDLE_QUIET_S)
            idle = await sides.idle(both, opt.idle_s)
            out["idle"] = {k: summarise_idle(u) for k, u in idle.items()}
            out["memory_idle"] = {s.name: summarise_memory(procs.memory(s.groups())) for s in both}

            nats_idle = out["idle"]["hookbus"]["cpu_ms_per_s_by_process"].get("nats-server", 0.0)

            async def floor_round(rate: float, seconds: float) -> dict[str, Any]:
                assert servers.nats.proc is not None
                return await floor.measure(
                    servers.nats.url, servers.nats.proc.pid, servers.database_url,
                    rate=rate, seconds=seconds, nats_idle_ms_per_s=nats_idle,
                )  # fmt: skip

            log(
                f"peer: the durable parts' floor at {opt.latency_rate:.0f}/s, {2 * opt.round_s:.0f}s"
            )
            out["floor"] = {"latency": await floor_round(opt.latency_rate, 2 * opt.round_s)}

            # The floor and the price of a wake-up are measured between the CPU rounds, each
            # round beside a round of both systems: this machine's speed can change from one
            # minute to the next, and they are read as ratios to those rounds' figures.
            log(
                f"peer: CPU at {opt.cpu_rate:.0f}/s, {opt.rounds} x {opt.round_s:.0f}s rounds "
                "each, the durable parts' floor and a bare Python reader's wake-ups between them"
            )
            floors: list[dict[str, Any]] = []
            wakes: list[float] = []
            count = max(50, int(opt.cpu_rate * opt.round_s))

            async def floor_and_wakes() -> None:
                floors.append(await floor_round(opt.cpu_rate, opt.round_s))
                wakes.append(await wakecost.measure(rate=opt.cpu_rate, count=count))

            cpu = await interleaved(
                both, opt.rounds, rate_fn(opt.cpu_rate, opt.round_s, opt.spin), floor_and_wakes
            )
            out["cpu_at_rate"] = {k: summarise_rate(v) for k, v in cpu.items()}
            out["floor"]["cpu"] = floor.combine(floors)
            out["wake_cost"] = {
                "rate": opt.cpu_rate,
                "count": count * len(wakes),
                "rounds": [round(w, 1) for w in wakes],
                "cpu_us_per_wakeup": round(sum(wakes) / len(wakes), 1),
            }

            log(
                f"peer: latency at {opt.latency_rate:.0f}/s, {opt.rounds} x {opt.round_s:.0f}s rounds each"
            )
            lat = await interleaved(
                both, opt.rounds, rate_fn(opt.latency_rate, opt.round_s, opt.spin)
            )
            out["latency_at_rate"] = {k: summarise_rate(v) for k, v in lat.items()}

            log(
                f"peer: saturation, nothing matches, {opt.rounds} x {opt.sat_round_s:.0f}s rounds each"
            )
            sat = await interleaved(both, opt.rounds, sat_fn(opt.sat_round_s))
            out["saturation_quiet"] = {k: summarise_load(v) for k, v in sat.items()}
            out["memory_end"] = {s.name: summarise_memory(procs.memory(s.groups())) for s in both}
        finally:
            await hb.close()
    return out


# ------------------------------------------------------------------------------ table


SHORT = {
    "receiver": "recv", "router": "route", "executor": "exec", "dispatcher": "disp",
    "nats-server": "nats", "postgres": "pg",
}  # fmt: skip


def _by_process(d: dict[str, float | None], unit: str, order: Sequence[str]) -> str:
    """``recv 290 · route 480 · exec 3.4 · disp 2.7 · nats 156 · pg 381 µs``"""
    keys = [k for k in order if k in d] + [k for k in d if k not in order]
    parts = []
    for k in keys:
        v = d[k]
        if v is None:
            continue
        name = SHORT.get(k, k)
        parts.append(f"{name} {v:.0f}" if v >= 10 else f"{name} {v:.1f}")
    return (" · ".join(parts) + f" {unit}").rstrip()


def _le(value: Any, ceiling: Any, factor: float) -> bool | None:
    if not isinstance(value, int | float) or not isinstance(ceiling, int | float) or not ceiling:
        return None
    return bool(value <= factor * ceiling)


def need(summary: dict[str, Any]) -> float | None:
    """Cores a rate needs: CPU per webhook at that rate x the rate."""
    us = summary.get("cpu_us_per_webhook")
    return round(us * summary["rate"] / 1e6, 3) if us is not None else None


def rows(p: dict[str, Any]) -> list[Row]:
    if "skipped" in p:
        return [Row("peer: adnanh/webhook", "skipped: " + p["skipped"], section=SECTION)]
    hb, ad = "hookbus", "adnanh"

    def row(figure: str, value: Any, ceiling: Any, unit: str, target: str = "",
            met: bool | None = None) -> Row:  # fmt: skip
        return Row(f"peer: {figure}", value, unit, ceiling, "", target, met, True, SECTION)

    c, lt, s = p["cpu_at_rate"], p["latency_at_rate"], p["saturation_quiet"]
    i, m, me = p["idle"], p["memory_idle"], p["memory_end"]
    crate, lrate = c[hb]["rate"], lt[hb]["rate"]
    cpu_hb, cpu_ad = c[hb]["cpu_us_per_webhook"], c[ad]["cpu_us_per_webhook"]
    l50 = (lt[hb]["to_script_started"]["p50_ms"], lt[ad]["to_script_started"]["p50_ms"])
    l99 = (lt[hb]["to_script_started"]["p99_ms"], lt[ad]["to_script_started"]["p99_ms"])
    sat_hb, sat_ad = s[hb]["cpu_us_per_webhook"], s[ad]["cpu_us_per_webhook"]
    idle_hb = i[hb]["cpu_ms_per_s"]
    checks_ok = all(v["ok"] for v in p["checks"].values())
    complete = (
        c[hb]["missing_stamps"] == 0 and c[ad]["missing_stamps"] == 0
        and lt[hb]["missing_stamps"] == 0 and lt[ad]["missing_stamps"] == 0
        and s[hb]["actions_run"] == 0 and s[ad]["actions_run"] == 0
        and bool(s[hb]["complete"])
        and all(x[k]["errors"] == 0 and x[k]["all_settled"] for x in (c, lt, s) for k in (hb, ad))
    )  # fmt: skip
    return [
        row("forged signature refused, quiet runs nothing, push runs once",
            "yes" if checks_ok else "no", None, "", "both", checks_ok),
        row(f"CPU per matching webhook at {crate:.0f}/s, every process, actions excluded",
            cpu_hb, cpu_ad, "µs", "≤ 3x", _le(cpu_hb, cpu_ad, 3)),
        row("  hookbus by process", _by_process(c[hb]["cpu_us_per_webhook_by_process"], "µs",
            HOOKBUS_ORDER), None, ""),
        *floor_rows(p.get("floor"), cpu_hb, cpu_ad, l50[1]),
        row(f"wake-ups per matching webhook at {crate:.0f}/s, every process (times a "
            "thread slept and woke)", c[hb].get("wakeups_per_webhook"),
            c[ad].get("wakeups_per_webhook"), ""),
        row("  hookbus by process", _by_process(
            c[hb].get("wakeups_per_webhook_by_process", {}), "", HOOKBUS_ORDER), None, ""),
        *wake_rows(p.get("wake_cost"), c[hb]),
        row("  the actions' own CPU per webhook (not counted above)",
            c[hb]["actions_cpu_us_per_webhook_excluded"],
            c[ad]["actions_cpu_us_per_webhook_excluded"], "µs"),
        row(f"CPU that {lrate:.0f} webhooks/s need, every process (the machine has "
            f"{os.cpu_count()} cores)", need(lt[hb]), need(lt[ad]), "cores"),
        row(f"request → script started at {crate:.0f}/s, p50",
            c[hb]["to_script_started"]["p50_ms"], c[ad]["to_script_started"]["p50_ms"], "ms"),
        row(f"request → script started at {crate:.0f}/s, p99",
            c[hb]["to_script_started"]["p99_ms"], c[ad]["to_script_started"]["p99_ms"], "ms"),
        row(f"request → script started at {lrate:.0f}/s, p50", l50[0], l50[1], "ms", "≤ 2x",
            _le(l50[0], l50[1], 2)),
        row(f"request → script started at {lrate:.0f}/s, p99", l99[0], l99[1], "ms", "≤ 4x",
            _le(l99[0], l99[1], 4)),
        row(f"request → HTTP answer at {lrate:.0f}/s, p50",
            lt[hb]["to_http_response"]["p50_ms"], lt[ad]["to_http_response"]["p50_ms"], "ms"),
        row("saturation, verified, nothing runs: webhooks/s (whole system)",
            s[hb]["webhooks_per_s"], s[ad]["webhooks_per_s"], "req/s"),
        row("saturation: CPU per non-matching webhook, every process", sat_hb, sat_ad, "µs",
            "≤ 5x", _le(sat_hb, sat_ad, 5)),
        row("  hookbus by process", _by_process(s[hb]["cpu_us_per_webhook_by_process"], "µs",
            HOOKBUS_ORDER), None, ""),
        row("idle CPU, every process", idle_hb, i[ad]["cpu_ms_per_s"], "ms/s", "≤ 5 ms/s",
            idle_hb <= 5.0),
        row("  hookbus idle by process", _by_process(i[hb]["cpu_ms_per_s_by_process"], "ms/s",
            HOOKBUS_ORDER), None, ""),
        row("idle wake-ups per second, every process", i[hb].get("wakeups_per_s"),
            i[ad].get("wakeups_per_s"), "/s"),
        row("  hookbus by process", _by_process(i[hb].get("wakeups_per_s_by_process", {}),
            "/s", HOOKBUS_ORDER), None, ""),
        row("memory (PSS) idle, every process", m[hb]["pss_mib"], m[ad]["pss_mib"], "MiB",
            "reported"),
        row("  hookbus by process", _by_process(
            {k: v["pss_mib"] for k, v in m[hb]["by_process"].items()}, "MiB", HOOKBUS_ORDER),
            None, ""),
        row("memory (PSS) after the load, every process", me[hb]["pss_mib"], me[ad]["pss_mib"],
            "MiB", "reported"),
        row("every request answered, every action ran once, none for the quiet ones",
            "yes" if complete else "no", None, "", "all", complete),
    ]  # fmt: skip


PYTHON_SERVICES = ("receiver", "router", "executor", "dispatcher")


def wake_rows(w: dict[str, Any] | None, hookbus: dict[str, Any]) -> list[Row]:
    """What a wake-up costs here (wakecost.py), and what the Python services' wake-ups per
    webhook come to at that price, as a share of their CPU per webhook."""
    if not w:
        return []
    each = w["cpu_us_per_wakeup"]
    wakes = hookbus.get("wakeups_per_webhook_by_process", {})
    cpu = hookbus.get("cpu_us_per_webhook_by_process", {})
    n = sum(wakes.get(name, 0.0) for name in PYTHON_SERVICES)
    spent = sum(cpu.get(name, 0.0) for name in PYTHON_SERVICES)
    priced = n * each
    share = f" ({100 * priced / spent:.0f} % of their {spent:,.0f} µs)" if spent > 0 else ""
    return [
        Row(f"peer:   a bare Python process (uvloop) woken {w['rate']:.0f} times a second: CPU "
            "per wake-up, reading 100 bytes and nothing else", each, "µs", section=SECTION),
        Row(f"peer:   the Python services' {n:.1f} wake-ups per webhook at that price",
            f"{priced:,.0f} µs{share}", section=SECTION),
    ]  # fmt: skip


def floor_rows(
    f: dict[str, Any] | None, cpu_hb: Any, cpu_ad: Any, started_p50_ad: Any
) -> list[Row]:
    """The durable parts' floor (floor.py) beside adnanh's figures and the targets' room."""
    if not f:
        return []
    c, lt = f["cpu"], f["latency"]
    low = c["cpu_us_per_webhook"]
    room = 3 * cpu_ad - low if isinstance(cpu_ad, int | float) else None
    if room is not None and room <= 0:
        room = None  # no room: no ratio against it either
        above_of = "hookbus above that floor (the floor alone is above the 3x target)"
    else:
        above_of = "hookbus above that floor, against the room the 3x target leaves"
    above = cpu_hb - low if isinstance(cpu_hb, int | float) else None
    parts = f"{c['commits']:g} commits, {c['publishes']:g} publishes, {c['takes']:g} takes"
    return [
        Row(f"peer:   floor: nats-server and Postgres alone, for its {parts} at "
            f"{c['rate']:.0f}/s (no Python)", low, "µs", cpu_ad, "", "", None, True, SECTION),
        Row("peer:     by process", _by_process(c["cpu_us_per_webhook_by_process"], "µs",
            HOOKBUS_ORDER), section=SECTION),
        Row(f"peer:   {above_of}", above, "µs", room, "3 x adnanh - floor", "", None, True,
            SECTION),
        Row(f"peer:   floor: its first commit → the commit a job's start waits for, at "
            f"{lt['rate']:.0f}/s, p50", lt["to_job_started"]["p50_ms"], "ms", started_p50_ad,
            "", "", None, True, SECTION),
    ]  # fmt: skip
