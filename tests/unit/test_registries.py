"""Registry webhooks: the pushed image read from each registry's payload as the vendor
documents it, the facts rules see, and the credentials each source kind checks."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest

from hookbus_common.errors import ConfigError
from hookbus_receiver import config as receiver_config
from hookbus_receiver import registries
from hookbus_receiver.config import DockerhubSource, GithubSource, HarborSource, Secret
from hookbus_receiver.signatures import VerificationError, verify_harbor
from hookbus_receiver.sources import Source

# Docker Hub's documented example payload ("Example webhook payload",
# https://docs.docker.com/docker-hub/repos/manage/webhooks/), its long text fields cut.
DOCKERHUB: dict[str, Any] = {
    "callback_url": "https://registry.hub.docker.com/u/svendowideit/testhook/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
    "push_data": {"pushed_at": 1417566161, "pusher": "trustedbuilder", "tag": "latest"},
    "repository": {
        "comment_count": 0,
        "date_created": 1417494799,
        "description": "",
        "dockerfile": "#\n# BUILD\t\tdocker build -t svendowideit/apt-cacher .\n",
        "full_description": "Docker Hub based automated build from a GitHub repo",
        "is_official": False,
        "is_private": True,
        "is_trusted": True,
        "name": "testhook",
        "namespace": "svendowideit",
        "owner": "svendowideit",
        "repo_name": "svendowideit/testhook",
        "repo_url": "https://registry.hub.docker.com/u/svendowideit/testhook/",
        "star_count": 0,
        "status": "Active",
    },
}  # fmt: skip

# GitHub's `registry_package` / `package` "published" example for a container image, from
# the payload examples GitHub's SDK publishes (npm @octokit/webhooks-examples,
# api.github.com/registry_package/published.docker.payload.json), the nested repository
# and owner objects cut. Its digest is a 40-digit placeholder, not a real sha256.
GHCR_VERSION: dict[str, Any] = {
    "id": 57755791,
    "version": "sha256:3da1996a8115d7616457760d9920b815241d0a03b34cf5f04e9a0e9d8de37498",
    "name": "sha256:3da1996a8115d7616457760d9920b815241d0a03b34cf5f04e9a0e9d8de37498",
    "html_url": "https://github.com/orgs/Codertocat/packages/container/hello-world/57755791",
    "target_commitish": "master",
    "target_oid": "3da1996a8115d7616457760d9920b815241d0a03b34cf5f04e9a0e9d8de37498",
    "container_metadata": {
        "tag": {"name": "", "digest": "sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"},
        "manifest": {
            "digest": "sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b",
            "media_type": "application/vnd.docker.distribution.manifest.v2+json",
        },
    },
    "package_files": [],
    "installation_command": "docker pull ghcr.io/Codertocat/hello-world:",
    "package_url": "ghcr.io/Codertocat/hello-world:",
}
GHCR_PACKAGE: dict[str, Any] = {
    "id": 10696,
    "name": "hello-world-npm",
    "namespace": "Codertocat/hello-world",
    "description": None,
    "ecosystem": "docker",
    "package_type": "npm",  # sic, in the example; `ecosystem` and `registry.type` say docker
    "html_url": "https://github.com/Codertocat/hello-world/packages/10696",
    "owner": {"login": "Codertocat", "id": 21031067, "type": "User"},
    "package_version": GHCR_VERSION,
    "registry": {
        "about_url": "https://docs.github.com/packages/learn-github-packages/introduction-to-github-packages",
        "name": "GitHub CONTAINER registry",
        "type": "CONTAINER",
        "url": "https://CONTAINER.pkg.github.com/Codertocat",
        "vendor": "GitHub Inc",
    },
}  # fmt: skip
GH_REPOSITORY = {"id": 185882436, "name": "hello-world-npm", "full_name": "Codertocat/hello-world-npm"}  # fmt: skip
GH_SENDER = {"login": "Codertocat", "id": 21031067, "type": "User"}


def ghcr(event: str, tag: str = "", digest: str | None = None) -> dict[str, Any]:
    """The example as `event` (``registry_package`` or ``package``), with ``tag`` as the
    version's tag (the example's is empty: an untagged version)."""
    package = copy.deepcopy(GHCR_PACKAGE)
    version = package["package_version"]
    version["container_metadata"]["tag"]["name"] = tag
    if digest is not None:
        version["container_metadata"]["tag"]["digest"] = digest
    version["package_url"] = f"ghcr.io/Codertocat/hello-world:{tag}"
    return {
        "action": "published",
        event: package,
        "repository": GH_REPOSITORY,
        "sender": GH_SENDER,
    }


# Harbor's documented PUSH_ARTIFACT example in its Default format ("Payload Format",
# https://goharbor.io/docs/main/working-with-projects/project-configuration/configure-webhooks/).
HARBOR: dict[str, Any] = {
    "type": "PUSH_ARTIFACT",
    "occur_at": 1586922308,
    "operator": "admin",
    "event_data": {
        "resources": [
            {
                "digest": "sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8",
                "tag": "latest",
                "resource_url": "hub.harbor.com/test-webhook/debian:latest",
            }
        ],
        "repository": {
            "date_created": 1586922308,
            "name": "debian",
            "namespace": "test-webhook",
            "repo_full_name": "test-webhook/debian",
            "repo_type": "private",
        },
    },
}
# The same push in Harbor's CloudEvents payload format (Harbor 2.10+; the envelope's
# fields as that page lists them: specversion, id, requestid, source, type
# "harbor.artifact.pushed", datacontenttype, time, data, operator).
HARBOR_CLOUDEVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "66e18103-09c1-41f6-982f-37df223f3eeb",
    "requestid": "51c0b694-0168-4f3c-b0db-282565455d7b",
    "source": "/projects/2/webhook/policies/15",
    "type": "harbor.artifact.pushed",
    "datacontenttype": "application/json",
    "time": "2023-04-03T06:04:46Z",
    "data": HARBOR["event_data"],
    "operator": "robot$ci",
}

DIGEST = "sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8"
S = [Secret(value="hub-token-5e1d")]


def test_docker_hub_push_names_the_repository_and_tag_on_docker_hub():
    pushed = registries.dockerhub(DOCKERHUB)

    assert pushed is not None
    assert pushed.image.registry == "docker.io"
    assert pushed.image.path == "svendowideit/testhook"
    assert (pushed.image.tag, pushed.image.digest) == ("latest", None)
    assert pushed.pusher == "trustedbuilder"
    # No delivery id is sent: the push is known by what it pushed and when.
    assert pushed.delivery_id == "svendowideit/testhook:latest@1417566161"


def test_docker_hub_official_image_is_library():
    body = copy.deepcopy(DOCKERHUB)
    body["repository"]["repo_name"] = "nginx"

    pushed = registries.dockerhub(body)

    assert pushed is not None
    assert pushed.image.canonical == "docker.io/library/nginx:latest"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"push_data": {"tag": "v1"}},
        {"repository": {"repo_name": "acme/web"}},
        {"push_data": {"tag": "v1"}, "repository": {"repo_name": "Not A/Name!"}},
        {"push_data": {"tag": 7}, "repository": {"repo_name": "acme/web"}},
        {"push_data": "v1", "repository": "acme/web"},
    ],
)
def test_docker_hub_body_without_an_image_names_none(body):
    assert registries.dockerhub(body) is None


@pytest.mark.parametrize("event", ["registry_package", "package"])
def test_ghcr_published_container_names_the_image_lower_case(event):
    pushed = registries.github_package(event, ghcr(event, tag="v1.2.0", digest=DIGEST))

    assert pushed is not None
    assert pushed.image.registry == "ghcr.io"
    assert pushed.image.path == "codertocat/hello-world"
    assert (pushed.image.tag, pushed.image.digest) == ("v1.2.0", DIGEST)
    assert pushed.pusher == "Codertocat"


def test_ghcr_example_as_published_is_an_untagged_version_with_a_malformed_digest():
    # The example's tag is empty and its digest too short to be a sha256: nothing names
    # the image, so nothing is deployed from it (the webhook is still recorded).
    assert registries.github_package("registry_package", ghcr("registry_package")) is None
    # A tag alone is enough: the malformed digest is left out.
    pushed = registries.github_package("registry_package", ghcr("registry_package", tag="main"))
    assert pushed is not None
    assert (pushed.image.tag, pushed.image.digest) == ("main", None)


def test_ghcr_untagged_version_with_a_digest_names_it_by_digest():
    pushed = registries.github_package("package", ghcr("package", digest=DIGEST))

    assert pushed is not None
    assert (pushed.image.tag, pushed.image.digest) == (None, DIGEST)


@pytest.mark.parametrize(
    ("event", "change"),
    [
        ("push", {}),
        (None, {}),
        ("package", {"action": "deleted"}),
        (
            "package",
            {
                "package": {
                    **GHCR_PACKAGE,
                    "ecosystem": "npm",
                    "package_type": "npm",
                    "registry": {"type": "npm"},
                }
            },
        ),
    ],
)
def test_other_github_events_and_packages_name_no_image(event, change):
    body = {**ghcr("package", tag="v1"), **change}

    assert registries.github_package(event, body) is None


def test_harbor_default_and_cloudevents_formats_name_the_same_image():
    default, cloud = registries.harbor(HARBOR), registries.harbor(HARBOR_CLOUDEVENT)

    assert default is not None
    assert cloud is not None
    assert default.image == cloud.image
    assert default.image.registry == "hub.harbor.com"
    assert default.image.path == "test-webhook/debian"
    assert (default.image.tag, default.image.digest) == ("latest", DIGEST)
    assert (default.pusher, cloud.pusher) == ("admin", "robot$ci")
    assert cloud.delivery_id == "66e18103-09c1-41f6-982f-37df223f3eeb"
    assert default.delivery_id == f"test-webhook/debian@{DIGEST}:1586922308"


def test_harbor_untagged_push_is_named_by_its_digest():
    body = copy.deepcopy(HARBOR)
    body["event_data"]["resources"] = [
        {"digest": DIGEST, "resource_url": f"harbor.example.com:8443/acme/web@{DIGEST}"}
    ]

    pushed = registries.harbor(body)

    assert pushed is not None
    assert pushed.image.registry == "harbor.example.com:8443"
    assert (pushed.image.path, pushed.image.tag, pushed.image.digest) == ("acme/web", None, DIGEST)


@pytest.mark.parametrize(
    "body",
    [
        {**HARBOR, "type": "PULL_ARTIFACT"},
        {**HARBOR, "type": "SCANNING_COMPLETED"},
        {**HARBOR, "event_data": {"resources": []}},
        {**HARBOR, "event_data": {"resources": [{"tag": "v1"}]}},
        {**HARBOR_CLOUDEVENT, "type": "harbor.artifact.deleted"},
    ],
)
def test_harbor_events_other_than_a_push_name_no_image(body):
    assert registries.harbor(body) is None


# ------------------------------------------------------------------ sources


def test_docker_hub_source_facts_are_those_of_an_image_push():
    src = Source("hub", DockerhubSource(secrets=S))

    facts = src.facts({}, DOCKERHUB)
    image = src.image({}, DOCKERHUB)

    assert (facts.event_type, facts.repository, facts.tag) == ("push", "svendowideit/testhook", "latest")  # fmt: skip
    assert facts.sender == "trustedbuilder"
    assert facts.delivery_id == "svendowideit/testhook:latest@1417566161"
    assert image is not None
    assert image.canonical == "docker.io/svendowideit/testhook:latest"


def test_docker_hub_source_checks_the_url_token():
    src = Source("hub", DockerhubSource(secrets=[Secret(value="old-1"), Secret(value="new-2")]))
    assert src.takes_url_token

    src.verify({}, b"{}", 0.0, "new-2")
    src.verify({}, b"{}", 0.0, "old-1")
    for wrong in (None, "", "new-", "new-2 ", "NEW-2"):
        with pytest.raises(VerificationError) as exc:
            src.verify({}, b"{}", 0.0, wrong)
        assert exc.value.reason == "bad_token"


def test_other_sources_take_no_url_token():
    assert not Source("h", HarborSource(secrets=S)).takes_url_token


def test_harbor_source_checks_the_auth_header_alone_or_after_a_scheme():
    src = Source("harbor", HarborSource(secrets=[Secret(value="h-secret-9")]))

    src.verify({"authorization": "h-secret-9"}, b"{}", 0.0)
    src.verify({"authorization": "Bearer h-secret-9"}, b"{}", 0.0)
    for headers, reason in (
        ({}, "missing_header"),
        ({"authorization": "Bearer other"}, "bad_token"),
        ({"authorization": "h-secret-9x"}, "bad_token"),
    ):
        with pytest.raises(VerificationError) as exc:
            src.verify(headers, b"{}", 0.0)
        assert exc.value.reason == reason


def test_harbor_verification_needs_a_secret():
    with pytest.raises(VerificationError) as exc:
        verify_harbor({"authorization": "x"}, [b""])
    assert exc.value.reason == "no_secrets"


def test_harbor_source_facts_and_image():
    src = Source("harbor", HarborSource(secrets=S))

    facts = src.facts({}, HARBOR_CLOUDEVENT)

    assert (facts.event_type, facts.repository, facts.tag) == ("push", "test-webhook/debian", "latest")  # fmt: skip
    assert facts.delivery_id == "66e18103-09c1-41f6-982f-37df223f3eeb"
    assert src.image({}, HARBOR_CLOUDEVENT) is not None
    # Another event is recorded under its own type, with no image.
    scan = {**HARBOR, "type": "SCANNING_COMPLETED"}
    assert src.facts({}, scan).event_type == "scanning_completed"
    assert src.image({}, scan) is None


def test_harbor_source_never_keeps_the_auth_header():
    src = Source("harbor", HarborSource(secrets=S))

    kept = src.kept_headers({"authorization": "Bearer x", "content-type": "application/json"})

    assert kept == {"content-type": "application/json"}


def test_github_source_reads_the_image_of_a_container_package_event():
    src = Source("gh", GithubSource(secrets=S))
    body = ghcr("registry_package", tag="v2", digest=DIGEST)
    headers = {"x-github-event": "registry_package"}

    facts = src.facts(headers, body)
    image = src.image(headers, body)

    assert (facts.event_type, facts.repository, facts.tag) == ("registry_package", "Codertocat/hello-world-npm", "v2")  # fmt: skip
    assert image is not None
    assert image.canonical == f"ghcr.io/codertocat/hello-world:v2@{DIGEST}"
    # A push event names no image.
    assert src.image({"x-github-event": "push"}, {"ref": "refs/heads/main"}) is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('kind = "dockerhub"', "sources.hub.secrets: a dockerhub source needs a secret"),
        ('kind = "harbor"', "sources.hub.secrets: a harbor source needs a secret"),
        (
            'kind = "dockerhub"\nsecrets = [{ env = "NOPE" }]',
            "sources.hub.secrets[0]: environment variable NOPE is not set",
        ),
    ],
)
def test_registry_sources_need_their_secret(tmp_path, toml, message):
    cfg = tmp_path / "hookbus.toml"
    cfg.write_text(f"[sources.hub]\n{toml}\n")

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        receiver_config.load(cfg, {})


def test_registry_sources_load_from_toml(tmp_path):
    cfg = tmp_path / "hookbus.toml"
    cfg.write_text(
        '[sources.hub]\nkind = "dockerhub"\nsecrets = [{ env = "HUB" }]\n'
        '[sources.harbor]\nkind = "harbor"\nsecrets = [{ value = "h" }]\n'
    )

    loaded = receiver_config.load(cfg, {"HUB": "from-env"})

    assert isinstance(loaded.sources["hub"], DockerhubSource)
    assert loaded.sources["hub"].secrets[0].value == "from-env"
    assert isinstance(loaded.sources["harbor"], HarborSource)
    assert "from-env" not in repr(loaded.sources["hub"])
    assert msgspec.structs.asdict(loaded.sources["harbor"])["secrets"][0].value == "h"
