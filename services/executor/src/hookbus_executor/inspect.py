"""Projects made from images: an image push for an image no project names becomes a
project by inspecting the image on the executor's engine, and its first deploy.

What the image says, and how the project is made of it:

- its first exposed TCP port (``EXPOSE 8080``) is the project's ``port``, published on
  127.0.0.1 at a free port of this machine (the label ``io.hookbus.host-port`` chooses it);
- its health is probed over HTTP at the path the label ``io.hookbus.health.path`` names,
  else by a TCP connection to the published port (an image without a port: only that the
  container keeps running); its own HEALTHCHECK is recorded (``image_healthcheck``);
- an image the engine does not have (and cannot pull) still makes a project: port 0, no
  health, ``inspected`` false with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Literal

import asyncpg
import docker.errors
import msgspec

from hookbus_common import events as ev

from .docker import DockerFailure, DockerOutcome, Engine, container_health, describe
from .shell import ShellResult

log = logging.getLogger(__name__)

HEALTH_PATH_LABEL = "io.hookbus.health.path"
HOST_PORT_LABEL = "io.hookbus.host-port"
PROJECT_LABEL = "io.hookbus.project"


class ImageFacts(msgspec.Struct, frozen=True):
    inspected: bool
    port: int = 0
    labels: dict[str, str] = {}
    healthcheck: list[str] = []
    reason: str | None = None


def facts_of(config: dict[str, Any]) -> ImageFacts:
    """What an image's config (``docker image inspect``'s ``Config``) says of it."""
    ports = sorted(
        int(p.split("/")[0])
        for p in (config.get("ExposedPorts") or {})
        if p.endswith("/tcp") or "/" not in p
    )
    labels = {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}
    test = (config.get("Healthcheck") or {}).get("Test") or []
    return ImageFacts(inspected=True, port=ports[0] if ports else 0, labels=labels,
                      healthcheck=[str(t) for t in test])  # fmt: skip


async def inspect_image(engine: Engine, ref: str, timeout: float) -> ImageFacts:  # noqa: ASYNC109
    """The image's facts; an image that cannot be had gives ``inspected`` false."""
    try:
        image = await engine.image(ref, "missing", timeout)
    except (DockerFailure, docker.errors.APIError) as exc:
        return ImageFacts(inspected=False, reason=f"cannot inspect {ref}: {describe(exc)}")
    return facts_of(dict(image.attrs.get("Config") or {}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_of(facts: ImageFacts, host_port: int, timeout: float) -> ev.HealthProbe | None:
    if not facts.port:
        return None
    path = facts.labels.get(HEALTH_PATH_LABEL)
    if path:
        url = f"http://127.0.0.1:{host_port}/{path.lstrip('/')}"
        return ev.HealthProbe(http=url, timeout=timeout, interval=0.5)
    return ev.HealthProbe(tcp=f"127.0.0.1:{host_port}", timeout=timeout, interval=0.5)


def project_of(spec: ev.ProjectSpec, facts: ImageFacts, job_id: str) -> ev.ProjectCreated:
    host_port = 0
    if facts.port:
        chosen = facts.labels.get(HOST_PORT_LABEL, "")
        host_port = int(chosen) if chosen.isdigit() else free_port()
    container = spec.container or f"{spec.project}-{spec.stage}"
    return ev.ProjectCreated(
        project=spec.project, repository=spec.repository, image=spec.image,
        stages=[ev.ProjectStage(name=spec.stage, container=container)],
        port=facts.port, host_port=host_port,
        health=health_of(facts, host_port, spec.health_timeout), labels=facts.labels,
        image_healthcheck=facts.healthcheck, inspected=facts.inspected, reason=facts.reason,
        job_id=job_id,
    )  # fmt: skip


async def existing(conn: asyncpg.Connection, repository: str) -> ev.ProjectCreated | None:
    """The project already made of ``repository`` (a push that raced ours made it)."""
    row = await conn.fetchrow(
        "SELECT project, repository, image, port, host_port, health, stages, labels,"
        " inspected, reason FROM projects WHERE repository = $1",
        repository,
    )
    if row is None:
        return None
    return ev.ProjectCreated(
        project=row["project"], repository=row["repository"], image=row["image"],
        port=row["port"], host_port=row["host_port"],
        health=None if row["health"] is None
        else msgspec.json.decode(row["health"], type=ev.HealthProbe),
        stages=msgspec.json.decode(row["stages"], type=list[ev.ProjectStage]),
        labels=msgspec.json.decode(row["labels"], type=dict[str, str]),
        inspected=row["inspected"], reason=row["reason"],
    )  # fmt: skip


def pull_for(repository: str) -> Literal["missing", "always"]:
    """How a made project's redeploy gets its image: a registry on the engine's machine
    (a local build) has nothing to pull from; any other may hold a new image under an old
    tag."""
    first = repository.split("/", 1)[0]
    local = first in ("localhost", "127.0.0.1") or "/" not in repository
    return "missing" if local else "always"


def _ok() -> ShellResult:
    return ShellResult(
        exit_code=0, signal=None, timed_out=False, duration_ms=0.0, output="",
        output_bytes=0, truncated=False,
    )  # fmt: skip


async def deploy_new(
    engine: Engine, project: ev.ProjectCreated, image: str, container: str,
    stop: asyncio.Event, timeout: float,  # noqa: ASYNC109
) -> DockerOutcome:  # fmt: skip
    """Create and start the stage's first container, and wait for its health; one that is
    not healthy is removed (there is nothing to roll back to)."""
    info = ev.DeployInfo(operation="create", container=container, image_after=image)
    img = await engine.image(image, "missing", timeout)
    info = msgspec.structs.replace(info, image_after_id=img.id)
    ports = {f"{project.port}/tcp": ("127.0.0.1", project.host_port)} if project.port else {}

    def create(c: docker.DockerClient) -> Any:
        return c.containers.create(
            image, name=container, detach=True, ports=ports,
            labels={PROJECT_LABEL: project.project},
        )  # fmt: skip

    new = await engine.call(create)
    try:
        await engine.call(lambda _: new.start())
    except docker.errors.APIError as exc:
        await engine.call(lambda _: new.remove(force=True))
        return DockerOutcome(None, f"the container could not be started: {describe(exc)}", info)
    checked = await container_health(engine, new, project.health, stop)
    info = msgspec.structs.replace(info, container_id=new.id)
    if checked.ok:
        health = "running" if project.health is None else "healthy"
        log.info("project %s deployed: %s runs %s", project.project, container, image)
        return DockerOutcome(_ok(), None, msgspec.structs.replace(info, health=health))
    await engine.call(lambda _: new.remove(force=True))
    info = msgspec.structs.replace(info, health=checked.status, container_id=None)
    return DockerOutcome(None, f"not healthy: {checked.detail}; the container was removed", info)
