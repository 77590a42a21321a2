"""What every inbound endpoint shares (sources, partners, image push): reading the body,
the one error type and how it is answered, and recording through the group committer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hookbus_common.eventlog import Pending
from hookbus_common.logs import correlated

from .groupcommit import GroupCommitter

log = logging.getLogger(__name__)

MAX_KEY_LENGTH: Final = 256
# Headers kept with the raw body. The URL is never kept: its path holds the credential.
KEPT_HEADERS: Final = (
    "content-type",
    "user-agent",
    "idempotency-key",
    "webhook-id",
    "x-event-type",
    "x-request-id",
)


class Problem(Exception):
    """A request refused with a status and a reason safe to tell the sender."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.detail = detail
        # The precise reason, for metrics and logs only (the sender sees ``code``).
        self.reason = reason or code
        self.headers = (
            headers if headers is not None else ({"Retry-After": "5"} if status == 503 else None)
        )
        self.extra = extra

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.code}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


NOT_FOUND: Final = Problem(404, "not_found")


def unavailable() -> Problem:
    """Nothing was recorded and the sender should send it again (with Retry-After)."""
    return Problem(503, "unavailable", "could not record the delivery; retry")


def headers_of(request: Request) -> dict[str, str]:
    """Header names lower-cased (the server already sends them so); read from the ASGI
    scope directly, without building Starlette's Headers on the hot path."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "body_too_large", f"the limit is {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "body_too_large", f"the limit is {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_content_type(headers: Mapping[str, str]) -> str:
    ctype = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", "text/json") and not ctype.endswith("+json"):
        raise Problem(415, "unsupported_media_type", f"expected application/json, got {ctype}")
    return ctype


def json_object(body: bytes) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise Problem(400, "bad_body", f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Problem(400, "bad_body", "body must be a JSON object")
    return value


def delivery_id(headers: Mapping[str, str]) -> str | None:
    """The sender's id for this delivery: ``Idempotency-Key``, else ``webhook-id``."""
    key = headers.get("idempotency-key") or headers.get("webhook-id") or None
    if key is not None and len(key) > MAX_KEY_LENGTH:
        raise Problem(400, "bad_request", f"the delivery id is longer than {MAX_KEY_LENGTH}")
    return key


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {h: headers[h] for h in KEPT_HEADERS if h in headers}


async def record(committer: GroupCommitter, pending: Pending, label: str) -> Response:
    """Commit, then answer: 202 new, 200 seen before, 503 not recorded (invariant 1)."""
    with correlated(pending.event.id):
        try:
            recorded = await committer.record(pending)
        except Exception as exc:
            log.error("could not record delivery", extra={"source": label, "error": repr(exc)})
            raise unavailable() from None
    if recorded.duplicate:
        return JSONResponse({"id": recorded.event_id, "duplicate": True}, status_code=200)
    return JSONResponse({"id": recorded.event_id}, status_code=202)


def outcome(response: Response) -> str:
    """The metrics outcome of a recorded delivery's answer: 202 new, 200 seen before."""
    return "duplicate" if response.status_code == 200 else "accepted"


async def answered(accept: Awaitable[Response], count: Callable[[str], None]) -> Response:
    """Await an endpoint's work, answer a Problem as its response, and count the outcome."""
    try:
        response = await accept
    except Problem as p:
        count(p.code)
        return p.response()
    count(outcome(response))
    return response
