"""The docker action against a real engine (podman's Docker-compatible API, see
podman.py) and the executor's handler against a real Postgres: one-off runs, recreates
that keep the container's configuration, a rollback when the new image is not healthy,
stop and restart, and an engine that cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import docker
import docker.errors
import msgspec
import pytest
from prometheus_client import REGISTRY

from hookbus_common import events as ev
from hookbus_common.consumer import Ack, Consumer, Incoming, Nak, Outcome, Yielded
from hookbus_common.service import Runtime
from hookbus_common.settings import extend
from hookbus_executor.config import ExecutorConfig, ExecutorSettings
from hookbus_executor.dockerconfig import DockerSettings
from hookbus_executor.dockerrecreate import PREVIOUS_SUFFIX
from hookbus_executor.jobs import TERMINAL_STEP, Executor
from hookbus_executor.runs import Runs

from . import podman
from .podman import BASE, WEB, PodmanEngine

pytestmark = pytest.mark.integration

# One engine for the session (podman.py).
podman_engine = podman.podman_engine


class _Msg:
    async def in_progress(self) -> None:
        pass


class Replica:
    """One executor's handler, settled the way its consume loop settles a message."""

    def __init__(self, rt: Runtime, host: str, **executor: Any) -> None:
        executor.setdefault("lease_seconds", 3.0)
        self.rt = rt
        self.settings = extend(
            rt.settings,
            ExecutorConfig,
            executor=ExecutorSettings(docker=DockerSettings(host=host), **executor),
        )
        self.runs = Runs(self.settings.executor, rt.pool, rt.outbox, asyncio.Event())
        self.executor = Executor(self.settings, self.runs)
        _made.append(self)

    async def outcome(self, event: ev.Event[Any]) -> tuple[Outcome, list[ev.Event[Any]]]:
        await self.rt.outbox.commit([event])
        out: list[ev.Event[Any]] = []

        async def recording(incoming: Incoming) -> AsyncIterator[Yielded]:
            async for item in self.executor.handle(incoming):
                yield item
                # Once committed: a step whose gate held it back records nothing.
                out.extend([item] if isinstance(item, ev.Event) else item)

        consumer = Consumer(
            service="executor", bus=self.rt.bus, outbox=self.rt.outbox, durable="unused",
            filter_subjects=["unused"], handler=recording, max_in_flight=1, max_deliver=5,
            terminal_step=TERMINAL_STEP,
        )  # fmt: skip
        incoming = Incoming(event=event, subject="s", deliveries=1, _msg=_Msg())  # type: ignore[arg-type]
        return await consumer.process(incoming), out


_made: list[Replica] = []


@pytest.fixture(autouse=True)
def _close_replicas() -> Iterator[None]:
    yield
    while _made:
        _made.pop().executor.docker.close()


def _request(spec: ev.DockerSpec, job_id: str | None = None) -> ev.Event[ev.JobRequestedV2]:
    return ev.make_event(
        ev.JobRequestedV2(
            job_id=job_id or f"job_{secrets.token_hex(8)}", rule="deploy", webhook_id="evt_w",
            spec=spec, context={"HOOKBUS_REPOSITORY": "acme/web"},
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


async def _answer(url: str, within: float = 20.0) -> str:
    """What ``url`` answers, once it answers (polled, with a deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await asyncio.to_thread(_get, url)
        except OSError:
            assert loop.time() < deadline, f"{url} did not answer"
            await asyncio.sleep(0.1)


def _runs(operation: str, outcome: str) -> float:
    labels = {"kind": "docker", "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("hookbus_executor_docker_runs_total", labels) or 0.0


@pytest.fixture
def engine(podman_engine: PodmanEngine) -> Iterator[docker.DockerClient]:
    client = podman_engine.client()
    yield client
    client.close()


@pytest.fixture
def web(engine: docker.DockerClient) -> Iterator[tuple[str, int]]:
    """A container ``web-…`` of web:v1 with settings of its own: env, a published port,
    labels, a restart policy."""
    name = f"web-{secrets.token_hex(4)}"
    port = _free_port()
    engine.containers.run(
        f"{WEB}:v1", detach=True, name=name, environment={"APP_MODE": "production"},
        ports={"8080/tcp": ("127.0.0.1", port)}, labels={"team": "web"},
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 3},
    )  # fmt: skip
    yield name, port
    for n in (name, name + PREVIOUS_SUFFIX):
        with contextlib.suppress(docker.errors.NotFound):
            engine.containers.get(n).remove(force=True)


async def test_run_records_exit_status_and_bounded_logs(
    rt: Runtime,
    podman_engine: PodmanEngine,
    engine: docker.DockerClient,
) -> None:
    replica = Replica(rt, podman_engine.url, max_output_bytes=400)
    script = "echo out $HOOKBUS_REPOSITORY $HOOKBUS_JOB_ID $X; echo err >&2; head -c 5000 /dev/zero | tr '\\0' y; exit 3"
    req = _request(ev.DockerSpec(operation="run", image=BASE, command=["sh", "-c", script],
                                 env={"X": "a b"}, pull="never"))  # fmt: skip
    before = _runs("run", "failed")
    outcome, out = await replica.outcome(req)
    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobStarted, ev.JobFailed]
    done = out[1].data
    assert done.kind == "docker"
    assert done.exit_code == 3
    assert done.output.startswith(f"out acme/web {req.data.job_id} a b\n")
    assert done.truncated
    assert done.output_bytes > 5000
    assert done.deploy is not None
    assert done.deploy.operation == "run"
    assert _runs("run", "failed") == before + 1
    # The one-off container is gone.
    assert not engine.containers.list(all=True, filters={"name": done.deploy.container})

    ok = _request(ev.DockerSpec(operation="run", image=BASE, command=["true"], pull="never"))
    outcome, out = await replica.outcome(ok)
    assert type(out[-1].data) is ev.JobSucceeded
    assert out[-1].data.exit_code == 0


async def test_recreate_keeps_the_configuration_and_changes_the_image(
    rt: Runtime, podman_engine: PodmanEngine, engine: docker.DockerClient,
    web: tuple[str, int],
) -> None:  # fmt: skip
    name, port = web
    url = f"http://127.0.0.1:{port}/health"
    assert await _answer(url) == "v1"
    old_id = engine.containers.get(name).id
    replica = Replica(rt, podman_engine.url)
    spec = ev.DockerSpec(operation="recreate", container=name, image=f"{WEB}:v2", pull="never", stop_timeout=1,
                         health=ev.HealthProbe(http=url, timeout=30, interval=0.2))  # fmt: skip
    outcome, out = await replica.outcome(_request(spec))
    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobStarted, ev.JobSucceeded], out[-1].data
    deploy = out[-1].data.deploy
    assert deploy.image_before == f"{WEB}:v1"
    assert deploy.image_after == f"{WEB}:v2"
    assert deploy.health == "healthy"
    assert not deploy.rolled_back
    assert await _answer(url) == "v2"

    new = engine.containers.get(name)
    assert new.id != old_id
    assert deploy.container_id == new.id
    cfg, host = new.attrs["Config"], new.attrs["HostConfig"]
    assert cfg["Image"] == f"{WEB}:v2"
    assert "APP_MODE=production" in cfg["Env"]
    assert cfg["Labels"]["team"] == "web"
    assert host["PortBindings"]["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    # The command is the new image's (it was the old image's default, not the container's).
    assert "v2" in " ".join(cfg["Cmd"])
    # The old container is gone, and no spare is left.
    names = {c.name for c in engine.containers.list(all=True)}
    assert name + PREVIOUS_SUFFIX not in names


async def test_an_unhealthy_recreate_rolls_back_to_the_previous_container(
    rt: Runtime, podman_engine: PodmanEngine, engine: docker.DockerClient,
    web: tuple[str, int],
) -> None:  # fmt: skip
    name, port = web
    url = f"http://127.0.0.1:{port}/health"
    assert await _answer(url) == "v1"
    old_id = engine.containers.get(name).id
    replica = Replica(rt, podman_engine.url)
    before = _runs("recreate", "rolled_back")
    spec = ev.DockerSpec(operation="recreate", container=name, image=f"{WEB}:bad", pull="never", stop_timeout=1,
                         health=ev.HealthProbe(http=url, timeout=2, interval=0.2))  # fmt: skip
    req = _request(spec)
    outcome, out = await replica.outcome(req)
    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobStarted, ev.DeployRolledBack, ev.JobFailed]
    rolled, failed = out[1].data, out[2].data
    assert rolled.container == name
    assert rolled.image_before == f"{WEB}:v1"
    assert rolled.image_after == f"{WEB}:bad"
    assert rolled.reason.startswith("not healthy within 2 s")
    assert rolled.restored
    assert out[1].id == ev.derived_id(req.id, "rolled_back/1")
    assert failed.error.startswith("not healthy within 2 s")
    assert f"rolled back to {WEB}:v1" in failed.error
    assert failed.deploy.rolled_back
    assert _runs("recreate", "rolled_back") == before + 1
    # The previous container, under its own name again, answers again.
    back = engine.containers.get(name)
    assert back.id == old_id
    assert back.attrs["Config"]["Image"] == f"{WEB}:v1"
    assert await _answer(url) == "v1"
    assert [c.name for c in engine.containers.list(all=True) if c.name.startswith(name)] == [name]


async def test_stop_and_restart(
    rt: Runtime, podman_engine: PodmanEngine, engine: docker.DockerClient,
    web: tuple[str, int],
) -> None:  # fmt: skip
    name, port = web
    replica = Replica(rt, podman_engine.url)
    outcome, out = await replica.outcome(
        _request(ev.DockerSpec(operation="stop", container=name, stop_timeout=1))
    )
    assert outcome == Ack()
    assert type(out[-1].data) is ev.JobSucceeded
    assert engine.containers.get(name).attrs["State"]["Running"] is False

    probe = ev.HealthProbe(tcp=str(port), timeout=20, interval=0.2)
    outcome, out = await replica.outcome(
        _request(ev.DockerSpec(operation="restart", container=name, health=probe, stop_timeout=1))
    )
    assert outcome == Ack()
    assert type(out[-1].data) is ev.JobSucceeded, out[-1].data
    assert out[-1].data.deploy.health == "healthy"
    assert engine.containers.get(name).attrs["State"]["Running"] is True
    assert await _answer(f"http://127.0.0.1:{port}/health") == "v1"

    _, out = await replica.outcome(
        _request(ev.DockerSpec(operation="stop", container="no-such-container"))
    )
    assert type(out[-1].data) is ev.JobFailed
    assert out[-1].data.error == "no container named 'no-such-container' on the engine"


async def test_an_unreachable_engine_is_retried_without_a_failure(
    rt: Runtime, tmp_path: Any
) -> None:
    replica = Replica(rt, f"unix://{tmp_path}/nothing.sock")
    req = _request(ev.DockerSpec(operation="pull", image=BASE))
    outcome, out = await replica.outcome(req)
    assert isinstance(outcome, Nak)
    # Nothing was done: the attempt is handed back, and no end is recorded.
    assert [type(e.data) for e in out] == [ev.JobStarted]
