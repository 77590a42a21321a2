"""Projects made from images, against a real engine (podman, see podman.py) and Postgres:
the executor inspects the pushed image (its exposed port, labels), records
project.created (and the projects read model), and deploys the first container, which
answers; an image the engine cannot have still makes a project, without port or health;
the router finds the project for the next push and redeploys it with its health check."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import docker
import pytest

from hookbus_common import events as ev
from hookbus_common.consumer import Ack
from hookbus_common.service import Runtime
from hookbus_router import projects
from hookbus_router.routing import _route

from . import podman
from .podman import PodmanEngine
from .test_docker import Replica, _answer, _request

pytestmark = pytest.mark.integration

podman_engine = podman.podman_engine
HEALTH_LABEL = "LABEL io.hookbus.health.path=/health"


def made_images(engine: PodmanEngine) -> str:
    """A repository of its own with v1 (answers /health with v1, on EXPOSEd 8080) and
    broken (never answers), both labelled with their health path."""
    repo = f"localhost/hookbus-test/made-{secrets.token_hex(3)}"
    tar = engine.base / "rootfs.tar"
    podman._import(engine.base, tar, f"{repo}:v1", podman._serve_cmd("v1"), "EXPOSE 8080",
                   HEALTH_LABEL)  # fmt: skip
    podman._import(engine.base, tar, f"{repo}:broken", 'CMD ["sleep", "3600"]', "EXPOSE 8080",
                   HEALTH_LABEL)  # fmt: skip
    return repo


@pytest.fixture
def client(podman_engine: PodmanEngine) -> Iterator[docker.DockerClient]:
    c = podman_engine.client()
    yield c
    c.close()


def _spec(repo: str, tag: str) -> ev.ProjectSpec:
    name = repo.rsplit("/", 1)[-1]
    return ev.ProjectSpec(project=name, image=f"{repo}:{tag}", repository=repo,
                          container=f"{name}-dev", health_timeout=20)  # fmt: skip


async def _row(rt: Runtime, repo: str) -> dict[str, object]:
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM projects WHERE repository = $1", repo)
    assert row is not None
    return dict(row)


async def test_an_image_is_inspected_recorded_as_a_project_and_deployed(
    rt: Runtime, podman_engine: PodmanEngine, client: docker.DockerClient
) -> None:
    repo = made_images(podman_engine)
    spec = _spec(repo, "v1")
    outcome, out = await Replica(rt, podman_engine.url).outcome(_request(spec))  # type: ignore[arg-type]
    assert outcome == Ack()
    assert [e.type for e in out] == [
        ev.JobStarted.TYPE, ev.ProjectCreated.TYPE, ev.JobSucceeded.TYPE,
    ]  # fmt: skip
    created = out[1].data
    assert (created.project, created.repository, created.port) == (spec.project, repo, 8080)
    assert created.inspected is True
    assert created.labels == {"io.hookbus.health.path": "/health"}
    url = f"http://127.0.0.1:{created.host_port}/health"
    assert created.health == ev.HealthProbe(http=url, timeout=20, interval=0.5)
    assert created.stages == [ev.ProjectStage(name="dev", container=spec.container)]
    # The first container runs the pushed image, published where the project says.
    assert await _answer(url) == "v1"
    container = client.containers.get(spec.container)
    assert container.attrs["Config"]["Image"] == f"{repo}:v1"
    done = out[2].data
    assert (done.deploy.operation, done.deploy.health) == ("create", "healthy")
    row = await _row(rt, repo)
    assert (row["project"], row["port"], row["host_port"]) == (
        spec.project,
        8080,
        created.host_port,
    )
    assert json.loads(str(row["stages"]))[0]["container"] == spec.container


async def test_the_next_push_is_deployed_to_the_project_and_rolled_back_when_unhealthy(
    rt: Runtime, podman_engine: PodmanEngine
) -> None:
    repo = made_images(podman_engine)
    replica = Replica(rt, podman_engine.url)
    spec = _spec(repo, "v1")
    outcome, out = await replica.outcome(_request(spec))  # type: ignore[arg-type]
    assert outcome == Ack()
    url = out[1].data.health.http
    # The router finds the project made of the repository, and redeploys its stage.
    registry, path = repo.split("/", 1)
    namespace, _, short = path.rpartition("/")
    image = ev.ImageInfo(registry=registry, namespace=namespace, repository=short, path=path,
                         canonical=f"{repo}:broken", tag="broken")  # fmt: skip
    known, creation = await projects.Created(rt.pool, projects.AutoCreate()).resolve({}, image)
    assert known == {}
    assert creation == projects.Creation(spec.project, projects.AutoCreate())
    hook = ev.WebhookReceived(source="image-push", kind="image-push", event_type="push",
                              repository=path, tag="broken", image=image)  # fmt: skip
    (_, request) = _route([], ev.make_event(hook, source="/test"), hook, None, False,
                          known, creation=creation)  # fmt: skip
    redeploy = request.data.spec
    assert isinstance(redeploy, ev.ProjectSpec)
    assert (redeploy.project, redeploy.image) == (spec.project, f"{repo}:broken")
    outcome, out = await replica.outcome(request)
    assert outcome == Ack()
    failed = out[-1].data
    assert isinstance(failed, ev.JobFailed)
    assert (failed.deploy.operation, failed.deploy.rolled_back) == ("recreate", True)
    assert ev.DeployRolledBack.TYPE in [e.type for e in out]
    assert ev.ProjectCreated.TYPE not in [e.type for e in out]  # found, not made again
    assert await _answer(url) == "v1"  # the first image is back


async def test_an_image_the_engine_cannot_have_makes_a_project_without_port_or_health(
    rt: Runtime, podman_engine: PodmanEngine
) -> None:
    repo = f"localhost/hookbus-test/nowhere-{secrets.token_hex(3)}"
    replica = Replica(rt, podman_engine.url)
    outcome, out = await replica.outcome(_request(_spec(repo, "v1")))  # type: ignore[arg-type]
    assert outcome == Ack()
    created = next(e.data for e in out if isinstance(e.data, ev.ProjectCreated))
    assert (created.port, created.host_port, created.health) == (0, 0, None)
    assert created.inspected is False
    assert "cannot inspect" in (created.reason or "")
    # Nothing to deploy: the job fails, saying why; the project stays for the next push.
    assert isinstance(out[-1].data, ev.JobFailed)
    assert (await _row(rt, repo))["inspected"] is False
    # The image arrives; the next push deploys the project's first container anew.
    podman._import(podman_engine.base, podman_engine.base / "rootfs.tar", f"{repo}:v2",
                   'CMD ["sleep", "3600"]')  # fmt: skip
    outcome, out = await replica.outcome(_request(_spec(repo, "v2")))  # type: ignore[arg-type]
    assert outcome == Ack()
    assert [e.type for e in out] == [ev.JobStarted.TYPE, ev.JobSucceeded.TYPE]
    assert out[-1].data.deploy.operation == "create"
