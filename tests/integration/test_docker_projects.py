"""An image push finds its project and stage, and the recreate it requests redeploys the
stage's container on a real engine (podman, see podman.py) with the pushed tag."""

from __future__ import annotations

import docker
import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.consumer import Ack
from hookbus_common.service import Runtime
from hookbus_router.projects import Project, ProjectHealth, Stage
from hookbus_router.routing import route

from . import podman, test_docker
from .podman import WEB, PodmanEngine
from .test_docker import Replica, _answer

pytestmark = pytest.mark.integration

podman_engine = podman.podman_engine
engine = test_docker.engine
web = test_docker.web
_close_replicas = test_docker._close_replicas


def _push(tag: str) -> ev.Event[ev.WebhookReceived]:
    registry, path = WEB.split("/", 1)
    info = ev.ImageInfo(
        registry=registry, namespace=path.rsplit("/", 1)[0], repository=path.rsplit("/", 1)[1],
        path=path, canonical=f"{WEB}:{tag}", tag=tag,
    )  # fmt: skip
    return ev.make_event(
        ev.WebhookReceived(source="image-push", kind="image-push", event_type="push",
                           image=info, repository=path, tag=tag, payload=msgspec.Raw(b"{}")),
        source="/test",
    )  # fmt: skip


async def test_an_image_push_redeploys_its_stage(
    rt: Runtime, podman_engine: PodmanEngine, engine: docker.DockerClient,
    web: tuple[str, int],
) -> None:  # fmt: skip
    name, port = web
    url = f"http://127.0.0.1:{port}/health"
    assert await _answer(url) == "v1"
    projects = {
        "shop": Project(
            image=WEB, pull="never", stop_timeout=1,
            health=ProjectHealth(http=url, timeout=30, interval=0.2),
            stages={"preview": Stage(tags="pr-*", auto_deploy=False),
                    "live": Stage(tags="v*", container=name)},
        )
    }  # fmt: skip
    # A push of a tag no stage deploys by itself requests nothing.
    assert [e for e in route([], _push("pr-1"), projects=projects)
            if isinstance(e.data, ev.JobRequestedV2)] == []  # fmt: skip

    routed = route([], _push("v2"), projects=projects)
    (request,) = [e for e in routed if isinstance(e.data, ev.JobRequestedV2)]
    assert request.data.rule == "project.shop.live"
    outcome, out = await Replica(rt, podman_engine.url).outcome(request)
    assert outcome == Ack()
    done = out[-1].data
    assert type(done) is ev.JobSucceeded, done
    assert done.deploy.image_before == f"{WEB}:v1"
    assert done.deploy.image_after == f"{WEB}:v2"
    assert await _answer(url) == "v2"
    assert engine.containers.get(name).attrs["Config"]["Image"] == f"{WEB}:v2"
