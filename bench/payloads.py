"""Signed GitHub-style push deliveries: 2 KB JSON bodies with a valid X-Hub-Signature-256."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SECRET = "bench-secret-not-for-production"
BODY_BYTES = 2048
SOURCE = "github"


@dataclass(frozen=True)
class Signed:
    body: bytes
    signature: str


def push_body(n: int, size: int = BODY_BYTES) -> bytes:
    """A push to main of acme/app, padded to exactly ``size`` bytes; ``n`` makes it distinct."""
    doc = {
        "ref": "refs/heads/main",
        "before": f"{n * 7919:040x}",
        "after": f"{n:040x}",
        "repository": {
            "id": 1296269,
            "name": "app",
            "full_name": "acme/app",
            "private": False,
            "owner": {"login": "acme", "id": 1, "type": "Organization"},
            "html_url": "https://github.com/acme/app",
            "default_branch": "main",
        },
        "pusher": {"name": "octocat", "email": "octocat@example.com"},
        "sender": {"login": "octocat", "id": 583231, "type": "User"},
        "head_commit": {
            "id": f"{n:040x}",
            "message": "Bench commit",
            "timestamp": "2024-01-01T00:00:00Z",
            "author": {"name": "Octo Cat", "email": "octocat@example.com"},
        },
        "padding": "",
    }
    base = json.dumps(doc, separators=(",", ":")).encode()
    if len(base) > size:
        raise ValueError(f"body template is {len(base)} bytes, more than {size}")
    doc["padding"] = "x" * (size - len(base))
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) == size
    return body


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_bodies(count: int, *, offset: int = 0) -> list[Signed]:
    return [Signed(b, sign(b)) for b in (push_body(offset + i) for i in range(count))]


HOOK_PATH = f"/hooks/{SOURCE}"


def http_request(host: str, port: int, s: Signed, delivery: str, path: str = HOOK_PATH) -> bytes:
    """One complete HTTP/1.1 request as the bench's own clients send it."""
    return (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "User-Agent: GitHub-Hookshot/bench\r\n"
        "Content-Type: application/json\r\n"
        "X-GitHub-Event: push\r\n"
        f"X-GitHub-Delivery: {delivery}\r\n"
        f"X-Hub-Signature-256: {s.signature}\r\n"
        f"Content-Length: {len(s.body)}\r\n"
        "\r\n"
    ).encode() + s.body


def requests_for(
    port: int, signed: list[Signed], tag: str, path: str = HOOK_PATH
) -> Callable[[int], tuple[str, bytes]]:
    """Request ``i`` of a run tagged ``tag``: its delivery id and the raw HTTP bytes, cycling
    through the pre-signed bodies (the open-loop client's ``make``)."""

    def make(i: int) -> tuple[str, bytes]:
        key = f"{tag}-{i}"
        return key, http_request("127.0.0.1", port, signed[i % len(signed)], key, path)

    return make


def write_wrk_data(
    path: Path, host: str, port: int, bodies: list[Signed], url_path: str = HOOK_PATH
) -> None:
    """Records of ``head \\0 tail \\1``: the Lua script puts a delivery id between the two.

    wrk's Lua has no HMAC, so signing happens here; ids are made in Lua so that every
    request of a run carries a distinct delivery id however long wrk runs.
    """
    with path.open("wb") as f:
        for s in bodies:
            head = (
                f"POST {url_path} HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                "User-Agent: GitHub-Hookshot/bench\r\n"
                "Content-Type: application/json\r\n"
                "X-GitHub-Event: push\r\n"
                f"X-Hub-Signature-256: {s.signature}\r\n"
                f"Content-Length: {len(s.body)}\r\n"
                "X-GitHub-Delivery: "
            ).encode()
            f.write(head + b"\0" + b"\r\n\r\n" + s.body + b"\1")
