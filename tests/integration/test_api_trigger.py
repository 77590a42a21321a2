"""The operator API's rule actions against real Postgres, NATS and the router's and the
executor's real consume loops: a rule run by hand (recorded as rule.triggered naming the
token, its actions run whatever the rule's conditions say, once per Idempotency-Key) and
a rules dry-run of a recorded webhook, answered by a running router over the bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings
from hookbus_router import dryrun
from hookbus_router.config import Rule, ShellAction
from hookbus_router.rules import RuleSet

from .api_support import api_config, webhook
from .pipeline import Pipeline
from .test_api import Api, _is_problem, served
from .test_consumer import until

pytestmark = pytest.mark.integration

RULES_TOML = """
[[rules]]
name = "deploy"
source = "github"
branch = "main"
actions = [{ kind = "shell", command = ["/bin/sh", "-c", "echo deployed"] }]

[[rules]]
name = "docs"
source = "github"
branch = "gh-pages"
actions = [{ kind = "shell", command = ["/bin/sh", "-c", "echo docs"] }]
"""


def _rules(out: Path) -> list[Rule]:
    """The router's rules, the same names as the file the API reads."""
    script = f'echo "$HOOKBUS_SOURCE $HOOKBUS_SENDER $HOOKBUS_EVENT_TYPE" >> {out}'
    return [
        Rule(name="deploy", source="github", branch="main",
             actions=[ShellAction(command=["/bin/sh", "-c", script], payload="none")]),
        Rule(name="docs", source="github", branch="gh-pages",
             actions=[ShellAction(command=["/bin/sh", "-c", "echo docs"], payload="none")]),
    ]  # fmt: skip


@pytest.fixture
async def api(settings: Settings, rt: Runtime, tmp_path: Path) -> AsyncIterator[Api]:
    async with served(rt, api_config(settings, tmp_path, RULES_TOML)) as served_api:
        yield served_api


async def _types(rt: Runtime, event_id: str) -> list[str]:
    async with rt.pool.acquire() as conn:
        return [e.event.type for e in await eventlog.chain(conn, event_id)]


async def _count(rt: Runtime) -> int:
    async with rt.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM events"))


# ----------------------------------------------------------------------- trigger


async def test_a_rule_run_by_hand_runs_its_actions_once_recorded_with_who_asked(
    api: Api, rt: Runtime, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    body = {"payload": {"version": "1.2.3"}, "event_type": "release", "reason": "hotfix"}
    async with Pipeline(rt, _rules(out)):
        async with api.client("operate") as c:
            r = await c.post("/api/rules/deploy/trigger", json=body,
                             headers={"idempotency-key": "rel-1"})  # fmt: skip
            assert r.status_code == 202, r.text
            await api.conforms("/api/rules/deploy/trigger", "post", r)
            trigger_id = r.json()["id"]
            assert r.json() == {"id": trigger_id, "rule": "deploy", "duplicate": False}

            async def ran() -> bool:
                return ev.JobSucceeded.TYPE in await _types(rt, trigger_id)

            await until(ran, timeout=30)
            # The same key again: the same trigger, nothing recorded or run again.
            again = await c.post("/api/rules/deploy/trigger", json=body,
                                 headers={"idempotency-key": "rel-1"})  # fmt: skip
        assert again.status_code == 200, again.text
        assert again.json() == {"id": trigger_id, "rule": "deploy", "duplicate": True}
        await asyncio.sleep(0.5)  # time for a wrong second run to show

    # The rule's conditions (source github, branch main) did not stop it; only it ran.
    assert out.read_text() == "manual api:operate-bot release\n"
    types = await _types(rt, trigger_id)
    assert types.count(ev.JobSucceeded.TYPE) == 1
    assert types[:2] == [ev.RuleTriggered.TYPE, ev.WebhookRouted.TYPE]
    async with rt.pool.acquire() as conn:
        chain = await eventlog.chain(conn, trigger_id)
    triggered = msgspec.json.decode(chain[0].event.data, type=ev.RuleTriggered)
    assert (triggered.rule, triggered.by, triggered.reason) == (
        "deploy",
        "api:operate-bot",
        "hotfix",
    )
    assert msgspec.json.decode(triggered.webhook.payload) == {"version": "1.2.3"}
    routed = msgspec.json.decode(chain[1].event.data, type=ev.WebhookRouted)
    assert routed.matched == ["deploy"]
    assert [e.reason for e in routed.evaluations] == [
        "triggered by api:operate-bot",
        "not triggered",
    ]


async def test_triggering_needs_operate_a_known_rule_and_a_good_body(api: Api) -> None:
    async with api.client("read") as c:
        _is_problem(await c.post("/api/rules/deploy/trigger", json={}), 403, "forbidden")
    async with api.client("operate") as c:
        _is_problem(await c.post("/api/rules/nope/trigger", json={}), 404, "not_found")
        bad = await c.post("/api/rules/deploy/trigger", json={"paylaod": {}})
        assert "paylaod" in _is_problem(bad, 400, "invalid")["detail"]
        _is_problem(await c.post("/api/rules/deploy/trigger", content=b"{"), 400, "invalid")


# ----------------------------------------------------------------------- dry run


async def _with_router(rt: Runtime, rules: list[Rule]) -> Any:
    ruleset = RuleSet.build(rules)
    return await dryrun.serve(rt.bus, lambda: ruleset)


async def test_a_dry_run_is_the_routers_evaluation_and_records_nothing(
    api: Api, rt: Runtime, tmp_path: Path
) -> None:
    hook = webhook("github", 1)
    await rt.outbox.commit_and_publish([hook])
    sub = await _with_router(rt, _rules(tmp_path / "out.txt"))
    try:
        before = await _count(rt)
        answer = await api.get("/api/rules/dry-run", event=hook.id)
        assert await _count(rt) == before
    finally:
        await sub.unsubscribe()
    assert answer["event_id"] == hook.id
    assert answer["matched"] == ["deploy"]
    assert [e["rule"] for e in answer["evaluations"]] == ["deploy", "docs"]
    docs = answer["evaluations"][1]
    assert docs["matched"] is False
    assert docs["failed"] == "branch"
    [request] = answer["requests"]
    assert request["rule"] == "deploy"
    assert request["type"] == ev.JobRequestedV2.TYPE
    assert request["summary"].startswith("shell: /bin/sh -c echo")
    assert answer["config_version"] == RuleSet.build(_rules(tmp_path / "out.txt")).version


async def test_a_dry_run_without_a_router_or_of_no_webhook_is_a_problem(
    api: Api, rt: Runtime, tmp_path: Path
) -> None:
    hook = webhook("github", 2)
    other = ev.make_event(ev.WebhookRouted(source="github", event_type="push", webhook_id=hook.id),
                          source="/hookbus/router", cause=hook)  # fmt: skip
    await rt.outbox.commit_and_publish([hook, other])
    async with api.client("read") as c:
        none_running = await c.get("/api/rules/dry-run", params={"event": hook.id})
        _is_problem(none_running, 503, "unavailable")
        _is_problem(await c.get("/api/rules/dry-run", params={"event": "evt_nope"}), 404,
                    "not_found")  # fmt: skip
        _is_problem(await c.get("/api/rules/dry-run", params={"event": other.id}), 400, "invalid")
        _is_problem(await c.get("/api/rules/dry-run"), 400, "invalid")
