"""Registry webhooks over real HTTP into the real event log: Docker Hub (its token in the
URL), Harbor (its Auth Header) and GitHub's container package events (signed) are
recorded with the pushed ``image`` that projects redeploy on; wrong credentials record
nothing. The payloads are the vendors' documented examples (tests/unit/test_registries.py
says where each comes from)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from hookbus_receiver.config import ReceiverConfig
from hookbus_receiver.signatures import sign_github

from ..conftest import Servers
from ..unit.test_registries import DIGEST, DOCKERHUB, HARBOR, HARBOR_CLOUDEVENT, ghcr
from .conftest import module_settings, recorded, serve_in_thread
from .logcapture import on_root_logger

pytestmark = pytest.mark.integration

HUB_TOKEN = "hub-url-token-7c1e55"
HARBOR_SECRET = "harbor-auth-9d2b10"
GH_SECRET = "gh-packages-secret-31f0"

SOURCES = f"""
[sources.hub]
kind = "dockerhub"
secrets = [{{ env = "HUB_TOKEN" }}]

[sources.harbor]
kind = "harbor"
secrets = [{{ value = "{HARBOR_SECRET}" }}]

[sources.gh]
kind = "github"
secrets = [{{ value = "{GH_SECRET}" }}]
"""


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # The services' records (the test's own HTTP client logs the URLs it calls).
        if not record.name.startswith("httpx"):
            self.text.append(f"{record.name} {record.getMessage()} {record.__dict__}")


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    handler = Capture()
    with on_root_logger(handler):
        yield handler


@pytest.fixture(scope="module")
def rsettings(servers: Servers, module_dir: Path, capture: Capture) -> ReceiverConfig:
    return module_settings(servers, module_dir, SOURCES, env={"HUB_TOKEN": HUB_TOKEN})


@pytest.fixture(scope="module")
def url(rsettings: ReceiverConfig) -> Iterator[str]:
    with serve_in_thread(rsettings) as base:
        yield base


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


JSON = {"content-type": "application/json"}


async def test_docker_hub_push_with_the_url_token_is_recorded_with_its_image(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient, capture: Capture
) -> None:
    body = copy.deepcopy(DOCKERHUB)
    body["push_data"]["pushed_at"] = 1700000001
    raw = json.dumps(body).encode()

    wrong = [
        await client.post(f"{url}/hooks/hub", content=raw, headers=JSON),
        await client.post(f"{url}/hooks/hub?token=nope", content=raw, headers=JSON),
        await client.post(f"{url}/hooks/hub?token={HUB_TOKEN}x", content=raw, headers=JSON),
        # Another source's name with the right token proves nothing there.
        await client.post(f"{url}/hooks/harbor?token={HUB_TOKEN}", content=raw, headers=JSON),
    ]
    first = await client.post(f"{url}/hooks/hub?token={HUB_TOKEN}", content=raw, headers=JSON)
    again = await client.post(f"{url}/hooks/hub?token={HUB_TOKEN}", content=raw, headers=JSON)

    assert [r.status_code for r in wrong] == [401, 401, 401, 401]
    assert first.status_code == 202
    # Docker Hub sends no delivery id: the same push (repository, tag, time) is one.
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    [event] = [r for r in await recorded(rsettings, "hub")]
    assert event.id == first.json()["id"]
    assert event.raw_body == raw
    data = event.data
    assert (data.kind, data.event_type, data.repository, data.tag) == (
        "dockerhub", "push", "svendowideit/testhook", "latest",
    )  # fmt: skip
    assert data.image is not None
    assert data.image.canonical == "docker.io/svendowideit/testhook:latest"
    # The token is in no record and no log line.
    assert HUB_TOKEN not in event.data_json
    assert not [line for line in capture.text if HUB_TOKEN in line]


async def test_harbor_pushes_in_both_formats_are_recorded_with_their_image(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    auth = {**JSON, "authorization": f"Bearer {HARBOR_SECRET}"}
    default = await client.post(f"{url}/hooks/harbor", content=json.dumps(HARBOR), headers=auth)
    cloud = await client.post(
        f"{url}/hooks/harbor",
        content=json.dumps(HARBOR_CLOUDEVENT),
        headers={**JSON, "authorization": HARBOR_SECRET},  # the Auth Header without a scheme
    )
    refused = [
        await client.post(f"{url}/hooks/harbor", content=json.dumps(HARBOR), headers=JSON),
        await client.post(
            f"{url}/hooks/harbor",
            content=json.dumps(HARBOR),
            headers={**JSON, "authorization": "Bearer wrong"},
        ),
    ]

    assert (default.status_code, cloud.status_code) == (202, 202)
    assert [r.status_code for r in refused] == [401, 401]
    events = await recorded(rsettings, "harbor")
    assert [e.id for e in events] == [default.json()["id"], cloud.json()["id"]]
    for e in events:
        assert e.data.event_type == "push"
        assert e.data.image is not None
        assert e.data.image.canonical == f"hub.harbor.com/test-webhook/debian:latest@{DIGEST}"
        assert "authorization" not in e.data.headers
        assert HARBOR_SECRET not in e.data_json
    assert events[1].data.delivery_id == HARBOR_CLOUDEVENT["id"]


async def test_github_container_package_event_is_recorded_with_its_image(
    url: str, rsettings: ReceiverConfig, client: httpx.AsyncClient
) -> None:
    raw = json.dumps(ghcr("package", tag="v1.0.0", digest=DIGEST)).encode()
    headers = {
        **JSON,
        "x-github-event": "package",
        "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "x-hub-signature-256": sign_github(raw, GH_SECRET.encode()),
    }

    ok = await client.post(f"{url}/hooks/gh", content=raw, headers=headers)
    unsigned = await client.post(
        f"{url}/hooks/gh", content=raw, headers={**headers, "x-hub-signature-256": "sha256=00"}
    )

    assert (ok.status_code, unsigned.status_code) == (202, 401)
    [event] = await recorded(rsettings, "gh")
    assert (event.data.event_type, event.data.tag) == ("package", "v1.0.0")
    assert event.data.image is not None
    assert event.data.image.canonical == f"ghcr.io/codertocat/hello-world:v1.0.0@{DIGEST}"
