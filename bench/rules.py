"""What routing costs, and whether a rule set of 1,000 makes routing the bottleneck.

1. **In-process.** The router's handler, called in this process (no NATS, no Postgres) on
   recorded-looking events, with 1, 100 and 1,000 rules of a realistic mix: CPU µs per
   event, next to decoding the event alone (the least a router does with a message).
2. **Router processes.** Routers on a nats-server and Postgres started for the phase:
   with 1 rule, with the rules of the 1,000 that match these webhooks (so the same
   requests are made), and with the 1,000. Each is fed the same webhooks in turn, in
   rounds, committed into the log and onto the bus as the receiver does, and drains them.
   A router's CPU per event is the whole cost of routing one (decode, rules, NATS,
   Postgres, acknowledgement); what the 1,000 rules add to the matching ones is the
   criterion: routing is not the bottleneck when they add at most 25 %. Also shown:
   Postgres's and nats-server's CPU per event, and the routing records' size.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats

from hookbus_common import events as ev
from hookbus_common.bus import stream_name
from hookbus_common.consumer import Incoming
from hookbus_common.service import Runtime, runtime
from hookbus_router.config import RouterConfig
from hookbus_router.routing import make_handler
from hookbus_router.rules import Facts, RuleSet

from . import payloads, procs
from .report import Row
from .sides import postmaster_pid
from .system import Servers, System, source_config

SIZES = (1, 100, 1000)
# What 1,000 rules may add to a router's CPU per event before routing is the bottleneck.
TARGET_ADDED = 0.25


REPOS = 100  # the rules are spread over this many repositories, as in an organisation


def rule_text(i: int) -> str:
    """Rule ``i`` of the mix, for repository ``acme/svc-<i % 100>``: one in four globs on
    branches, one a condition on the payload, one a template in its action and a
    condition, one for GitLab sources by glob; one in twenty is organisation-wide
    (``repository = "acme/*"``) with a condition; a few match each push to main."""
    name = f'name = "r{i}"'
    repo = f'repository = "acme/svc-{i % REPOS}"'
    if i % 20 == 0:  # organisation-wide: every repository's pushes are its candidates
        return f"""
[[rules]]
{name}
source = "github"
event = "push"
repository = "acme/*"
when = {{ all = [
  {{ path = "payload.ref", glob = "refs/heads/org-{i}/*" }},
  {{ not = {{ path = "payload.sender.login", glob = "*[bot]" }} }},
] }}
actions = [{{ kind = "webhook", url = "https://chat.example.com/hooks/{i}" }}]
"""
    kind = i % 4
    if kind == 0:  # globs only
        return f"""
[[rules]]
{name}
source = "github"
event = "push"
{repo}
branch = ["release-{i}", "hotfix/{i}-*"]
actions = [{{ kind = "shell", command = ["./deploy.sh", "r{i}"] }}]
"""
    if kind == 1:  # a condition on the payload
        return f"""
[[rules]]
{name}
source = "github"
event = "pull_request"
{repo}
when = {{ all = [
  {{ path = "payload.action", in = ["opened", "synchronize"] }},
  {{ path = "payload.pull_request.base.ref", equals = "main" }},
] }}
actions = [{{ kind = "shell", command = ["./test.sh", "{{{{ payload.number }}}}"] }}]
"""
    if kind == 2:  # templates in the action and a condition
        return f"""
[[rules]]
{name}
source = "github"
event = ["push", "create"]
{repo}
when = {{ path = "payload.ref", equals = "refs/heads/main" }}
actions = [{{ kind = "shell", command = ["./deploy.sh", "{{{{ payload.after[:7] }}}}",
             "{{{{ event.repository }}}}"] }}]
"""
    return f"""
[[rules]]
{name}
source = ["gitlab-{i}", "registry-*"]
event = "Push Hook"
actions = [{{ kind = "webhook", url = "https://chat.example.com/hooks/{i}" }}]
"""


FIRST = """
[[rules]]
name = "deploy-main"
source = "github"
event = "push"
branch = "main"
actions = [{ kind = "shell", command = ["./deploy.sh", "{{ payload.after[:7] }}"] }]
"""


def rules_toml(which: Iterable[int]) -> str:
    """Rules of the mix by number (0 is deploy-main), in order."""
    return "".join(FIRST if i == 0 else rule_text(i) for i in which)


def ruleset(n: int, *, indexed: bool = True) -> RuleSet:
    config = msgspec.convert(tomllib.loads(rules_toml(range(n))), RouterConfig)
    return RuleSet.build(config.rules, indexed=indexed)


def matching(n: int, hooks: Iterable[ev.Event[ev.WebhookReceived]]) -> list[int]:
    """The numbers of the rules of ``n`` that match one of ``hooks`` or more."""
    rules = ruleset(n)
    found: set[int] = set()
    for hook in hooks:
        found.update(rules.evaluate_matched(hook.data, Facts(hook.data, event_id=hook.id))[1])
    return sorted(found)


def events(count: int) -> list[bytes]:
    """Encoded webhook.received events as the router takes them off the bus: GitHub
    pushes (2 KB bodies) to main and to other branches of the organisation's
    repositories, and GitLab pushes."""
    return [ev.encode(e) for e in webhooks(count)]


def webhooks(count: int, tag: str = "") -> list[ev.Event[ev.WebhookReceived]]:
    """The webhooks of ``events``; ``tag`` makes their ids (and delivery ids) new."""
    out = []
    for n in range(count):
        branch = "main" if n % 3 == 0 else f"feature-{n}"
        body = payloads.push_body(n).replace(b"refs/heads/main", f"refs/heads/{branch}".encode())
        gitlab = n % 5 == 4
        data = ev.WebhookReceived(
            source="gitlab-7" if gitlab else "github",
            kind="gitlab" if gitlab else "github",
            event_type="Push Hook" if gitlab else "push",
            delivery_id=f"d-{tag}{n}",
            headers={"x-github-event": "push"},
            payload=msgspec.Raw(body),
            repository=f"acme/svc-{n * 7 % REPOS}",
            branch=branch,
            commit=f"{n:040x}",
            sender="octocat",
        )
        out.append(ev.make_event(data, source="/hookbus/receiver/github"))
    return out


def _per_event(fn: Callable[[bytes], Any], encoded: list[bytes], seconds: float) -> float:
    """CPU µs per event, calling ``fn`` over ``encoded`` again and again for ``seconds``
    of this process's CPU time (on a shared machine, wall time counts others' work)."""
    for raw in encoded[:20]:
        fn(raw)  # warm up
    done = 0
    started = time.process_time()
    while True:
        for raw in encoded:
            fn(raw)
        done += len(encoded)
        elapsed = time.process_time() - started
        if elapsed >= seconds:
            return elapsed / done * 1e6


def _router(rules: RuleSet) -> Callable[[bytes], Awaitable[int]]:
    """The handler as the consume loop calls it: decode, route, encode what it yields."""
    handler = make_handler(rules, record_unmatched=False)

    async def one(raw: bytes) -> int:
        incoming = Incoming(event=ev.decode(raw), subject="s", deliveries=1, _msg=None)  # type: ignore[arg-type]
        written = 0
        async for out in handler(incoming):
            batch = [out] if isinstance(out, ev.Event) else list(out)
            for event in batch:
                ev.encode(event)  # as the consume loop does before writing it
            written += len(batch)
        return written

    return one


async def _routed_per_event(
    route: Callable[[bytes], Awaitable[int]], encoded: list[bytes], seconds: float
) -> tuple[float, int]:
    """CPU µs per event through the handler, and the events it writes for ``encoded``."""
    written = 0
    for raw in encoded:
        written += await route(raw)
    done = 0
    started = time.process_time()
    while True:
        for raw in encoded:
            await route(raw)
        done += len(encoded)
        elapsed = time.process_time() - started
        if elapsed >= seconds:
            return elapsed / done * 1e6, written


# ------------------------------------------------------------------ a router process

BATCH = 250


def _config(which: Sequence[int]) -> str:
    """The router's file: the GitHub source, the GitLab sources the rules name, the rules."""
    gitlab = "".join(
        f"""
[sources.gitlab-{i}]
kind = "gitlab"
token = [{{ value = "{payloads.SECRET}" }}]
"""
        for i in sorted({7, *(i for i in which if i % 4 == 3 and i % 20)})
    )
    return source_config() + gitlab + rules_toml(which)


async def _drained(url: str, prefix: str, timeout: float) -> bool:
    """Whether the router's durable has nothing pending or unacknowledged (in time)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await js.consumer_info(stream_name(prefix), f"{prefix}-router")
            if not (info.num_pending or 0) + (info.num_ack_pending or 0):
                return True
            await asyncio.sleep(0.05)
        return False
    finally:
        await nc.close()


@dataclass
class _Router:
    """A router process with some of the rules, on its own stream and schema."""

    which: Sequence[int]
    system: System
    rt: Runtime
    groups: list[procs.Group]
    # Per measured round: CPU seconds by group, and the webhooks fed.
    rounds: list[dict[str, float]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    drained: bool = True

    async def feed(self, batch: list[ev.Event[ev.WebhookReceived]], *, measured: bool) -> None:
        """Commit ``batch`` as the receiver does, and wait until the router drained it."""
        before = procs.snapshot(self.groups)
        for i in range(0, len(batch), BATCH):
            await self.rt.outbox.commit_and_publish(batch[i : i + BATCH])
        url = self.rt.settings.nats.url
        drained = await _drained(url, self.system.prefix, 120)
        used = procs.usage(before, procs.snapshot(self.groups), self.groups)
        if measured:
            self.drained = self.drained and drained
            self.rounds.append({k: v / len(batch) * 1e6 for k, v in used.cpu_s.items()})
            self.ids += [e.id for e in batch]

    async def figures(self) -> dict[str, Any]:
        """Medians over the rounds (µs per event), and what the router wrote."""
        records = await self.rt.pool.fetchrow(
            "SELECT count(*) AS n, coalesce(avg(octet_length(data::text)), 0) AS size"
            " FROM events WHERE type = $1 AND causation_id = ANY($2::text[])",
            ev.WebhookRouted.TYPE,
            self.ids,
        )
        written = await self.rt.pool.fetchval(
            "SELECT count(*) FROM events WHERE causation_id = ANY($1::text[])", self.ids
        )

        def median(group: str) -> float:
            return statistics.median(r.get(group, 0.0) for r in self.rounds)

        return {
            "rules": len(self.which),
            "events": len(self.ids),
            "rounds": len(self.rounds),
            "drained": self.drained,
            "router_cpu_us_per_event": median("router"),
            "router_cpu_us_per_round": [round(r.get("router", 0.0), 1) for r in self.rounds],
            "postgres_cpu_us_per_event": median("postgres"),
            "nats_cpu_us_per_event": median("nats"),
            "routing_records": int(records["n"]),
            "routing_record_bytes": float(records["size"]),
            "events_written": int(written),
        }


@asynccontextmanager
async def _router_process(
    servers: Servers, base: Path, which: Sequence[int]
) -> AsyncIterator[_Router]:
    with System(servers, base / f"rules-{len(which)}", _config(which), workers=1) as system:
        settings = system.settings(base)
        async with runtime(settings, "bench") as rt:
            system.start("router")
            assert servers.nats.proc is not None
            groups = [
                procs.Group("router", system.pid("router")),
                procs.Group("postgres", postmaster_pid(servers)),
                procs.Group("nats", servers.nats.proc.pid),
            ]
            yield _Router(which, system, rt, groups)


async def router_process(rounds: int, per_round: int) -> dict[str, Any]:
    """Three routers on a nats-server and Postgres started for this: with 1 rule, with
    the rules of the 1,000 that match these webhooks (the same requests as the 1,000
    make), and with the 1,000. Each is warmed up, then fed ``per_round`` webhooks in turn
    for ``rounds`` rounds (interleaved, so that a busy moment of the machine falls on
    every one alike); figures are medians over the rounds. What the 1,000 add to the
    matching ones is the cost of the rules that do not match: the criterion."""
    n = SIZES[-1]
    matched = matching(n, webhooks(per_round))
    with tempfile.TemporaryDirectory(prefix="hookbus-bench-rules-") as tmp:
        base = Path(tmp)
        with Servers(base / "servers") as servers:
            async with AsyncExitStack() as stack:
                routers = [
                    await stack.enter_async_context(_router_process(servers, base, which))
                    for which in ([0], matched, range(n))
                ]
                for r in routers:  # imports, the index's first look at each repository
                    await r.feed(webhooks(200, "w"), measured=False)
                for k in range(rounds):
                    for r in routers:
                        await r.feed(webhooks(per_round, f"m{k}-"), measured=True)
                one, some, many = [await r.figures() for r in routers]
    out: dict[str, Any] = {"1": one, "matching": some, str(n): many}
    a, b = some["router_cpu_us_per_event"], many["router_cpu_us_per_event"]
    if a and b:
        out["added"] = (b - a) / a
        out["bottleneck"] = out["added"] > TARGET_ADDED
    return out


async def run(quick: bool) -> dict[str, Any]:
    """Each in-process figure for 0.3 s (quick) or 1 s of CPU, on the running loop, as
    the router runs; then router processes drain 4 rounds of 300 webhooks each (quick) or
    8 of 500."""
    encoded = events(200)
    seconds = 0.3 if quick else 1.0
    decode_us = _per_event(ev.decode, encoded, seconds)
    by_size: dict[str, Any] = {}
    for n in SIZES:
        rules = ruleset(n)
        us, written = await _routed_per_event(_router(rules), encoded, seconds)
        candidates = rules.index.candidates_seen() if rules.index else None
        by_size[str(n)] = {
            "us_per_event": us,
            "events_written": written,
            "candidates_per_event": candidates,
        }
    # The same 1,000 rules, every one evaluated for every event (no index).
    unindexed = _router(ruleset(SIZES[-1], indexed=False))
    us, _ = await _routed_per_event(unindexed, encoded, seconds)
    by_size[f"{SIZES[-1]}-unindexed"] = {"us_per_event": us}
    process = await router_process(*((4, 300) if quick else (8, 500)))
    return {
        "decode_us_per_event": decode_us,
        "by_rules": by_size,
        "events": len(encoded),
        "router_process": process,
    }


def rows(r: dict[str, Any]) -> list[Row]:
    decode = r["decode_us_per_event"]
    out = [Row("routing: decoding an event alone (the ceiling)", decode, "µs")]
    for n, figures in r["by_rules"].items():
        count, _, unindexed = n.partition("-")
        how = ", no index" if unindexed else ""
        out.append(
            Row(
                f"routing: CPU µs per event, {int(count):,} rule{'s' if count != '1' else ''}{how}"
                " (in-process: decode, route, encode)",
                figures["us_per_event"],
                "µs",
                decode,
                "decode",
                multiple=True,
            )
        )
    p = r.get("router_process")
    if not p:
        return out
    one, some, many = p["1"], p["matching"], p[str(SIZES[-1])]
    base = some["router_cpu_us_per_event"]
    for figures, label in (
        (one, "1 rule"),
        (some, f"the {some['rules']} of the 1,000 rules that match"),
        (many, f"{many['rules']:,} rules"),
    ):
        written = figures["events_written"] / figures["events"]
        out.append(
            Row(
                f"routing: a router process, {label}: its CPU per event (decode, rules, NATS,"
                f" Postgres; median of {figures['rounds']} rounds, {figures['events']:,} webhooks,"
                f" {written:.2f} events written each)",
                figures["router_cpu_us_per_event"],
                "µs",
                base if figures is many else None,
                "matching rules" if figures is many else "",
                multiple=True,
            )
        )
        out.append(
            Row(
                f"  {label}: Postgres + nats-server CPU per event; routing records"
                f" {figures['routing_records']:,} of {figures['routing_record_bytes'] / 1024:,.1f}"
                " KB each",
                (figures["postgres_cpu_us_per_event"] or 0)
                + (figures["nats_cpu_us_per_event"] or 0),
                "µs",
            )
        )
    added = p.get("added")
    if added is not None:
        out.append(
            Row(
                f"routing: the 1,000 rules add {added:.0%} to the router's CPU per event of the"
                " rules that match (the same requests); bottleneck?",
                "yes" if p["bottleneck"] else "no",
                "",
                None,
                "",
                f"≤ {TARGET_ADDED:.0%}",
                not p["bottleneck"] and some["drained"] and many["drained"],
            )
        )
    return out
