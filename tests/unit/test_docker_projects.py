"""Projects and stages: which image pushes redeploy which containers, with what."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_router import config as router_config
from hookbus_router.projects import Project, Stage, find
from hookbus_router.routing import route

CONFIG = """
[projects.web]
image = "registry.example.com/acme/web"
health = { http = "http://127.0.0.1:8080/health", timeout = 30 }
stop_timeout = 3

[projects.web.stages.production]
tags = ["v*"]
max_instances = 2

[projects.web.stages.staging]
tags = "main-*"
container = "web-next"
health = { tcp = 8080 }

[projects.web.stages.preview]
tags = "pr-*"
auto_deploy = false

[projects.worker]
image = "acme/worker"
pull = "never"

[projects.worker.stages.all]
"""


def _push(image: str, path: str, tag: str | None, registry: str = "registry.example.com",
          digest: str | None = None) -> ev.Event[ev.WebhookReceived]:  # fmt: skip
    info = ev.ImageInfo(
        registry=registry, namespace=path.rsplit("/", 1)[0], repository=path.rsplit("/", 1)[-1],
        path=path, canonical=image, tag=tag, digest=digest,
    )  # fmt: skip
    return ev.make_event(
        ev.WebhookReceived(
            source="image-push", kind="image-push", event_type="push", image=info,
            repository=path, tag=tag, payload=msgspec.Raw(b'{"tag": "x"}'),
        ),
        source="/test",
    )  # fmt: skip


@pytest.fixture
def projects(tmp_path: Path) -> dict[str, Project]:
    f = tmp_path / "hookbus.toml"
    f.write_text(CONFIG)
    return router_config.load(f, {}).projects


def _jobs(routed: list[ev.Event[Any]]) -> list[ev.JobRequestedV2]:
    return [e.data for e in routed if isinstance(e.data, ev.JobRequestedV2)]


def test_a_push_of_a_release_tag_recreates_every_production_instance(
    projects: dict[str, Project],
) -> None:
    push = _push("registry.example.com/acme/web:v1.4", "acme/web", "v1.4")
    routed = route([], push, record_unmatched=False, projects=projects)
    assert isinstance(routed[0].data, ev.WebhookRouted)
    jobs = _jobs(routed)
    assert [j.rule for j in jobs] == ["project.web.production"] * 2
    assert [j.spec.container for j in jobs] == ["web-production-1", "web-production-2"]  # type: ignore[union-attr]
    spec = jobs[0].spec
    assert spec == ev.DockerSpec(
        operation="recreate", container="web-production-1",
        image="registry.example.com/acme/web:v1.4", pull="always", stop_timeout=3,
        health=ev.HealthProbe(http="http://127.0.0.1:8080/health", timeout=30.0),
    )  # fmt: skip
    assert jobs[0].context["HOOKBUS_TAG"] == "v1.4"
    assert routed[0].data.requested == [e.id for e in routed[1:]]
    # A redelivery derives the same ids.
    again = route([], push, record_unmatched=False, projects=projects)
    assert [e.id for e in again] == [e.id for e in routed]


def test_the_first_matching_stage_wins_and_its_own_settings_apply(
    projects: dict[str, Project],
) -> None:
    push = _push("registry.example.com/acme/web:main-5", "acme/web", "main-5")
    (job,) = _jobs(route([], push, projects=projects))
    assert job.spec.container == "web-next"  # type: ignore[union-attr]
    assert job.spec.health == ev.HealthProbe(tcp="8080")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("image", "path", "tag", "registry"),
    [
        ("registry.example.com/acme/web:pr-7", "acme/web", "pr-7", "registry.example.com"),
        ("registry.example.com/acme/web:nightly", "acme/web", "nightly", "registry.example.com"),
        ("other.example.com/acme/web:v2", "acme/web", "v2", "other.example.com"),
        ("registry.example.com/acme/api:v2", "acme/api", "v2", "registry.example.com"),
        ("registry.example.com/acme/web@sha256:ab", "acme/web", None, "registry.example.com"),
    ],
)
def test_pushes_that_deploy_nothing(
    projects: dict[str, Project], image: str, path: str, tag: str | None, registry: str
) -> None:
    push = _push(image, path, tag, registry=registry)
    assert _jobs(route([], push, record_unmatched=True, projects=projects)) == []


def test_a_project_without_a_registry_takes_any_registry_and_docker_hub_names(
    projects: dict[str, Project],
) -> None:
    hub = _push("docker.io/acme/worker:1", "acme/worker", "1", registry="docker.io")
    (job,) = _jobs(route([], hub, projects=projects))
    assert job.spec.container == "worker-all"  # type: ignore[union-attr]
    assert job.spec.image == "docker.io/acme/worker:1"  # type: ignore[union-attr]
    assert job.spec.pull == "never"  # type: ignore[union-attr]
    info = ev.ImageInfo(registry="docker.io", namespace="library", repository="nginx",
                        path="library/nginx", canonical="docker.io/library/nginx:1", tag="1")  # fmt: skip
    nginx = {"nginx": Project(image="nginx", stages={"live": Stage()})}
    assert find(nginx, info) == [("nginx", "live")]


def test_a_pushed_digest_is_deployed_by_digest(projects: dict[str, Project]) -> None:
    push = _push("registry.example.com/acme/web:v3@sha256:cd", "acme/web", "v3",
                 digest="sha256:cd")  # fmt: skip
    jobs = _jobs(route([], push, projects=projects))
    assert jobs[0].spec.image == "registry.example.com/acme/web@sha256:cd"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('[projects.web]\nimage = "acme/web"\n', "stages"),
        ('[projects.web]\nimage = "acme/web"\nstages = { "bad stage" = {} }\n', "stage name"),
        (
            '[projects.web]\nimage = "acme/web"\nhealth = {}\n[projects.web.stages.a]\n',
            "exactly one of http and tcp",
        ),
        (
            '[projects.web]\nimage = "a/w"\n[projects.web.stages.a]\nmax_instances = 0\n',
            "max_instances",
        ),
    ],
)
def test_bad_projects_stop_the_router(tmp_path: Path, toml: str, problem: str) -> None:
    f = tmp_path / "hookbus.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match="projects") as err:
        router_config.load(f, {})
    assert problem in str(err.value)
