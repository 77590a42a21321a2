"""Projects and stages: an image push (any webhook that names a pushed image: the image-push
URL's, a registry's) redeploys the containers of the project whose image it is, in the
stage whose tag globs the pushed tag matches.

``[projects.<name>]`` names an image repository and how its containers are recreated;
``[projects.<name>.stages.<stage>]`` says which tags go to that stage, whether a push
deploys by itself (``auto_deploy``) and how many containers the stage runs
(``max_instances``: ``<container>`` alone, or ``<container>-1`` … ``-N``). Each container
is redeployed by a docker ``recreate`` job, health-checked and rolled back like any other
(docs/actions.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

import msgspec

from hookbus_common import events as ev
from hookbus_common.events import Event, OnInterrupt, WebhookReceived
from hookbus_common.settings import STRUCT, PositiveFloat

SOURCE = "/hookbus/router"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# Docker Hub's names: how a push names an image, and how a project may.
_HUB = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")


class ProjectHealth(msgspec.Struct, **STRUCT):
    http: str | None = None
    tcp: str | int | None = None
    timeout: PositiveFloat = 60.0
    interval: PositiveFloat = 1.0


class Stage(msgspec.Struct, **STRUCT):
    # Globs on the pushed tag (any may match): "v*", ["main", "main-*"].
    tags: str | list[str] = "*"
    # A matching push redeploys by itself; false: the push is only recorded.
    auto_deploy: bool = True
    # The stage's container; default: "<project>-<stage>".
    container: Annotated[str, msgspec.Meta(pattern=_NAME)] | None = None
    # Containers of the stage: 1 is <container>; N is <container>-1 … <container>-N.
    max_instances: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    health: ProjectHealth | None = None


class Project(msgspec.Struct, **STRUCT):
    # The image repository: "acme/web" (Docker Hub), "registry.example.com/acme/web".
    image: Annotated[str, msgspec.Meta(min_length=1)]
    stages: Annotated[dict[str, Stage], msgspec.Meta(min_length=1)]
    health: ProjectHealth | None = None
    pull: Literal["missing", "always", "never"] = "always"
    stop_timeout: Annotated[int, msgspec.Meta(ge=0)] = 10
    on_interrupt: OnInterrupt = "record"


def _repository(name: str) -> str:
    """A repository as compared: Docker Hub's prefix and ``library/`` dropped."""
    for hub in _HUB:
        if name.startswith(hub):
            name = name[len(hub) :]
            break
    return name.removeprefix("library/")


def pushed_repository(image: ev.ImageInfo) -> tuple[str, str]:
    """The pushed image's repository, with and without its registry."""
    full = _repository(f"{image.registry}/{image.path}")
    return full, _repository(image.path)


def pushed_reference(image: ev.ImageInfo) -> str:
    """What to deploy: the pushed digest when the push names one, else its tag."""
    base = f"{image.registry}/{image.path}"
    return f"{base}@{image.digest}" if image.digest else f"{base}:{image.tag}"


def _names_registry(name: str) -> bool:
    first = name.split("/", 1)[0]
    return "/" in name and ("." in first or ":" in first or first == "localhost")


def find(projects: Mapping[str, Project], image: ev.ImageInfo) -> list[tuple[str, str]]:
    """(project, stage) for each project of the pushed image: its first stage (in the
    order written) one of whose tag globs matches the pushed tag. A project naming a
    registry takes that registry's pushes only; one naming a path, any registry's."""
    if image.tag is None:
        return []
    full, short = pushed_repository(image)
    found = []
    for name, project in projects.items():
        want = _repository(project.image)
        if want != (full if _names_registry(want) else short):
            continue
        for stage_name, stage in project.stages.items():
            globs = [stage.tags] if isinstance(stage.tags, str) else stage.tags
            if any(fnmatchcase(image.tag, g) for g in globs):
                found.append((name, stage_name))
                break
    return found


def containers(project: str, stage_name: str, stage: Stage) -> list[str]:
    base = stage.container or f"{project}-{stage_name}"
    if stage.max_instances == 1:
        return [base]
    return [f"{base}-{i}" for i in range(1, stage.max_instances + 1)]


def _health(h: ProjectHealth | None) -> ev.HealthProbe | None:
    if h is None:
        return None
    tcp = None if h.tcp is None else str(h.tcp)
    return ev.HealthProbe(http=h.http, tcp=tcp, timeout=h.timeout, interval=h.interval)


def requests(
    projects: Mapping[str, Project],
    event: Event[Any],
    hook: WebhookReceived,
    context: dict[str, str],
) -> list[Event[Any]]:
    """The recreate jobs an image push makes: one per container of each matched stage
    that deploys by itself. Ids derive from the routed event's, like a rule's."""
    if hook.image is None or not projects:
        return []
    image = pushed_reference(hook.image)
    out: list[Event[Any]] = []
    for name, stage_name in find(projects, hook.image):
        project = projects[name]
        stage = project.stages[stage_name]
        if not stage.auto_deploy:
            continue
        rule = f"project.{name}.{stage_name}"
        for i, container in enumerate(containers(name, stage_name, stage)):
            step = f"project/{name}/{stage_name}/{i}"
            spec = ev.DockerSpec(
                operation="recreate", container=container, image=image, pull=project.pull,
                health=_health(stage.health or project.health), stop_timeout=project.stop_timeout,
            )  # fmt: skip
            data = ev.JobRequestedV2(
                job_id=ev.derived_id(event.id, f"job/{step}", prefix="job"), rule=rule,
                webhook_id=event.id, spec=spec, context=context, payload=hook.payload,
                on_interrupt=project.on_interrupt,
            )  # fmt: skip
            out.append(
                ev.make_event(
                    data, source=SOURCE, id=ev.derived_id(event.id, f"request/{step}"), cause=event
                )
            )
    return out


def check(projects: Mapping[str, Project]) -> str | None:
    """What is wrong with the projects, naming the key, if anything."""
    for name, project in projects.items():
        if not re.match(_NAME, name):
            return f"projects.{name}: a project name is letters, digits, '.', '_' and '-'"
        for stage_name, stage in project.stages.items():
            if not re.match(_NAME, stage_name):
                return f"projects.{name}.stages.{stage_name}: not a valid stage name"
            for h, at in (
                (stage.health, f"stages.{stage_name}.health"),
                (project.health, "health"),
            ):
                if h is not None and (h.http is None) == (h.tcp is None):
                    return f"projects.{name}.{at}: takes exactly one of http and tcp"
    return None
