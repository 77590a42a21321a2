"""A registry's webhook redeploys a project like a push to the image-push URL: the image
the receiver reads from Docker Hub's, GHCR's or Harbor's payload reaches the router's
projects, whatever the source is called, and the routing record names the jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_receiver.config import DockerhubSource, GithubSource, HarborSource, Secret
from hookbus_receiver.sources import Source
from hookbus_router import config as router_config
from hookbus_router.projects import Project
from hookbus_router.routing import route

from .test_registries import DIGEST, DOCKERHUB, HARBOR, ghcr

CONFIG = """
[projects.hook]
image = "svendowideit/testhook"
[projects.hook.stages.live]
tags = "latest"

[projects.hello]
image = "ghcr.io/codertocat/hello-world"
[projects.hello.stages.production]
tags = "v*"

[projects.debian]
image = "hub.harbor.com/test-webhook/debian"
[projects.debian.stages.dev]
"""

S = [Secret(value="s")]


@pytest.fixture
def projects(tmp_path: Path) -> dict[str, Project]:
    f = tmp_path / "hookbus.toml"
    f.write_text(CONFIG)
    return router_config.load(f, {}).projects


def _received(
    source: Source, headers: dict[str, str], body: dict[str, Any]
) -> ev.Event[ev.WebhookReceived]:
    """The event the receiver records for this delivery (as sourcehooks builds it)."""
    facts = source.facts(headers, body)
    return ev.make_event(
        ev.WebhookReceived(
            source=source.name, kind=source.kind, event_type=facts.event_type,
            delivery_id=facts.delivery_id, repository=facts.repository, tag=facts.tag,
            payload=msgspec.Raw(msgspec.json.encode(body)), image=source.image(headers, body),
        ),
        source=f"/hookbus/receiver/{source.name}",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("source", "headers", "body", "rule", "image"),
    [
        (
            Source("hub", DockerhubSource(secrets=S)), {}, DOCKERHUB,
            "project.hook.live", "docker.io/svendowideit/testhook:latest",
        ),
        (
            Source("gh", GithubSource(secrets=S)), {"x-github-event": "registry_package"},
            ghcr("registry_package", tag="v3.1", digest=DIGEST),
            "project.hello.production", f"ghcr.io/codertocat/hello-world@{DIGEST}",
        ),
        (
            Source("registry", HarborSource(secrets=S)), {}, HARBOR,
            "project.debian.dev", f"hub.harbor.com/test-webhook/debian@{DIGEST}",
        ),
    ],
)  # fmt: skip
def test_a_registry_push_redeploys_its_project(
    projects: dict[str, Project],
    source: Source,
    headers: dict[str, str],
    body: dict[str, Any],
    rule: str,
    image: str,
) -> None:
    hook = _received(source, headers, body)

    routed = route([], hook, record_unmatched=False, projects=projects)

    jobs = [e.data for e in routed[1:]]
    assert [j.rule for j in jobs] == [rule]
    assert isinstance(jobs[0].spec, ev.DockerSpec)
    assert (jobs[0].spec.operation, jobs[0].spec.image) == ("recreate", image)
    # The decision is recorded: the routing record names the job it requested.
    assert isinstance(routed[0].data, ev.WebhookRouted)
    assert routed[0].data.requested == [routed[1].id]


def test_a_registry_webhook_that_is_no_push_deploys_nothing(
    projects: dict[str, Project],
) -> None:
    scan = {**HARBOR, "type": "SCANNING_COMPLETED"}
    hook = _received(Source("registry", HarborSource(secrets=S)), {}, scan)

    assert hook.data.image is None
    assert route([], hook, record_unmatched=False, projects=projects) == []
