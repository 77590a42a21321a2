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

import hashlib
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

import asyncpg
import msgspec

from hookbus_common import events as ev
from hookbus_common.events import ConcurrencyStrategy, Event, OnInterrupt, WebhookReceived
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
    # How the deploys of one stage share it (docs/jobs.md): "parallel" (no limit),
    # "queue", "latest" (a push during a deploy waits; only the newest deploys next) or
    # "cancel-running"; the key is "project-<name>-<stage>".
    concurrency: ConcurrencyStrategy = "parallel"


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
    creation: Creation | None = None,
) -> list[Event[Any]]:
    """The recreate jobs an image push makes: one per container of each matched stage
    that deploys by itself (and, with ``creation``, the job that makes a project of the
    image). Ids derive from the routed event's, like a rule's."""
    if hook.image is None:
        return []
    if creation is not None:
        return [creation_request(event, hook, context, creation)]
    if not projects:
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
            limit = None
            if project.concurrency != "parallel":
                key = f"project-{name}-{stage_name}"
                limit = ev.Concurrency(key=key, strategy=project.concurrency)
            data = ev.JobRequestedV2(
                job_id=ev.derived_id(event.id, f"job/{step}", prefix="job"), rule=rule,
                webhook_id=event.id, spec=spec, context=context, payload=hook.payload,
                on_interrupt=project.on_interrupt, concurrency=limit,
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


# ------------------------------------------------------------ projects made from images


class AutoCreate(msgspec.Struct, **STRUCT):
    """``[projects] auto_create`` (and ``auto_*`` defaults): an image push for an image no
    project names makes a project of it (the executor inspects the image and deploys it
    to ``stage``; docs/actions.md)."""

    enabled: bool = True
    stage: Annotated[str, msgspec.Meta(pattern=_NAME)] = "dev"
    health_timeout: PositiveFloat = 30.0


class Creation(msgspec.Struct, frozen=True):
    """The project an image push makes: its name, and the settings it is made with."""

    name: str
    settings: AutoCreate


def names_repository(projects: Mapping[str, Project], image: ev.ImageInfo) -> bool:
    """Whether some project is of the pushed image's repository, whatever its tag."""
    full, short = pushed_repository(image)
    for project in projects.values():
        want = _repository(project.image)
        if want == (full if _names_registry(want) else short):
            return True
    return False


def project_name(image: ev.ImageInfo, taken: Iterable[str]) -> str:
    """A project's name for the pushed repository: its last path part, made a valid name,
    with a short hash of the repository when another project has that name."""
    full, _ = pushed_repository(image)
    last = re.sub(r"[^A-Za-z0-9_.-]", "-", full.rsplit("/", 1)[-1]).strip("-._") or "app"
    if last not in set(taken):
        return last
    return f"{last}-{hashlib.sha256(full.encode()).hexdigest()[:6]}"


def creation_request(
    event: Event[Any], hook: WebhookReceived, context: dict[str, str], creation: Creation
) -> Event[Any]:
    """The job that makes a project of the pushed image and deploys it to its stage."""
    assert hook.image is not None
    name, auto = creation.name, creation.settings
    full, _ = pushed_repository(hook.image)
    rule = f"project.{name}.{auto.stage}"
    step = f"project/{name}/create"
    spec = ev.ProjectSpec(
        project=name, image=pushed_reference(hook.image), repository=full, stage=auto.stage,
        container=f"{name}-{auto.stage}", health_timeout=auto.health_timeout,
    )  # fmt: skip
    data = ev.JobRequestedV2(
        job_id=ev.derived_id(event.id, f"job/{step}", prefix="job"), rule=rule,
        webhook_id=event.id, spec=spec, context=context, payload=hook.payload,
        # A push that comes while the project is made waits for it (then redeploys).
        concurrency=ev.Concurrency(key=f"project-{name}-{auto.stage}", strategy="queue"),
    )  # fmt: skip
    return ev.make_event(
        data, source=SOURCE, id=ev.derived_id(event.id, f"request/{step}"), cause=event
    )


class Created:
    """The projects made from images, read from Postgres (the ``projects`` read model)
    for each image push; and whether a push makes a new one."""

    def __init__(self, pool: asyncpg.Pool, settings: AutoCreate) -> None:
        self.pool = pool
        self.settings = settings

    async def resolve(
        self, configured: Mapping[str, Project], image: ev.ImageInfo
    ) -> tuple[dict[str, Project], Creation | None]:
        """The projects the push is routed to, and the project job it makes: of the
        project made of its repository before, or of a new one when no project names it."""
        projects = dict(configured)
        if image.tag is None and image.digest is None:
            return projects, None
        full, _ = pushed_repository(image)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT project, stages FROM projects WHERE repository = $1", full
            )
            if row is not None:
                # A project made from an image is deployed by the executor, which knows
                # it (and makes its container anew when its first deploy left none).
                stages = msgspec.json.decode(row["stages"], type=list[ev.ProjectStage])
                stage = stages[0].name if stages else self.settings.stage
                settings = msgspec.structs.replace(self.settings, stage=stage)
                return projects, Creation(row["project"], settings)
            if not self.settings.enabled or names_repository(configured, image):
                return projects, None
            candidate = project_name(image, configured)
            clash = await conn.fetchval("SELECT 1 FROM projects WHERE project = $1", candidate)
        name = project_name(image, [*configured, candidate]) if clash else candidate
        return projects, Creation(name, self.settings)
