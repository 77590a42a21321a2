"""Actions in sequence against real NATS and Postgres: the router's and the executor's
real consume loops run three shell actions one after another; the second fails, so the
third is never requested and the sequence's end is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_router import config as router

from .pipeline import Pipeline
from .test_consumer import until

pytestmark = pytest.mark.integration


def rules_text(out: Path, second: str) -> str:
    def step(name: str, script: str) -> str:
        return f'{{ kind = "shell", command = ["sh", "-c", "{script}", "{name}"] }}'

    return f"""
[[rules]]
name = "release"
sequence = true
actions = [
  {step("build", f"echo build >> {out}")},
  {step("test", second)},
  {step("ship", f"echo ship >> {out}")},
]
"""


async def of_type(rt: Runtime, cls: type[ev.EventData]) -> list[Any]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT data FROM events WHERE type = $1 ORDER BY seq", cls.TYPE)
    return [msgspec.json.decode(r["data"].encode(), type=cls) for r in rows]


def webhook() -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(source="github", kind="github", event_type="push")
    return ev.make_event(data, source="/hookbus/receiver/github")


async def ended(rt: Runtime) -> ev.RuleSequenceEnded:
    async def there() -> bool:
        return len(await of_type(rt, ev.RuleSequenceEnded)) > 0

    await until(there, timeout=30)
    [end] = await of_type(rt, ev.RuleSequenceEnded)
    return end


def load(tmp_path: Path, text: str) -> list[router.Rule]:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return router.load(path, {}).rules


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out.txt"


@pytest.fixture
async def failing(rt: Runtime, tmp_path: Path, out: Path) -> AsyncIterator[Pipeline]:
    async with Pipeline(
        rt, load(tmp_path, rules_text(out, "exit 3")), waits_in_log=True, executor_in_flight=2
    ) as system:
        yield system


async def test_the_second_action_failing_stops_the_sequence_before_the_third(
    rt: Runtime, failing: Pipeline, out: Path
) -> None:
    hook = webhook()
    await rt.outbox.commit_and_publish([hook])

    end = await ended(rt)
    await asyncio.sleep(0.5)  # time for a wrong third request to show

    assert (end.outcome, end.index, end.of) == ("stopped", 1, 3)
    assert end.reason == "action exited with code 3"
    assert end.webhook_id == hook.id
    requested = await of_type(rt, ev.JobRequestedV2)
    assert [r.spec.command[3] for r in requested] == ["build", "test"]
    assert [r.sequence.index for r in requested] == [0, 1]
    assert len(await of_type(rt, ev.JobFailed)) == 1
    assert out.read_text() == "build\n"


async def test_a_sequence_that_succeeds_runs_every_action_in_order(
    rt: Runtime, tmp_path: Path, out: Path
) -> None:
    async with Pipeline(
        rt,
        load(tmp_path, rules_text(out, f"echo test >> {out}")),
        waits_in_log=True,
        executor_in_flight=2,
    ):
        await rt.outbox.commit_and_publish([webhook()])
        end = await ended(rt)

    assert (end.outcome, end.index) == ("completed", 2)
    assert out.read_text() == "build\ntest\nship\n"
