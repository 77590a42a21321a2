"""End to end, as separate processes on a real engine (podman): an image push for an image
no project names makes a project of it and deploys it to ``dev``, where the container
answers; a push of a tag whose health check fails is rolled back to the first image; and
``hookbus events --chain`` and ``hookbus projects`` tell the story."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable

import httpx
import pytest

from ..conftest import Servers
from ..integration import podman
from ..integration.podman import PodmanEngine
from ..integration.test_project_create import made_images
from .conftest import System
from .test_slice import wait_for

pytestmark = pytest.mark.e2e

podman_engine = podman.podman_engine


def _config(engine: PodmanEngine) -> str:
    return f"""
[executor.docker]
host = "{engine.url}"

[projects]
auto_health_timeout = 15
"""


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode().strip())
    except OSError:
        return None


def _chain(system: System, event_id: str) -> str:
    done = system.cli("events", "--chain", event_id)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _projects(system: System) -> list[dict[str, object]]:
    done = system.cli("projects", "list", "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_an_unknown_image_becomes_a_project_deployed_to_dev_and_a_bad_tag_rolls_back(
    servers: Servers, make_system: Callable[..., System], podman_engine: PodmanEngine
) -> None:
    repo = made_images(podman_engine)
    name = repo.rsplit("/", 1)[-1]
    system = make_system(_config(podman_engine), servers)
    system.start()
    shown = system.cli("webhook-url", "show")
    assert shown.returncode == 0, shown.stderr
    push_url = shown.stdout.strip().splitlines()[-1]

    first = httpx.post(push_url, json={"image": f"{repo}:v1"}, timeout=10)
    assert first.status_code == 202, first.text
    first_id = first.json()["id"]
    wait_for(lambda: "job.succeeded" in _chain(system, first_id), "the first deploy", system, 90)
    (project,) = [p for p in _projects(system) if p["name"] == name]
    assert (project["origin"], project["image"], project["port"]) == ("image", repo, 8080)
    health = f"http://127.0.0.1:{project['host_port']}/health"
    assert _get(health) == "v1"  # the container of the new project answers
    story = _chain(system, first_id)
    assert "webhook.received" in story
    assert "job.requested" in story
    assert "project (rule project." in story
    assert "project.created" in story
    assert f"{name} from {repo}:v1: port 8080 on 127.0.0.1:{project['host_port']}" in story
    assert f"dev -> {name}-dev" in story

    second = httpx.post(push_url, json={"image": f"{repo}:broken"}, timeout=10)
    assert second.status_code == 202, second.text
    second_id = second.json()["id"]
    wait_for(lambda: "job.failed" in _chain(system, second_id), "the rollback", system, 90)
    story = _chain(system, second_id)
    assert "deploy.rolledback" in story
    assert "rolled back to" in story
    assert "project.created" not in story  # the project was found, not made again
    # The first image runs again, and answers.
    deadline = time.monotonic() + 20
    while _get(health) != "v1":
        assert time.monotonic() < deadline, "the first image did not answer again"
        time.sleep(0.2)
    shown_project = system.cli("projects", "show", name)
    assert shown_project.returncode == 0, shown_project.stderr
    assert f"made from:   {repo}:v1" in shown_project.stdout
    assert f"health:      GET {health}" in shown_project.stdout
