"""What routing costs: the router's handler, called in-process (no NATS, no Postgres) on
recorded-looking events, with 1, 100 and 1,000 rules of a realistic mix; printed next to
decoding the event alone, the least a router does with a message."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from hookbus_common import events as ev
from hookbus_common.consumer import Incoming
from hookbus_router.config import RouterConfig
from hookbus_router.routing import make_handler
from hookbus_router.rules import RuleSet

from . import payloads
from .report import Row

SIZES = (1, 100, 1000)


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


def ruleset(n: int, *, indexed: bool = True) -> RuleSet:
    first = """
[[rules]]
name = "deploy-main"
source = "github"
event = "push"
branch = "main"
actions = [{ kind = "shell", command = ["./deploy.sh", "{{ payload.after[:7] }}"] }]
"""
    text = first + "".join(rule_text(i) for i in range(1, n))
    config = msgspec.convert(tomllib.loads(text), RouterConfig)
    return RuleSet.build(config.rules, indexed=indexed)


def events(count: int) -> list[bytes]:
    """Encoded webhook.received events as the router takes them off the bus: GitHub
    pushes (2 KB bodies) to main and to other branches of the organisation's
    repositories, and GitLab pushes."""
    out = []
    for n in range(count):
        branch = "main" if n % 3 == 0 else f"feature-{n}"
        body = payloads.push_body(n).replace(b"refs/heads/main", f"refs/heads/{branch}".encode())
        gitlab = n % 5 == 4
        data = ev.WebhookReceived(
            source="gitlab-7" if gitlab else "github",
            kind="gitlab" if gitlab else "github",
            event_type="Push Hook" if gitlab else "push",
            delivery_id=f"d-{n}",
            headers={"x-github-event": "push"},
            payload=msgspec.Raw(body),
            repository=f"acme/svc-{n * 7 % REPOS}",
            branch=branch,
            commit=f"{n:040x}",
            sender="octocat",
        )
        out.append(ev.encode(ev.make_event(data, source="/hookbus/receiver/github")))
    return out


def _per_event(fn: Callable[[bytes], Any], encoded: list[bytes], seconds: float) -> float:
    """µs per event, calling ``fn`` over ``encoded`` again and again for ``seconds``."""
    for raw in encoded[:20]:
        fn(raw)  # warm up
    done = 0
    started = time.perf_counter()
    while True:
        for raw in encoded:
            fn(raw)
        done += len(encoded)
        elapsed = time.perf_counter() - started
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
    """µs per event through the handler, and the events it writes for ``encoded``."""
    written = 0
    for raw in encoded:
        written += await route(raw)
    done = 0
    started = time.perf_counter()
    while True:
        for raw in encoded:
            await route(raw)
        done += len(encoded)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / done * 1e6, written


async def run(quick: bool) -> dict[str, Any]:
    """Each figure for 0.3 s (quick) or 1 s, on the running loop, as the router runs."""
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
    return {"decode_us_per_event": decode_us, "by_rules": by_size, "events": len(encoded)}


def rows(r: dict[str, Any]) -> list[Row]:
    decode = r["decode_us_per_event"]
    out = [Row("routing: decoding an event alone (the ceiling)", decode, "µs")]
    for n, figures in r["by_rules"].items():
        count, _, unindexed = n.partition("-")
        how = ", no index" if unindexed else ""
        out.append(
            Row(
                f"routing: µs per event, {int(count):,} rule{'s' if count != '1' else ''}{how}"
                " (in-process: decode, route, encode)",
                figures["us_per_event"],
                "µs",
                decode,
                "decode",
                multiple=True,
            )
        )
    return out
