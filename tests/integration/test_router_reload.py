"""Reloading the rules of a running router: its real consume loop, NATS and Postgres; a
change of the file (or SIGHUP) applies new rules, a bad file keeps the old ones."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import REGISTRY

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.consumer import Consumer
from hookbus_common.service import Runtime
from hookbus_router import config as router
from hookbus_router import reload
from hookbus_router.routing import FILTER_TOKENS, make_handler

from .test_consumer import until

pytestmark = pytest.mark.integration

SOURCES = '[sources.github]\nkind = "github"\nsecrets = [{ value = "s" }]\n'


def rules_file(branch: str, name: str) -> str:
    return (
        f'[[rules]]\nname = "{name}"\nwhen = {{ path = "payload.ref", equals ='
        f' "refs/heads/{branch}" }}\n'
        'actions = [{ kind = "shell", command = ["./deploy.sh", "{{ payload.ref }}"] }]\n'
    )


def webhook(branch: str) -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source="github",
        kind="github",
        event_type="push",
        payload=msgspec.Raw(msgspec.json.encode({"ref": f"refs/heads/{branch}"})),
    )
    return ev.make_event(data, source="/hookbus/receiver/github")


async def routed(rt: Runtime, hook_id: str) -> ev.WebhookRouted | None:
    async with rt.pool.acquire() as conn:
        rows = await eventlog.chain(conn, hook_id)
    for row in rows:
        event = ev.decode(row.payload())
        if isinstance(event.data, ev.WebhookRouted):
            return event.data
    return None


async def route_one(rt: Runtime, branch: str) -> ev.WebhookRouted:
    hook = webhook(branch)
    await rt.outbox.commit_and_publish([hook])

    async def done() -> bool:
        return await routed(rt, hook.id) is not None

    await until(done)
    found = await routed(rt, hook.id)
    assert found is not None
    return found


def refused() -> float:
    return REGISTRY.get_sample_value("hookbus_router_reloads_total", {"result": "refused"}) or 0.0


class Router:
    """The router's consumer as its service runs it, with live rules read from a file."""

    def __init__(self, rt: Runtime, path: Path) -> None:
        self.rt = rt
        self.live = reload.LiveRules(router.load(path, {}), lambda p: router.load(p, {}))
        self.stop = asyncio.Event()
        self.consumer = Consumer(
            service="router",
            bus=rt.bus,
            outbox=rt.outbox,
            durable=f"{rt.bus.prefix}-router",
            filter_subjects=[".".join((rt.bus.prefix, *t, ">")) for t in FILTER_TOKENS],
            handler=make_handler(self.live, record_unmatched=True),
            max_in_flight=4,
            max_deliver=5,
        )
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Router:
        self.tasks = [
            asyncio.create_task(self.consumer.run(self.stop)),
            reload.start(self.live, self.stop),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await asyncio.wait_for(asyncio.gather(*self.tasks), 20)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "hookbus.toml"
    path.write_text(SOURCES + '[router]\nrules_file = "rules.toml"\n')
    (tmp_path / "rules.toml").write_text(rules_file("main", "deploy-main"))
    return path


@pytest.fixture
async def running(rt: Runtime, config_path: Path) -> AsyncIterator[Router]:
    async with Router(rt, config_path) as r:
        yield r


def _bump(path: Path, text: str) -> None:
    """Write ``text`` with a modification time surely after the last one seen."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


async def test_a_changed_rules_file_applies_and_a_bad_one_keeps_the_old_rules(
    rt: Runtime, running: Router, config_path: Path
) -> None:
    rules = config_path.parent / "rules.toml"
    first = await route_one(rt, "main")
    assert first.matched == ["deploy-main"]
    version = first.config_version
    assert version == running.live().version

    _bump(rules, rules_file("release", "deploy-release"))

    async def reloaded() -> bool:
        return running.live().version != version

    await until(reloaded)
    second = await route_one(rt, "release")
    assert second.matched == ["deploy-release"]
    assert second.config_version not in (None, version)
    assert (await route_one(rt, "main")).matched == []

    before = refused()
    _bump(rules, rules_file("dev", "deploy-dev").replace("equals", "equal"))

    async def was_refused() -> bool:
        return refused() > before

    await until(was_refused)
    third = await route_one(rt, "release")
    assert third.matched == ["deploy-release"]
    assert third.config_version == second.config_version
    assert (await route_one(rt, "dev")).matched == []


async def test_sighup_reloads_the_rules(rt: Runtime, running: Router, config_path: Path) -> None:
    rules = config_path.parent / "rules.toml"
    version = running.live().version
    # The same size and modification time: only the signal can tell the router.
    st = rules.stat()
    rules.write_text(rules_file("mast", "deploy-mast"))
    os.utime(rules, ns=(st.st_atime_ns, st.st_mtime_ns))
    await asyncio.sleep(1.5)  # a poll or more passes: the file looks the same
    assert running.live().version == version

    os.kill(os.getpid(), signal.SIGHUP)

    async def reloaded() -> bool:
        return running.live().version != version

    await until(reloaded)
    assert (await route_one(rt, "mast")).matched == ["deploy-mast"]
