"""Unit tests for hookbus_receiver.imageref (container image reference parsing)."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookbus_receiver.imageref import ImageRef, ImageRefError, parse_image_ref

D1 = "sha256:" + "0123456789abcdef" * 4
D2 = "sha512:" + "fedcba9876543210" * 8

HUB, LIB = "docker.io", "library"
T128, A240, MD5 = "t" * 128, "a" * 240, "md5:" + "0" * 32
REG = "registry.example.com:5000"

# (reference, registry, namespace, repository, tag, digest, canonical)
VALID = [
    ("nginx", HUB, LIB, "nginx", "latest", None, "docker.io/library/nginx:latest"),
    ("nginx:1.25", HUB, LIB, "nginx", "1.25", None, "docker.io/library/nginx:1.25"),
    ("library/nginx", HUB, LIB, "nginx", "latest", None, "docker.io/library/nginx:latest"),
    ("docker.io/nginx", HUB, LIB, "nginx", "latest", None, "docker.io/library/nginx:latest"),
    ("index.docker.io/library/nginx:1", HUB, LIB, "nginx", "1", None,
     "docker.io/library/nginx:1"),
    ("Docker.IO/nginx", HUB, LIB, "nginx", "latest", None, "docker.io/library/nginx:latest"),
    ("bitnami/redis:7.2", HUB, "bitnami", "redis", "7.2", None, "docker.io/bitnami/redis:7.2"),
    ("ghcr.io/org/team/app:v1", "ghcr.io", "org/team", "app", "v1", None,
     "ghcr.io/org/team/app:v1"),
    ("localhost:5000/app", "localhost:5000", "", "app", "latest", None,
     "localhost:5000/app:latest"),
    ("localhost/app:dev", "localhost", "", "app", "dev", None, "localhost/app:dev"),
    (f"{REG}/org/app:1.2", REG, "org", "app", "1.2", None, f"{REG}/org/app:1.2"),
    (f"{REG}/a/b/c@{D1}", REG, "a/b", "c", None, D1, f"{REG}/a/b/c@{D1}"),
    (f"app:tag@{D1}", HUB, LIB, "app", "tag", D1, f"docker.io/library/app:tag@{D1}"),
    (f"nginx@{D2}", HUB, LIB, "nginx", None, D2, f"docker.io/library/nginx@{D2}"),
    ("quay.io/my_org/my-app__x.y:_Tag-1.0", "quay.io", "my_org", "my-app__x.y", "_Tag-1.0",
     None, "quay.io/my_org/my-app__x.y:_Tag-1.0"),
    ("a---b/c", HUB, "a---b", "c", "latest", None, "docker.io/a---b/c:latest"),
    ("[::1]:5000/app:v2", "[::1]:5000", "", "app", "v2", None, "[::1]:5000/app:v2"),
    ("10.0.0.1/img", "10.0.0.1", "", "img", "latest", None, "10.0.0.1/img:latest"),
    ("localhost", HUB, LIB, "localhost", "latest", None, "docker.io/library/localhost:latest"),
    (f"app:{T128}", HUB, LIB, "app", T128, None, f"docker.io/library/app:{T128}"),
    (f"x/{A240}", HUB, "x", A240, "latest", None, f"docker.io/x/{A240}:latest"),
    (f"foo@{MD5}", HUB, LIB, "foo", None, MD5, f"docker.io/library/foo@{MD5}"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("ref", "registry", "namespace", "repository", "tag", "digest", "canonical"), VALID
)
def test_valid_references(
    ref: str,
    registry: str,
    namespace: str,
    repository: str,
    tag: str | None,
    digest: str | None,
    canonical: str,
) -> None:
    parsed = parse_image_ref(ref)
    assert parsed.registry == registry
    assert parsed.namespace == namespace
    assert parsed.repository == repository
    assert parsed.path == (f"{namespace}/{repository}" if namespace else repository)
    assert parsed.tag == tag
    assert parsed.digest == digest
    assert parsed.canonical == canonical
    assert str(parsed) == canonical
    assert parse_image_ref(canonical) == parsed


# (reference, fragment of the error message)
INVALID = [
    ("", "empty"),
    ("NGINX", "must be lowercase"),
    ("ghcr.io/Org/app", "must be lowercase"),
    ("nginx:", "trailing colon"),
    ("nginx:1.25:", "trailing colon"),
    ("nginx@", "nothing follows '@'"),
    ("nginx:@" + D1, "trailing colon"),
    (":tag", "repository name is missing"),
    ("@" + D1, "repository name is missing"),
    ("nginx latest", "whitespace"),
    (" nginx", "whitespace"),
    ("nginx\n", "whitespace"),
    ("nginx\x00", "control"),
    ("ngïnx", "non-ASCII"),
    ("nginx:-bad", "tag '-bad' is invalid"),
    ("nginx:.bad", "tag '.bad' is invalid"),
    ("nginx:a/b", "registry 'nginx:a' is not a valid host"),
    ("nginx:" + "t" * 129, "is invalid"),
    ("nginx:t@g", "digest 'g' is invalid"),
    ("nginx@sha256:abc", "is invalid"),
    ("nginx@sha256:" + "0" * 63, "must have 64 hex"),
    ("nginx@sha256:" + "0" * 65, "must have 64 hex"),
    ("nginx@sha256:" + "A" * 64, "lowercase hex"),
    ("nginx@sha256:" + "g" * 64, "is invalid"),
    ("nginx@sha256" + "0" * 64, "is invalid"),
    ("nginx@" + D1 + "@" + D1, "more than one '@'"),
    ("nginx@md5:" + "0" * 31, "is invalid"),
    ("/nginx", "empty component"),
    ("nginx/", "empty component"),
    ("a//b", "empty component"),
    ("ghcr.io/", "empty component"),
    ("-nginx", "path component '-nginx' is invalid"),
    ("nginx-", "is invalid"),
    ("ngi..nx", "is invalid"),
    ("ngi___nx", "is invalid"),
    ("ghcr.io:/app", "not a valid host"),
    ("-bad.io/app", "not a valid host"),
    ("bad_host.io/app", "not a valid host"),
    ("host.io:99999/app", "out of range"),
    ("host.io:0/app", "out of range"),
    ("host.io:12ab/app", "not a valid host"),
    ("x/" + "a" * 250, "maximum is 255"),
    ("a" * 300, "maximum is 255"),
]


@pytest.mark.parametrize(("ref", "message"), INVALID)
def test_invalid_references(ref: str, message: str) -> None:
    with pytest.raises(ImageRefError, match=re.escape(message)) as info:
        parse_image_ref(ref)
    assert isinstance(info.value, ValueError)


def test_error_message_names_the_reference_and_truncates_long_input() -> None:
    with pytest.raises(ImageRefError, match=r"invalid image reference 'NGINX:1\.0'"):
        parse_image_ref("NGINX:1.0")
    with pytest.raises(ImageRefError) as info:
        parse_image_ref("a" * 1000)
    assert len(str(info.value)) < 200


def test_non_string_input_is_rejected() -> None:
    with pytest.raises(ImageRefError, match="must be a string"):
        parse_image_ref(b"nginx")  # type: ignore[arg-type]


def test_image_ref_is_frozen_and_hashable() -> None:
    ref = parse_image_ref("nginx:1.25")
    with pytest.raises(AttributeError):
        ref.tag = "latest"  # type: ignore[misc]
    assert {ref, parse_image_ref("docker.io/library/nginx:1.25")} == {ref}
    assert msgspec.json.decode(msgspec.json.encode(ref), type=ImageRef) == ref


# --------------------------------------------------------------------------- properties

_COMPONENT = st.from_regex(r"[a-z0-9]{1,6}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,6}){0,2}", fullmatch=True)
_DOMAIN_PART = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
_REGISTRY = st.one_of(
    st.sampled_from(["docker.io", "index.docker.io", "ghcr.io", "localhost", "quay.io"]),
    st.tuples(_DOMAIN_PART, _DOMAIN_PART).map(".".join),
    st.tuples(_DOMAIN_PART, st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(st.just("localhost"), st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
)
_TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_DIGEST = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
    st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: f"sha512:{h}"),
)


@st.composite
def image_refs(draw: st.DrawFn) -> tuple[str, str | None, str | None]:
    """A valid reference plus the tag and digest it was built with."""
    components = draw(st.lists(_COMPONENT, min_size=1, max_size=4))
    ref = "/".join(components)
    first_looks_like_host = "." in components[0] or components[0] == "localhost"
    if draw(st.booleans()) or (len(components) > 1 and first_looks_like_host):
        ref = f"{draw(_REGISTRY)}/{ref}"
    tag = draw(st.none() | _TAG)
    digest = draw(st.none() | _DIGEST)
    ref += (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    return ref, tag, digest


@settings(max_examples=300, deadline=None, database=None)
@given(case=image_refs())
def test_canonical_round_trip(case: tuple[str, str | None, str | None]) -> None:
    ref, tag, digest = case
    parsed = parse_image_ref(ref)
    again = parse_image_ref(parsed.canonical)
    assert again == parsed
    assert parse_image_ref(again.canonical).canonical == parsed.canonical
    assert parsed.digest == digest
    assert parsed.tag == (tag if tag or digest else "latest")
    assert parsed.canonical.startswith(f"{parsed.registry}/{parsed.path}")
    assert parsed.path == "/".join(filter(None, [parsed.namespace, parsed.repository]))


@settings(max_examples=300, deadline=None, database=None)
@given(ref=st.text(max_size=80) | image_refs().map(lambda case: case[0][: len(case[0]) // 2]))
def test_arbitrary_text_only_raises_image_ref_error(ref: str) -> None:
    try:
        parsed = parse_image_ref(ref)
    except ImageRefError as exc:
        message = str(exc)
    else:
        message = ""
        assert parse_image_ref(parsed.canonical) == parsed
    assert message == "" or message.startswith(("invalid image reference", "image reference"))
