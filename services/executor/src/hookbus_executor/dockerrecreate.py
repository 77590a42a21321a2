"""Recreate a container with a new image and its own configuration, and put the previous
one back when the new one is not healthy in time.

The new container's configuration is the old one's (as the engine reports it) with what
the old *image* contributed left out, so that the new image's defaults apply: an
environment variable, command, entrypoint, label, port or volume the old image declared
is not pinned on the new container; what was set on the container itself is kept. The
host configuration (ports, mounts, restart policy, resources) and the networks (with
their aliases) are kept as they are. Until the new container is found healthy, the old
one is kept, stopped, under ``<name>-hookbus-previous``; then it is removed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import msgspec
from docker.models.containers import Container

from hookbus_common import events as ev

from .docker import DockerFailure, DockerOutcome, Engine, container_health, describe, image_ref
from .shell import ShellResult

log = logging.getLogger(__name__)

PREVIOUS_SUFFIX = "-hookbus-previous"
# Network modes that are not networks one can attach to.
_NOT_NETWORKS = ("host", "none", "bridge", "default")


def _env_dict(env: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def create_config(
    attrs: dict[str, Any], old_image: dict[str, Any], new_image_ref: str
) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for ``attrs``'s container (as inspected),
    with ``new_image_ref``, leaving out what the old image's config (``old_image``)
    contributed; networks beyond the first are connected after creation."""
    cid = str(attrs.get("Id") or "")
    config = copy.deepcopy(attrs.get("Config") or {})
    img = old_image or {}
    config["Image"] = new_image_ref
    if config.get("Hostname") and cid.startswith(str(config["Hostname"])):
        del config["Hostname"]  # the engine's default: the container's id
    image_env = _env_dict(img.get("Env"))
    env = [
        f"{k}={v}"
        for k, v in _env_dict(config.get("Env")).items()
        if image_env.get(k) != v and not (k == "HOSTNAME" and cid.startswith(v))
    ]
    config["Env"] = env
    for key in ("Cmd", "Entrypoint", "WorkingDir", "User", "Healthcheck", "StopSignal"):
        value = config.get(key)
        if not value or value == img.get(key) or (key == "WorkingDir" and value == "/"):
            config.pop(key, None)
    if not config.get("StopTimeout"):
        config.pop("StopTimeout", None)
    for key in ("Labels", "ExposedPorts", "Volumes"):
        mine = config.get(key) or {}
        theirs = img.get(key) or {}
        kept = {k: v for k, v in mine.items() if k not in theirs or theirs[k] != v}
        if kept:
            config[key] = kept
        else:
            config.pop(key, None)
    host = copy.deepcopy(attrs.get("HostConfig") or {})
    host.pop("ContainerIDFile", None)
    # Podman reports ulimits by their kernel names (RLIMIT_NOFILE) and takes only the
    # short ones (nofile), as Docker reports and takes them.
    for limit in host.get("Ulimits") or []:
        limit["Name"] = str(limit.get("Name", "")).lower().removeprefix("rlimit_")
    # Named volumes the container got without a bind (anonymous, or from the image's
    # VOLUME), so the new one sees the same data.
    binds = list(host.get("Binds") or [])
    bound = {b.split(":")[1] for b in binds if b.count(":") >= 1}
    bound |= {str(m.get("Target")) for m in host.get("Mounts") or []}
    for m in attrs.get("Mounts") or []:
        if m.get("Type") == "volume" and m.get("Name") and m.get("Destination") not in bound:
            binds.append(f"{m['Name']}:{m['Destination']}" + ("" if m.get("RW", True) else ":ro"))
    if binds:
        host["Binds"] = binds
    config["HostConfig"] = host
    networks = networks_of(attrs)
    if networks:
        first, endpoint = networks[0]
        config["NetworkingConfig"] = {"EndpointsConfig": {first: endpoint}}
    return config


def networks_of(attrs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The networks the container is attached to, with its aliases (less the engine's
    default alias, its short id) and static addresses, in a stable order: the host
    config's network mode first."""
    cid = str(attrs.get("Id") or "")
    mode = str((attrs.get("HostConfig") or {}).get("NetworkMode") or "")
    if mode.startswith("container:") or mode in ("host", "none"):
        return []
    found = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    out = []
    for name, net in found.items():
        endpoint: dict[str, Any] = {}
        aliases = [a for a in net.get("Aliases") or [] if not cid.startswith(a)]
        if aliases:
            endpoint["Aliases"] = aliases
        if net.get("IPAMConfig"):
            endpoint["IPAMConfig"] = net["IPAMConfig"]
        if net.get("Links"):
            endpoint["Links"] = net["Links"]
        out.append((name, endpoint))
    out.sort(key=lambda item: (item[0] != mode, item[0]))
    return out


def _connect(
    container_id: str, network: str, endpoint: dict[str, Any]
) -> Callable[[docker.DockerClient], None]:
    def connect(c: docker.DockerClient) -> None:
        c.api.connect_container_to_network(
            container_id, network, aliases=endpoint.get("Aliases"), links=endpoint.get("Links")
        )

    return connect


async def _remove(engine: Engine, container: Container) -> None:
    try:
        await engine.call(lambda _: container.remove(force=True))
    except Exception as exc:
        log.warning("could not remove container %s: %s", container.name, describe(exc))


async def _restore(engine: Engine, old: Container, name: str, was_running: bool) -> None:
    """Put ``old`` back under ``name``, running again if it was."""
    await engine.call(lambda _: old.rename(name))
    if was_running:
        await engine.call(lambda _: old.start())


async def _leftover(engine: Engine, name: str) -> Container | None:
    """A previous container left under its spare name by a recreate that never finished
    (its executor died): put back, so it is what gets recreated."""
    try:
        spare: Container = await engine.call(lambda c: c.containers.get(name + PREVIOUS_SUFFIX))
    except docker.errors.NotFound:
        return None
    log.warning("container %s was left as %s by an unfinished recreate; putting it back",
                name, spare.name)  # fmt: skip
    await _restore(engine, spare, name, was_running=True)
    return spare


def _ok() -> ShellResult:
    return ShellResult(
        exit_code=0, signal=None, timed_out=False, duration_ms=0.0, output="",
        output_bytes=0, truncated=False,
    )  # fmt: skip


async def recreate(engine: Engine, spec: ev.DockerSpec, stop: asyncio.Event) -> DockerOutcome:
    """Replace container ``spec.container`` with one of ``spec.image`` and the same
    configuration; if it is not healthy in time, put the old one back."""
    assert spec.container is not None
    assert spec.image is not None
    name = spec.container
    try:
        old = await engine.container(name)
        await _leftover_cleanup(engine, name)
    except DockerFailure:
        spare = await _leftover(engine, name)
        if spare is None:
            raise
        old = await engine.container(name)
    attrs = old.attrs
    before, before_id = image_ref(old), attrs.get("Image")
    image = await engine.image(spec.image, spec.pull, spec.timeout)
    try:
        old_image = await engine.call(lambda c: c.images.get(str(before_id)))
        old_image_config = old_image.attrs.get("Config") or {}
    except docker.errors.ImageNotFound:
        old_image_config = {}
    config = create_config(attrs, old_image_config, spec.image)
    extra_networks = networks_of(attrs)[1:]
    was_running = bool((attrs.get("State") or {}).get("Running"))
    info = ev.DeployInfo(
        operation="recreate", container=name, image_before=before, image_before_id=before_id,
        image_after=spec.image, image_after_id=image.id,
    )  # fmt: skip

    await engine.call(lambda _: old.stop(timeout=spec.stop_timeout))
    await engine.call(lambda _: old.rename(name + PREVIOUS_SUFFIX))
    new: Container | None = None
    try:
        created = await engine.call(lambda c: c.api.create_container_from_config(config, name=name))
        new = await engine.call(lambda c: c.containers.get(created["Id"]))
        for net, endpoint in extra_networks:
            await engine.call(_connect(created["Id"], net, endpoint))
        await engine.call(lambda _: new.start() if new is not None else None)
    except (docker.errors.APIError, DockerFailure) as exc:
        reason = f"the new container could not be started: {describe(exc)}"
        checked = None
    else:
        checked = await container_health(engine, new, spec.health, stop)
        reason = f"not healthy: {checked.detail}"
        if checked.status == "timed_out":
            timeout = (spec.health or ev.HealthProbe()).timeout
            reason = f"not healthy within {timeout:g} s: {checked.detail}"
    if checked is not None and checked.ok:
        await _remove(engine, old)
        info = _replace(info, container_id=new.id if new else None,
                        health="running" if spec.health is None else "healthy")  # fmt: skip
        log.info("container %s recreated with %s", name, spec.image)
        return DockerOutcome(_ok(), None, info)

    # Put the previous container back.
    log.warning("recreating %s with %s failed (%s); rolling back to %s", name, spec.image,
                reason, before)  # fmt: skip
    if new is not None:
        await _remove(engine, new)
    restored = True
    try:
        await _restore(engine, old, name, was_running)
        if was_running and spec.health is not None:
            back = await container_health(engine, old, spec.health, None)
            restored = back.ok
    except Exception as exc:
        restored = False
        log.error("could not put container %s back: %s", name, describe(exc))
    status = "stopped" if checked is not None and checked.status == "stopped" else None
    info = _replace(
        info, container_id=old.id, rolled_back=True,
        health=status or (checked.status if checked is not None else "unhealthy"),
    )  # fmt: skip
    result = None
    if status == "stopped":
        result = ShellResult(
            exit_code=None, signal=None, timed_out=False, duration_ms=0.0, output="",
            output_bytes=0, truncated=False, stopped=True,
        )  # fmt: skip
    error = f"{reason}; rolled back to {before}" + ("" if restored else " (not healthy again)")
    return DockerOutcome(result, error, info, rolled_back=reason, restored=restored)


async def _leftover_cleanup(engine: Engine, name: str) -> None:
    """A spare left beside a container that exists: the earlier recreate got as far as
    the new container, so the spare is the old one's, no longer needed."""
    try:
        spare: Container = await engine.call(lambda c: c.containers.get(name + PREVIOUS_SUFFIX))
    except docker.errors.NotFound:
        return
    log.warning("removing %s, left by an unfinished recreate", spare.name)
    await _remove(engine, spare)


def _replace(info: ev.DeployInfo, **changes: Any) -> ev.DeployInfo:
    return msgspec.structs.replace(info, **changes)


def rolled_back_event(
    cause: ev.Event[ev.JobRequestedV2], attempt: int, out: DockerOutcome
) -> ev.Event[ev.DeployRolledBack]:
    """The record of a rollback, one per attempt of the job."""
    req = cause.data
    d = out.deploy
    return ev.make_event(
        ev.DeployRolledBack(
            job_id=req.job_id, rule=req.rule, container=d.container or "", attempt=attempt,
            reason=out.rolled_back or "", image_before=d.image_before,
            image_after=d.image_after, restored=out.restored,
        ),
        source="/hookbus/executor",
        id=ev.derived_id(cause.id, f"rolled_back/{attempt}"),
        cause=cause,
        subject=req.job_id,
    )  # fmt: skip
