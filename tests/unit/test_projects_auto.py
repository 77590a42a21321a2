"""Projects made from images: what an image's inspection makes of it, names, the
[projects] auto_* settings, and the router's request for an image no project names."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_executor import inspect
from hookbus_router import config as router
from hookbus_router import projects
from hookbus_router.projects import Creation, Project, Stage

IMAGE = ev.ImageInfo(
    registry="localhost", namespace="acme", repository="web", path="acme/web",
    canonical="localhost/acme/web:v1", tag="v1",
)  # fmt: skip


def push() -> ev.Event[ev.WebhookReceived]:
    hook = ev.WebhookReceived(
        source="image-push", kind="image-push", event_type="push", repository="acme/web",
        tag="v1", image=IMAGE, payload=msgspec.Raw(b'{"image": "localhost/acme/web:v1"}'),
    )  # fmt: skip
    return ev.make_event(hook, source="/hookbus/receiver/image-push", id="evt_push")


def test_an_images_config_gives_its_first_tcp_port_labels_and_healthcheck():
    facts = inspect.facts_of({
        "ExposedPorts": {"9090/tcp": {}, "8080/tcp": {}, "53/udp": {}},
        "Labels": {"io.hookbus.health.path": "/health"},
        "Healthcheck": {"Test": ["CMD-SHELL", "wget -q -O- localhost:8080"]},
    })  # fmt: skip
    assert (facts.port, facts.labels["io.hookbus.health.path"]) == (8080, "/health")
    assert facts.healthcheck == ["CMD-SHELL", "wget -q -O- localhost:8080"]
    assert inspect.facts_of({}).port == 0


@pytest.mark.parametrize(
    ("facts", "probe"),
    [
        (inspect.ImageFacts(inspected=True, port=8080, labels={"io.hookbus.health.path": "/h"}),
         ev.HealthProbe(http="http://127.0.0.1:4000/h", timeout=30, interval=0.5)),
        (inspect.ImageFacts(inspected=True, port=8080),
         ev.HealthProbe(tcp="127.0.0.1:4000", timeout=30, interval=0.5)),
        (inspect.ImageFacts(inspected=False, reason="no such image"), None),
    ],
)  # fmt: skip
def test_the_health_probe_follows_the_port_and_the_label(facts, probe):
    assert inspect.health_of(facts, 4000, 30.0) == probe


def test_an_image_that_could_not_be_inspected_makes_a_project_without_port_or_health():
    spec = ev.ProjectSpec(
        project="web", image="localhost/acme/web:v1", repository="localhost/acme/web"
    )
    made = inspect.project_of(spec, inspect.ImageFacts(inspected=False, reason="gone"), "job_1")
    assert (made.port, made.host_port, made.health, made.inspected) == (0, 0, None, False)
    assert made.reason == "gone"
    assert made.stages == [ev.ProjectStage(name="dev", tags=["*"], container="web-dev")]


def test_a_project_is_named_after_its_repository_and_a_clash_gets_a_hash():
    assert projects.project_name(IMAGE, []) == "web"
    other = projects.project_name(IMAGE, ["web"])
    assert other.startswith("web-")
    assert len(other) == len("web-") + 6
    assert projects.project_name(IMAGE, ["web"]) == other  # the same every time


def test_a_configured_project_of_the_repository_means_no_project_is_made():
    configured = {"site": Project(image="acme/web", stages={"prod": Stage(tags="v*")})}
    assert projects.names_repository(configured, IMAGE)
    assert not projects.names_repository({}, IMAGE)


def test_an_image_no_project_names_makes_one_creation_job_in_the_routing_record():
    from hookbus_router.routing import _route

    creation = Creation("web", projects.AutoCreate())
    routed, request = _route([], push(), push().data, None, False, {}, creation=creation)
    assert routed.data.requested == [request.id]
    req = request.data
    assert isinstance(req.spec, ev.ProjectSpec)
    assert req.spec == ev.ProjectSpec(
        project="web", image="localhost/acme/web:v1", repository="localhost/acme/web",
        stage="dev", container="web-dev", health_timeout=30.0,
    )  # fmt: skip
    assert req.rule == "project.web.dev"
    assert req.concurrency == ev.Concurrency(key="project-web-dev", strategy="queue")
    assert request.bus_subject("hookbus") == "hookbus.job.requested.project"


@pytest.mark.parametrize(
    ("repository", "pull"),
    [("localhost/acme/web", "missing"), ("web", "missing"), ("ghcr.io/acme/web", "always")],
)
def test_a_made_projects_redeploy_pulls_unless_its_registry_is_this_machine(repository, pull):
    assert inspect.pull_for(repository) == pull


def load(tmp_path: Path, text: str) -> router.RouterConfig:
    (tmp_path / "hookbus.toml").write_text(text)
    return router.load(tmp_path / "hookbus.toml", {})


def test_projects_auto_settings_sit_beside_the_projects(tmp_path):
    cfg = load(
        tmp_path,
        "[projects]\nauto_create = false\nauto_health_timeout = 5\n"
        '[projects.web]\nimage = "acme/web"\n[projects.web.stages.prod]\ntags = "v*"\n',
    )
    assert cfg.auto_projects == projects.AutoCreate(enabled=False, health_timeout=5.0)
    assert list(cfg.projects) == ["web"]
    assert load(tmp_path, "").auto_projects.enabled is True


def test_a_bad_auto_setting_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"auto_projects\.enabled"):
        load(tmp_path, '[projects]\nauto_create = "maybe"\n')
