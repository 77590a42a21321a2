"""Source kinds: how each sender proves who it is and where its facts live in a delivery."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from hookbus_common.settings import GithubSource, SourceConfig

from .signatures import VerificationError, verify_github


class Facts(msgspec.Struct, frozen=True, kw_only=True):
    event_type: str
    delivery_id: str | None = None
    repository: str | None = None
    branch: str | None = None
    tag: str | None = None
    commit: str | None = None
    sender: str | None = None


class _Repo(msgspec.Struct):
    full_name: str | None = None


class _User(msgspec.Struct):
    login: str | None = None


class _GithubBody(msgspec.Struct):
    repository: _Repo | None = None
    ref: str | None = None
    ref_type: str | None = None
    after: str | None = None
    sender: _User | None = None


_github_body = msgspec.json.Decoder(_GithubBody)

# Headers worth keeping with the raw body: enough to re-verify and audit a delivery.
# Headers that carry a secret themselves (tokens, Authorization) are never kept.
KEPT_HEADERS: dict[str, tuple[str, ...]] = {
    "github": (
        "x-github-event",
        "x-github-delivery",
        "x-github-hook-id",
        "x-github-hook-installation-target-id",
        "x-github-hook-installation-target-type",
        "x-hub-signature-256",
        "x-hub-signature",
        "user-agent",
        "content-type",
    ),
}


class BadBody(ValueError):
    """The body is not what this source sends (not JSON, not an object)."""


def verify(source: SourceConfig, headers: Mapping[str, str], body: bytes) -> None:
    """Raise VerificationError unless the delivery proves it comes from ``source``."""
    match source:
        case GithubSource():
            verify_github(
                headers, body, [s.bytes() for s in source.secrets], allow_sha1=source.allow_sha1
            )


def _github_facts(headers: Mapping[str, str], body: bytes) -> Facts:
    try:
        parsed = _github_body.decode(body)
    except msgspec.ValidationError:
        # Valid JSON of an unexpected shape: record it, just without the facts.
        try:
            value = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise BadBody(f"body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise BadBody("body must be a JSON object") from None
        parsed = _GithubBody()
    except msgspec.DecodeError as exc:
        raise BadBody(f"body is not valid JSON: {exc}") from None
    branch = tag = None
    ref = parsed.ref
    if ref is not None:
        if ref.startswith("refs/heads/"):
            branch = ref.removeprefix("refs/heads/")
        elif ref.startswith("refs/tags/"):
            tag = ref.removeprefix("refs/tags/")
        elif parsed.ref_type == "branch":
            branch = ref
        elif parsed.ref_type == "tag":
            tag = ref
    return Facts(
        event_type=headers.get("x-github-event", "unknown"),
        delivery_id=headers.get("x-github-delivery") or None,
        repository=parsed.repository.full_name if parsed.repository else None,
        branch=branch,
        tag=tag,
        commit=parsed.after,
        sender=parsed.sender.login if parsed.sender else None,
    )


def facts(source: SourceConfig, headers: Mapping[str, str], body: bytes) -> Facts:
    """Parse the (already verified) body; raises BadBody when it is not acceptable."""
    match source:
        case GithubSource():
            return _github_facts(headers, body)


def kept_headers(source: SourceConfig, headers: Mapping[str, str]) -> dict[str, str]:
    return {h: headers[h] for h in KEPT_HEADERS[source.kind] if h in headers}


__all__ = ["BadBody", "Facts", "VerificationError", "facts", "kept_headers", "verify"]
