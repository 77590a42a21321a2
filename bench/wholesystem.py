"""hookbus as a whole at saturation: every service running (receiver, router, executor,
dispatcher) on the run's NATS and Postgres, and the CPU each process spends per webhook,
Postgres and NATS included.

Two rule sets, on two sources of one installation:

- ``quiet``: three rules, none of which matches a push to main (another branch, another
  event, another repository): every webhook is verified, logged, published and routed
  (acknowledged with no record: nothing matched), and nothing runs. wrk for the phase's
  seconds, then the bench waits until no consumer has a message pending; webhooks/s =
  webhooks logged ÷ (wrk's start → the router's consumer drained).
- ``github``: one rule matching every push, its action ``/bin/true`` with no payload (the
  cheapest action there is: the figure is hookbus's cost, not the action's). The pipeline
  is slower than the receiver (an action per webhook), so wrk sends a burst of a fixed
  number of webhooks and the bench waits for every job to finish; jobs/s = jobs finished
  ÷ (wrk's start → the last job's terminal event committed).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import payloads, sides
from .peer import _by_process, summarise_load
from .report import Row
from .sides import HOOKBUS_ORDER, HookbusSide
from .system import Servers, System, source_config

SECTION = "system"
CHEAP_ACTION = "/bin/true"


@dataclass
class SystemOptions:
    seconds: float
    burst: int
    warmup_s: float
    connections: int
    wrk_threads: int
    workers: int
    settle_timeout: float


def config() -> str:
    quiet_rules = "".join(
        f"""
[[rules]]
name = "quiet-{name}"
source = "quiet"
{match}
actions = [{{ kind = "shell", command = ["{CHEAP_ACTION}"], payload = "none" }}]
"""
        for name, match in (
            ("release", 'branch = "release/*"'),
            ("tags", 'event = "create"'),
            ("other-repo", 'repository = "acme/other"'),
        )
    )
    return (
        source_config()
        + f"""
[sources.quiet]
kind = "github"
secrets = [{{ value = "{payloads.SECRET}" }}]

[[rules]]
name = "every-push"
source = "github"
actions = [{{ kind = "shell", command = ["{CHEAP_ACTION}"], payload = "none", timeout = 30 }}]
"""
        + quiet_rules
    )


async def run(
    servers: Servers,
    workdir: Path,
    opt: SystemOptions,
    signed: list[payloads.Signed],
    log: Callable[[str], None],
) -> dict[str, Any]:
    base = workdir / "system"
    out: dict[str, Any] = {"cheap_action": CHEAP_ACTION, "burst": opt.burst}
    with System(servers, base, config(), workers=opt.workers) as system:
        system.start("receiver", "router", "executor", "dispatcher")
        hb = HookbusSide(servers, system, base / "stamps.txt")
        await hb.open()
        try:
            quiet_data, all_data = base / "quiet.bin", base / "github.bin"
            payloads.write_wrk_data(quiet_data, "127.0.0.1", hb.port, signed, hb.quiet_path)
            payloads.write_wrk_data(all_data, "127.0.0.1", hb.port, signed, hb.match_path)

            async def load(
                quiet: bool, name: str, seconds: float, burst: int = 10**7
            ) -> sides.LoadRound:
                return await sides.wrk_round(
                    hb, quiet_data if quiet else all_data, name + secrets.token_hex(3),
                    source="quiet" if quiet else "github",
                    path=hb.quiet_path if quiet else hb.match_path, seconds=seconds,
                    connections=opt.connections, threads=opt.wrk_threads,
                    settle_timeout=opt.settle_timeout, max_requests=burst,
                    count="received" if quiet else "finished",
                )  # fmt: skip

            log("system: warm-up")
            await load(True, "sysw", max(1.0, opt.warmup_s))
            await load(False, "sysw", 1.0, max(50, opt.burst // 10))
            log(f"system: saturation, nothing matches, {opt.seconds:.0f}s + drain")
            quiet = await load(True, "sysq", opt.seconds)
            out["nothing_matches"] = summarise_load([quiet])
            log(f"system: a burst of {opt.burst} webhooks, each running {CHEAP_ACTION}")
            every = await load(False, "sysa", 2.0, opt.burst)
            s = summarise_load([every])
            s["actions_cpu_us_per_webhook_excluded"] = (
                round(sum(every.usage.children_s.values()) / every.processed * 1e6, 1)
                if every.processed
                else None
            )
            assert every.chain is not None
            s["jobs"] = {
                "received": every.chain.received, "routed": every.chain.routed,
                "finished": every.chain.finished, "failed": every.chain.failed,
            }  # fmt: skip
            s["complete"] = (
                every.chain.finished == every.chain.received == every.chain.routed
                and every.chain.failed == 0
            )
            out["every_webhook_runs"] = s
        finally:
            await hb.close()
    return out


def rows(r: dict[str, Any]) -> list[Row]:
    q, a = r["nothing_matches"], r["every_webhook_runs"]
    ok = bool(q["complete"]) and q["actions_run"] == 0 and bool(a["complete"])
    ok = ok and q["errors"] == 0 and a["errors"] == 0 and q["all_settled"] and a["all_settled"]
    rows_ = [
        Row("system, nothing matches: webhooks/s (wrk start → router drained)",
            q["webhooks_per_s"], "req/s", q["wrk_202_per_s"], "receiver's 202s/s"),
        Row("system, nothing matches: CPU per webhook, every process",
            q["cpu_us_per_webhook"], "µs"),
        Row("  by process", _by_process(q["cpu_us_per_webhook_by_process"], "µs", HOOKBUS_ORDER)),
        Row(f"system, every webhook runs {CHEAP_ACTION}: jobs/s (burst of {r['burst']})",
            a["webhooks_per_s"], "jobs/s"),
        Row("system, every webhook runs: CPU per webhook, every process, action excluded",
            a["cpu_us_per_webhook"], "µs"),
        Row("  by process", _by_process(a["cpu_us_per_webhook_by_process"], "µs", HOOKBUS_ORDER)),
        Row("  the action's own CPU per webhook (not counted above)",
            a["actions_cpu_us_per_webhook_excluded"], "µs"),
        Row("system: every webhook routed, every job finished, no errors",
            "yes" if ok else "no", "", None, "", "all", ok),
    ]  # fmt: skip
    for row in rows_:
        row.section = SECTION
    return rows_
