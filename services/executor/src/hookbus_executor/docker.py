"""Run one docker action against the executor's engine: pull an image, run a one-off
container, stop or restart one, or recreate one with a new image (dockerrecreate).

The Docker SDK is synchronous: each call runs in a thread, bounded by the engine's API
timeout. The first call of an action proves the engine answers; an engine that cannot be
reached then is retried (nothing was done), while one lost later fails the job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.utils import parse_repository_tag
from prometheus_client import Counter, Histogram

from hookbus_common import events as ev
from hookbus_common.errors import RetryableError

from . import health
from .dockerconfig import DockerSettings
from .shell import ShellResult
from .shell import _Capture as Capture

log = logging.getLogger(__name__)

T = TypeVar("T")

# A one-off container's state is looked at this often while it runs (at most).
_POLL_MAX = 1.0
# Labels hookbus puts on the containers it creates for ``run``.
JOB_LABEL = "io.hookbus.job"

RUNS = Counter(
    "hookbus_executor_docker_runs_total",
    "Docker and compose actions by kind, operation and outcome (succeeded, failed,"
    " rolled_back, timed_out, stopped, unreachable)",
    ["kind", "operation", "outcome"],
)
RUN_SECONDS = Histogram(
    "hookbus_executor_docker_run_seconds",
    "How long docker and compose actions took, by kind and operation (health waits and"
    " rollbacks included)",
    ["kind", "operation"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)


def count(kind: str, operation: str, outcome: str) -> None:
    RUNS.labels(kind, operation, outcome).inc()


class EngineUnreachable(RetryableError):
    """The engine did not answer the action's first call: nothing was done, and it may
    answer later."""


class DockerFailure(Exception):
    """The action cannot be done as asked (no such container or image, the engine
    refused): recorded as the job's failure, not retried."""


class DockerOutcome(NamedTuple):
    """What an action did: ``result`` for the job's fields (exit code, output), ``error``
    when it failed, ``deploy`` what it did to which container, and ``rolled_back`` the
    reason a recreate was undone (None when it was not)."""

    result: ShellResult | None
    error: str | None
    deploy: ev.DeployInfo
    rolled_back: str | None = None
    restored: bool = True


def describe(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc) or type(exc).__name__


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, requests.exceptions.ConnectionError | FileNotFoundError):
        return True
    # Raised by the SDK's client when it cannot ask the engine its API version.
    return isinstance(exc, docker.errors.DockerException) and not isinstance(
        exc, docker.errors.APIError | docker.errors.NotFound
    )


class Engine:
    """The executor's one client of its engine, opened when first needed; calls run in
    threads, and each container is acted on by one action of this executor at a time."""

    def __init__(self, settings: DockerSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self._environ = dict(environ)
        self._client: docker.DockerClient | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def host(self) -> str | None:
        """The engine's address as Compose should be told it (None: its own default)."""
        return self.settings.host or self._environ.get("DOCKER_HOST")

    def lock(self, container: str) -> asyncio.Lock:
        return self._locks.setdefault(container, asyncio.Lock())

    def _make(self) -> docker.DockerClient:
        timeout = int(self.settings.api_timeout_seconds)
        address = self.host or ""
        if address.startswith("unix://") and not os.path.exists(address[len("unix://") :]):
            # Asked first: the SDK leaves a socket unclosed when its connect fails.
            raise FileNotFoundError(f"no engine socket at {address}")
        if self.settings.host is not None:
            return docker.DockerClient(base_url=self.settings.host, timeout=timeout)
        return docker.from_env(environment=self._environ, timeout=timeout)

    def _client_now(self) -> docker.DockerClient:
        if self._client is None:
            self._client = self._make()
        return self._client

    async def call(self, fn: Callable[[docker.DockerClient], T], bound: float | None = None) -> T:
        """``fn(client)`` in a thread, bounded by ``bound`` seconds (default: the API
        timeout and a little more, for a call made of several requests)."""
        if bound is None:
            bound = self.settings.api_timeout_seconds * 2 + 5

        def run() -> T:
            return fn(self._client_now())

        try:
            async with asyncio.timeout(bound):
                return await asyncio.to_thread(run)
        except TimeoutError:
            raise DockerFailure(f"the engine did not answer within {bound:g} s") from None
        except requests.exceptions.ReadTimeout:
            raise DockerFailure(
                f"the engine did not answer within {self.settings.api_timeout_seconds:g} s"
            ) from None

    async def reach(self) -> None:
        """Prove the engine answers; EngineUnreachable if it does not."""
        try:
            await self.call(lambda c: c.ping())
        except Exception as exc:
            if isinstance(exc, DockerFailure) or _unreachable(exc):
                self.close()
                where = self.host or "the default socket"
                raise EngineUnreachable(
                    f"docker engine at {where} unreachable: {describe(exc)}"
                ) from exc
            raise

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    # ---------------------------------------------------------------- images

    async def image(self, ref: str, policy: str, timeout: float = 300.0) -> Any:  # noqa: ASYNC109
        """The image ``ref`` on the engine, pulled as ``policy`` says (missing, always,
        never) within ``timeout`` seconds."""
        if policy != "always":
            try:
                return await self.call(lambda c: c.images.get(ref))
            except docker.errors.ImageNotFound:
                if policy == "never":
                    raise DockerFailure(
                        f"image {ref} is not on the engine (and pull is never)"
                    ) from None
        return await self.pull(ref, timeout)

    async def pull(self, ref: str, timeout: float = 300.0) -> Any:  # noqa: ASYNC109
        """Pull ``ref``; a pull takes as long as the image's layers do, up to ``timeout``."""
        repository, tag = parse_repository_tag(ref)
        try:
            return await self.call(
                lambda c: c.images.pull(repository, tag=tag or "latest"), bound=timeout
            )
        except docker.errors.APIError as exc:
            raise DockerFailure(f"cannot pull {ref}: {describe(exc)}") from None

    async def container(self, name: str) -> Container:
        try:
            return await self.call(lambda c: c.containers.get(name))
        except docker.errors.NotFound:
            raise DockerFailure(f"no container named {name!r} on the engine") from None


def image_ref(container: Container) -> str | None:
    """The image reference the container was created from (as configured)."""
    ref = container.attrs.get("Config", {}).get("Image")
    return str(ref) if ref else None


def _ok() -> ShellResult:
    return ShellResult(
        exit_code=0, signal=None, timed_out=False, duration_ms=0.0, output="",
        output_bytes=0, truncated=False,
    )  # fmt: skip


async def pull(engine: Engine, spec: ev.DockerSpec) -> DockerOutcome:
    assert spec.image is not None
    image = await engine.pull(spec.image, spec.timeout)
    info = ev.DeployInfo(operation="pull", image_after=spec.image, image_after_id=image.id)
    return DockerOutcome(_ok(), None, info)


async def stop(engine: Engine, spec: ev.DockerSpec) -> DockerOutcome:
    assert spec.container is not None
    c = await engine.container(spec.container)
    await engine.call(lambda _: c.stop(timeout=spec.stop_timeout))
    info = ev.DeployInfo(
        operation="stop", container=spec.container, container_id=c.id,
        image_before=image_ref(c), image_before_id=c.attrs.get("Image"),
    )  # fmt: skip
    return DockerOutcome(_ok(), None, info)


async def container_health(
    engine: Engine, c: Container, probe: ev.HealthProbe | None, stop: asyncio.Event | None
) -> health.Health:
    """Wait until ``c`` is healthy: by ``probe`` when one is configured, else by the
    engine's own healthcheck when the engine runs one, else: still running a moment
    after it started. A container that stops running is unhealthy at once."""

    async def state() -> dict[str, Any]:
        await engine.call(lambda _: c.reload())
        return dict(c.attrs.get("State") or {})

    async def look() -> health.Verdict:
        s = await state()
        if not s.get("Running"):
            return health.Verdict(
                "unhealthy", f"the container is not running (exit code {s.get('ExitCode')})"
            )
        if probe is not None:
            return await health.probe(probe)
        status = (s.get("Health") or {}).get("Status") or ""
        if status == "healthy":
            return health.Verdict("healthy", "the engine's healthcheck passed")
        if status == "unhealthy":
            return health.Verdict("unhealthy", "the engine's healthcheck failed")
        return health.Verdict("waiting", f"the engine's healthcheck says {status!r}")

    if probe is not None:
        return await health.wait_for(look, timeout=probe.timeout, interval=probe.interval,
                                     stop=stop)  # fmt: skip
    s = await state()
    if (s.get("Health") or {}).get("Status"):
        defaults = ev.HealthProbe()
        return await health.wait_for(
            look, timeout=defaults.timeout, interval=defaults.interval, stop=stop
        )
    # No check at all: running, and still running a second later.
    await asyncio.sleep(1.0)
    verdict = await look()
    if verdict.status == "unhealthy":
        return health.Health("unhealthy", verdict.detail)
    return health.Health("healthy", "running")


async def restart(engine: Engine, spec: ev.DockerSpec, stop: asyncio.Event) -> DockerOutcome:
    assert spec.container is not None
    c = await engine.container(spec.container)
    await engine.call(lambda _: c.restart(timeout=spec.stop_timeout))
    checked = await container_health(engine, c, spec.health, stop)
    info = ev.DeployInfo(
        operation="restart", container=spec.container, container_id=c.id,
        image_before=image_ref(c), image_before_id=c.attrs.get("Image"),
        image_after=image_ref(c), image_after_id=c.attrs.get("Image"),
        health="running" if checked.ok and spec.health is None else checked.status,
    )  # fmt: skip
    if checked.ok:
        return DockerOutcome(_ok(), None, info)
    return DockerOutcome(None, f"restarted, but not healthy: {checked.detail}", info)


async def run(
    engine: Engine,
    spec: ev.DockerSpec,
    *,
    name: str,
    env: Mapping[str, str],
    labels: Mapping[str, str],
    max_output_bytes: int,
    stop: asyncio.Event,
    clock: Callable[[], float] = time.monotonic,
) -> DockerOutcome:
    """A one-off container of ``spec.image`` running ``spec.command``, waited for (up to
    ``spec.timeout``, then stopped), its logs kept (bounded) and the container removed."""
    assert spec.image is not None
    image = await engine.image(spec.image, spec.pull, spec.timeout)
    # A container of the same name is this job's, left by an earlier try.
    with contextlib.suppress(docker.errors.NotFound):
        await engine.call(lambda cl: cl.containers.get(name).remove(force=True))

    def create(cl: docker.DockerClient) -> Container:
        return cl.containers.create(
            spec.image, command=spec.command, environment=dict(env), labels=dict(labels),
            name=name,
        )  # fmt: skip

    try:
        c: Container = await engine.call(create)
    except docker.errors.APIError as exc:
        raise DockerFailure(f"cannot create the container: {describe(exc)}") from None
    started = clock()
    timed_out = stopped = False
    ran_until: float | None = None
    try:
        await engine.call(lambda _: c.start())
        pause = 0.05
        while True:
            await engine.call(lambda _: c.reload())
            state = c.attrs.get("State") or {}
            if not state.get("Running") and state.get("Status") not in ("created", "configured"):
                break
            if stop.is_set() or clock() - started >= spec.timeout:
                stopped = stop.is_set()
                timed_out = not stopped
                ran_until = clock()
                log.warning("container %s %s; stopping it", name,
                            "stopped" if stopped else f"timed out after {spec.timeout:g}s")  # fmt: skip
                await engine.call(lambda _: c.stop(timeout=spec.stop_timeout))
                continue
            try:
                async with asyncio.timeout(pause):
                    await stop.wait()
            except TimeoutError:
                pass
            pause = min(pause * 2, _POLL_MAX)
        exit_code = int(state.get("ExitCode", 0))
        capture = Capture(max_output_bytes)

        def read_logs(_: docker.DockerClient) -> None:
            for chunk in c.logs(stdout=True, stderr=True, stream=True, follow=False):
                capture.feed(chunk)

        await engine.call(read_logs)
    finally:
        try:
            await engine.call(lambda _: c.remove(force=True))
        except Exception as exc:
            log.warning("could not remove container %s: %s", name, describe(exc))
    done = clock()
    output, truncated = capture.render()
    result = ShellResult(
        exit_code=None if timed_out or stopped else exit_code, signal=None,
        timed_out=timed_out, duration_ms=((ran_until or done) - started) * 1000.0,
        output=output, output_bytes=capture.total, truncated=truncated,
        elapsed_ms=(done - started) * 1000.0, stopped=stopped,
    )  # fmt: skip
    info = ev.DeployInfo(operation="run", container=name, container_id=c.id,
                         image_after=spec.image, image_after_id=image.id)  # fmt: skip
    return DockerOutcome(result, None, info)


def outcome_name(out: DockerOutcome) -> str:
    """How an action ended, as the runs counter names it."""
    if out.rolled_back is not None:
        return "rolled_back"
    r = out.result
    if r is not None and r.stopped:
        return "stopped"
    if r is not None and r.timed_out:
        return "timed_out"
    return "succeeded" if r is not None and r.ok else "failed"


@contextlib.asynccontextmanager
async def heartbeat(
    on_progress: Callable[[], Awaitable[None]], interval: float
) -> AsyncIterator[None]:
    """Tell ``on_progress`` every ``interval`` seconds that the action goes on."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await on_progress()
            except Exception:
                log.exception("on_progress callback failed; the action goes on")

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})
