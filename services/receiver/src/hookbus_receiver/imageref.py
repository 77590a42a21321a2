"""Container image reference parsing and normalisation (Docker distribution/reference rules)."""

from __future__ import annotations

import re
from typing import Final

import msgspec

__all__ = ["DEFAULT_REGISTRY", "ImageRef", "ImageRefError", "parse_image_ref"]

DEFAULT_REGISTRY: Final = "docker.io"
_DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io"})
_OFFICIAL_NAMESPACE: Final = "library"
_NAME_MAX_LEN: Final = 255

_PATH_COMPONENT_RE: Final = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_DOMAIN_COMPONENT: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY_RE: Final = re.compile(
    rf"(?P<host>{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?",
    re.ASCII,
)
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_DIGEST_RE: Final = re.compile(r"(?P<algo>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<hex>[a-f0-9]{32,})")
_DIGEST_HEX_LEN: Final = {"sha256": 64, "sha384": 96, "sha512": 128}


class ImageRefError(ValueError):
    """An image reference is malformed; the message says what is wrong."""


class ImageRef(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed, normalised image reference.

    ``namespace`` is everything between the registry and the last path component
    ("library" for official Docker Hub images, "" when the path has one component on
    another registry); ``path`` is ``namespace/repository`` (just ``repository`` when the
    namespace is empty). ``tag`` is ``"latest"`` when neither tag nor digest was given and
    ``None`` when only a digest was given.
    """

    registry: str = DEFAULT_REGISTRY
    namespace: str
    repository: str
    path: str
    tag: str | None = "latest"
    digest: str | None = None
    canonical: str

    def __str__(self) -> str:
        return self.canonical


def _fail(ref: str, problem: str) -> ImageRefError:
    shown = ref if len(ref) <= 80 else ref[:77] + "..."
    return ImageRefError(f"invalid image reference {shown!r}: {problem}")


def _check_registry(ref: str, registry: str) -> str:
    match = _REGISTRY_RE.fullmatch(registry)
    if match is None:
        raise _fail(
            ref,
            f"registry {registry!r} is not a valid host[:port] "
            "(letters, digits, '-' and '.', optionally followed by ':<port>')",
        )
    port = match.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        raise _fail(ref, f"registry port {port} is out of range (1-65535)")
    normalised = registry.lower()
    return DEFAULT_REGISTRY if normalised in _DOCKER_HUB_ALIASES else normalised


def _check_path_component(ref: str, component: str) -> None:
    if _PATH_COMPONENT_RE.fullmatch(component):
        return
    if not component:
        raise _fail(
            ref, "the repository path has an empty component (leading, trailing or double '/')"
        )
    if _PATH_COMPONENT_RE.fullmatch(component.lower()):
        raise _fail(ref, f"repository path component {component!r} must be lowercase")
    raise _fail(
        ref,
        f"repository path component {component!r} is invalid: use lowercase letters and "
        "digits separated by '.', '_', '__' or '-' (not at the start or end)",
    )


def _check_digest(ref: str, digest: str) -> None:
    match = _DIGEST_RE.fullmatch(digest)
    if match is None:
        _, sep, hexpart = digest.partition(":")
        if sep and _DIGEST_RE.fullmatch(digest.lower()) and hexpart != hexpart.lower():
            raise _fail(ref, f"digest {digest!r} must use lowercase hex")
        raise _fail(
            ref,
            f"digest {digest!r} is invalid: expected '<algorithm>:<hex>', "
            "e.g. 'sha256:' followed by 64 lowercase hex characters",
        )
    algo, hexpart = match.group("algo"), match.group("hex")
    expected = _DIGEST_HEX_LEN.get(algo)
    if expected is not None and len(hexpart) != expected:
        raise _fail(
            ref,
            f"{algo} digest must have {expected} hex characters, got {len(hexpart)}",
        )


def parse_image_ref(ref: str) -> ImageRef:
    """Parse ``[registry[:port]/]path[:tag][@digest]`` into a normalised :class:`ImageRef`.

    The first path component is a registry only if it contains "." or ":" or is
    "localhost"; ``docker.io``/``index.docker.io`` normalise to ``docker.io`` and
    single-component Docker Hub names get ``library/``. The normalised name
    (``registry/path``) may be at most 255 characters, as Docker enforces.
    Raises :class:`ImageRefError` (a ``ValueError``) describing what is wrong.
    """
    if not isinstance(ref, str):
        raise ImageRefError(f"image reference must be a string, not {type(ref).__name__}")
    if not ref:
        raise ImageRefError("image reference is empty")
    if any(ch.isspace() for ch in ref):
        raise _fail(ref, "it contains whitespace")
    if not ref.isascii() or not ref.isprintable():
        raise _fail(ref, "it contains non-ASCII or control characters")

    remainder, at, digest = ref.partition("@")
    if at:
        if not digest:
            raise _fail(ref, "nothing follows '@' (expected a digest such as 'sha256:<hex>')")
        if "@" in digest:
            raise _fail(ref, "it contains more than one '@'")
        _check_digest(ref, digest)
    else:
        digest = ""
    if not remainder:
        raise _fail(ref, "the repository name is missing")

    tag: str | None = None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not tag:
            raise _fail(ref, "nothing follows ':' (trailing colon; expected a tag)")
        if not _TAG_RE.fullmatch(tag):
            raise _fail(
                ref,
                f"tag {tag!r} is invalid: up to 128 letters, digits, '_', '.' or '-', "
                "not starting with '.' or '-'",
            )
        if not remainder:
            raise _fail(ref, "the repository name is missing")

    components = remainder.split("/")
    first = components[0]
    if len(components) > 1 and ("." in first or ":" in first or first == "localhost"):
        registry = _check_registry(ref, first)
        components = components[1:]
    else:
        registry = DEFAULT_REGISTRY
    for component in components:
        _check_path_component(ref, component)
    if registry == DEFAULT_REGISTRY and len(components) == 1:
        components = [_OFFICIAL_NAMESPACE, *components]

    namespace = "/".join(components[:-1])
    repository = components[-1]
    path = "/".join(components)
    name = f"{registry}/{path}"
    if len(name) > _NAME_MAX_LEN:
        raise _fail(
            ref,
            f"the normalised name is {len(name)} characters long; the maximum is {_NAME_MAX_LEN}",
        )
    if tag is None and not digest:
        tag = "latest"
    canonical = name + (f":{tag}" if tag is not None else "") + (f"@{digest}" if digest else "")
    return ImageRef(
        registry=registry,
        namespace=namespace,
        repository=repository,
        path=path,
        tag=tag,
        digest=digest or None,
        canonical=canonical,
    )
