"""Registry webhooks: the image a push names, read from Docker Hub's, GitHub Packages'
(GHCR) and Harbor's payloads, so that projects redeploy on them as on the image-push URL.

Each reader takes a verified JSON body and returns what the push says, or ``None`` when
the delivery is not an image push (a Harbor scan report, an npm package): such a webhook
is still recorded, only without ``image``. A name that is no valid image reference is
treated the same way: it is recorded, and nothing is deployed from it.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .imageref import ImageRef, ImageRefError, parse_image_ref

# The event type of a registry push, whichever registry sent it: rules can say
# `event = "push"` for Docker Hub, Harbor and the image-push URL alike.
PUSH: Final = "push"
# GitHub's events that announce a package version (the package's `package_type` says
# whether it is a container image).
GITHUB_PACKAGE_EVENTS: Final = ("package", "registry_package")
_GITHUB_ACTIONS: Final = frozenset({"published", "updated"})
_CONTAINER_TYPES: Final = frozenset({"container", "docker"})
# Harbor's push, in its Default payload format and in its CloudEvents format.
HARBOR_PUSHES: Final = frozenset({"PUSH_ARTIFACT", "harbor.artifact.pushed"})


class Pushed(msgspec.Struct, frozen=True, kw_only=True):
    """An image push as a registry's webhook tells it."""

    image: ImageRef
    # The delivery's id for deduplication, where the payload gives (or implies) one.
    delivery_id: str | None = None
    pusher: str | None = None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def reference(name: str, tag: str | None, digest: str | None = None) -> ImageRef | None:
    """``name`` (``[registry/]path``) with its tag and digest, parsed and normalised; a
    digest that is no valid digest is left out (the tag still names the image), and a
    name that is no valid reference gives None."""
    # Registries keep the case the owner typed (GitHub's `Codertocat`); references are
    # lower case, and Docker resolves them so.
    name = name.lower()
    base = f"{name}:{tag}" if tag else name
    # Without a tag, only the digest names the image (never an implied `latest`).
    candidates = ([f"{base}@{digest}"] if digest else []) + ([base] if tag else [])
    for candidate in candidates:
        try:
            return parse_image_ref(candidate)
        except ImageRefError:
            continue
    return None


def dockerhub(body: Any) -> Pushed | None:
    """Docker Hub's push: ``repository.repo_name`` and ``push_data.tag`` (no digest). Its
    deliveries carry no id; a push is known by its repository, tag and ``pushed_at``."""
    repo, tag = _text(_get(body, "repository", "repo_name")), _text(_get(body, "push_data", "tag"))
    if repo is None or tag is None:
        return None
    ref = reference(repo, tag)
    if ref is None:
        return None
    pushed_at = _get(body, "push_data", "pushed_at")
    delivery = None
    if isinstance(pushed_at, int | float) and not isinstance(pushed_at, bool):
        delivery = f"{ref.path}:{tag}@{int(pushed_at)}"
    return Pushed(image=ref, delivery_id=delivery, pusher=_text(_get(body, "push_data", "pusher")))


def github_package(event: str | None, body: Any) -> Pushed | None:
    """A container image published to GitHub Packages (ghcr.io): the ``package`` or
    ``registry_package`` event, ``published`` or ``updated``, of a container package.
    The image is the version's ``package_url`` (``ghcr.io/<owner>/<name>:<tag>``), its
    tag and digest ``container_metadata.tag``."""
    if event not in GITHUB_PACKAGE_EVENTS or _get(body, "action") not in _GITHUB_ACTIONS:
        return None
    package = _get(body, event)
    kinds = {
        str(v).lower()
        for v in (
            _get(package, "package_type"),
            _get(package, "ecosystem"),
            _get(package, "registry", "type"),
        )
        if isinstance(v, str)
    }
    if not kinds & _CONTAINER_TYPES:
        return None
    version = _get(package, "package_version")
    tag = _text(_get(version, "container_metadata", "tag", "name"))
    digest = _text(_get(version, "container_metadata", "tag", "digest"))
    url = _text(_get(version, "package_url"))
    if url is not None:
        # `ghcr.io/owner/name:tag`, with an empty tag for an untagged version.
        name = url.rsplit(":", 1)[0] if ":" in url.rsplit("/", 1)[-1] else url
    else:
        owner = _text(_get(package, "owner", "login")) or _text(_get(package, "namespace"))
        package_name = _text(_get(package, "name"))
        if owner is None or package_name is None:
            return None
        name = f"ghcr.io/{owner}/{package_name}"
    ref = reference(name, tag, digest)
    if ref is None or (ref.tag is None and ref.digest is None):
        return None
    return Pushed(image=ref, pusher=_text(_get(body, "sender", "login")))


def harbor(body: Any) -> Pushed | None:
    """Harbor's ``PUSH_ARTIFACT`` (Default format: ``event_data``) or
    ``harbor.artifact.pushed`` (CloudEvents format: ``data``, and the event's ``id``).
    The image is the first resource's ``resource_url`` with its ``tag`` and ``digest``."""
    kind = _get(body, "type")
    if kind not in HARBOR_PUSHES:
        return None
    cloudevent = kind == "harbor.artifact.pushed"
    data = _get(body, "data" if cloudevent else "event_data")
    resources = _get(data, "resources")
    if not isinstance(resources, list) or not resources or not isinstance(resources[0], dict):
        return None
    first = resources[0]
    url, tag, digest = (_text(first.get(k)) for k in ("resource_url", "tag", "digest"))
    if url is None:
        return None
    # `hub.harbor.com/project/repo:tag` (or `@digest` for an untagged push).
    name = url.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    ref = reference(name, tag, digest)
    if ref is None:
        return None
    operator = _text(_get(body, "operator")) or _text(_get(data, "operator"))
    if cloudevent:
        delivery = _text(_get(body, "id"))
    else:
        # The Default format has no id: a push is its artifact's digest and its time.
        occur_at = _get(body, "occur_at")
        delivery = f"{ref.path}@{digest}:{occur_at}" if digest and occur_at else None
    return Pushed(image=ref, delivery_id=delivery, pusher=operator)
