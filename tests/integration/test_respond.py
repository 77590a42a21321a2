"""Synchronous answers against the real receiver, router and executor (uvicorn, NATS,
Postgres): a source with ``respond_wait`` answers with the outcome of the job its webhook
caused — 200 with the exit status and output, a failure as ``ok: false`` — and a 202 with
the webhook's id past the deadline or when too many requests wait; the webhook is
committed first either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from hookbus_cli.embedded import free_port
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings, extend
from hookbus_receiver.config import EventTypeFrom, NoneSource, ReceiverConfig, ReceiverSettings
from hookbus_router.config import Rule, ShellAction

from .conftest import recorded
from .pipeline import Pipeline
from .serving import serve

pytestmark = pytest.mark.integration


def _shell(script: str) -> ShellAction:
    return ShellAction(command=["/bin/sh", "-c", script], payload="none")


RULES = [
    Rule(
        name="ok", source="sync", event="ok", actions=[_shell("echo deployed $HOOKBUS_EVENT_TYPE")]
    ),
    Rule(name="bad", source="sync", event="bad", actions=[_shell("echo broken >&2; exit 3")]),
    Rule(name="slow", source="sync", event="slow", actions=[_shell("sleep 5")]),
]


def _receiver(settings: Settings, wait: str, max_waiting: int = 100) -> ReceiverConfig:
    source = NoneSource(
        unsigned=True, respond_wait=wait, event_type=EventTypeFrom(json_field="what")
    )
    return extend(
        settings, ReceiverConfig,
        receiver=ReceiverSettings(port=free_port(), respond_max_waiting=max_waiting),
        sources={"sync": source},
    )  # fmt: skip


@pytest.fixture
async def pipeline(rt: Runtime) -> AsyncIterator[Pipeline]:
    async with Pipeline(rt, RULES) as p:
        yield p


async def _post(base: str, what: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{base}/hooks/sync", json={"what": what})


async def test_the_answer_is_the_jobs_outcome_once_it_ends(
    settings: Settings, pipeline: Pipeline
) -> None:
    receiver = _receiver(settings, "20s")
    async with serve(receiver) as base:
        ok = await _post(base, "ok")
        bad = await _post(base, "bad")
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["ok"] is True
    assert body["status"] == "succeeded"
    assert body["exit_code"] == 0
    assert body["output"] == "deployed ok\n"
    assert body["rule"] == "ok"
    assert body["job_id"].startswith("job_")
    # The job's failure is no failure of the receiver: a 200 that says so.
    assert bad.status_code == 200, bad.text
    failed = bad.json()
    assert (failed["ok"], failed["status"], failed["exit_code"]) == (False, "failed", 3)
    assert failed["output"] == "broken\n"
    # Committed first, as every accepted webhook: both are in the log, with the ids given.
    logged = [r.id for r in await recorded(settings, "sync")]
    assert logged == [body["id"], failed["id"]]


async def test_past_the_deadline_the_answer_is_202_with_the_webhooks_id(
    settings: Settings, pipeline: Pipeline
) -> None:
    receiver = _receiver(settings, "300ms")
    async with serve(receiver) as base:
        slow = await _post(base, "slow")
    assert slow.status_code == 202, slow.text
    assert slow.json()["waited"] is True
    assert [r.id for r in await recorded(settings, "sync")] == [slow.json()["id"]]


async def test_past_the_bound_of_waiting_requests_the_answer_is_202_at_once(
    settings: Settings, pipeline: Pipeline
) -> None:
    receiver = _receiver(settings, "20s", max_waiting=1)
    async with serve(receiver) as base:
        first = asyncio.create_task(_post(base, "slow"))
        # The first waits (its job sleeps for 5 s); the second finds no place to wait.
        while not await recorded(settings, "sync"):
            await asyncio.sleep(0.02)
        second = await _post(base, "ok")
        assert second.status_code == 202, second.text
        assert second.json()["waited"] is False
        assert "too many" in second.json()["reason"]
        done = await first
    assert done.status_code == 200
    assert done.json()["status"] == "succeeded"
