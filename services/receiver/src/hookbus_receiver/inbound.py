"""The one inbound pipeline every endpoint ends in (sources, partners, image push): read the
body, build the ``WebhookReceived`` event and its dedupe key, record it durably, answer,
and count the request; and the one mapping from an error to its HTTP answer."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Final

import msgspec
from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.responses import Response

from hookbus_common import events as ev
from hookbus_common import looplag, tracing
from hookbus_common.errors import Code, ConfigError, HookbusError
from hookbus_common.eventlog import Pending
from hookbus_common.logs import correlated

from . import policy
from .groupcommit import GroupCommitter
from .refusals import (
    BadBody,
    BadRequest,
    BodyTooLarge,
    Disconnected,
    RateLimited,
    Unavailable,
    Unstorable,
    UnsupportedMediaType,
    ValidationAborted,
    ValidationFailed,
)

log = logging.getLogger(__name__)

MAX_KEY_LENGTH: Final = 256
# Longer delivery ids are hashed in the dedupe key, to keep the unique index small.
_HASHED_OVER: Final = 200
# Headers kept with the raw body. The URL is never kept: its path holds the credential.
KEPT_HEADERS: Final = (
    "content-type",
    "user-agent",
    "idempotency-key",
    "webhook-id",
    "x-event-type",
    "x-request-id",
)
FORM: Final = "application/x-www-form-urlencoded"


class JSONAnswer(Response):
    """A JSON answer, encoded by msgspec: Starlette's JSONResponse builds a json.JSONEncoder
    for every answer, a noticeable part of the hot path's own work."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


class Facts(msgspec.Struct, frozen=True, kw_only=True):
    """What a delivery says about itself, as its endpoint read it."""

    event_type: str
    delivery_id: str | None = None
    repository: str | None = None
    branch: str | None = None
    tag: str | None = None
    commit: str | None = None
    sender: str | None = None


# ------------------------------------------------------------------ answering errors


class Problem:
    """An HTTP answer to a refused request. ``error`` is what the sender is told and the
    metrics outcome; ``detail`` and ``extra`` add to the JSON body."""

    __slots__ = ("detail", "error", "extra", "headers", "status")

    def __init__(
        self,
        status: int,
        error: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return body

    def response(self) -> JSONAnswer:
        return JSONAnswer(self.body(), status_code=self.status, headers=self.headers)


_RETRY_LATER: Final = {"Retry-After": "5"}
# What each code answers when nothing more precise applies. Every failed proof and every
# unknown thing answer alike: the reason stays in our logs and metrics.
BY_CODE: Final[Mapping[Code, Problem]] = {
    "invalid": Problem(400, "invalid"),
    "not_found": Problem(404, "not_found"),
    "conflict": Problem(409, "conflict"),
    "unauthorized": Problem(401, "unauthorized"),
    "unavailable": Problem(503, "unavailable", headers=_RETRY_LATER),
}
NOT_FOUND: Final = BY_CODE["not_found"]


def problem_for(exc: HookbusError) -> Problem:
    """The HTTP answer to any hookbus error: the one place statuses and bodies are chosen.

    Only the receiver's own refusals (``refusals``) tell the sender more than their code:
    other errors' messages were written for operators.
    """
    match exc:
        case ValidationFailed():
            violations = msgspec.to_builtins(exc.violations)
            return Problem(422, exc.reason, str(exc), violations=violations)
        case ValidationAborted():
            return Problem(422, exc.reason, str(exc))
        case BodyTooLarge():
            return Problem(413, exc.reason, str(exc))
        case UnsupportedMediaType():
            return Problem(415, exc.reason, str(exc))
        case BadRequest():
            return Problem(400, exc.reason, str(exc))
        case RateLimited():
            wait = policy.retry_after(exc.delay or 0)
            return Problem(429, exc.reason, str(exc), headers={"Retry-After": wait})
        case Unavailable():
            return Problem(503, "unavailable", str(exc), headers=_RETRY_LATER)
        case ConfigError():
            # Our configuration, not the sender's input: they should send it again later.
            return BY_CODE["unavailable"]
        case _:
            return BY_CODE[exc.code]


def reason_of(exc: HookbusError, problem: Problem) -> str:
    """The precise reason for metrics and logs (``bad_signature``, ``ip_denied``…)."""
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) else problem.error


class Meter:
    """One endpoint's request metrics, counted here and nowhere else: requests by outcome
    (``accepted``, ``duplicate`` or the error answered); for sources also the latency and
    refusals by precise reason. ``labels`` come before the outcome (a source's name)."""

    __slots__ = ("_labels", "_latency", "_observed", "_outcomes", "_rejected", "_requests")

    def __init__(
        self,
        requests: Counter,
        *labels: str,
        latency: Histogram | None = None,
        rejected: Counter | None = None,
    ) -> None:
        self._requests = requests
        self._labels = labels
        self._latency = latency
        self._rejected = rejected
        # Children made on first use (a series appears once it counts something) and kept:
        # labels() costs a lock and a lookup per call.
        self._outcomes: dict[str, Any] = {}
        self._observed: Any = None

    def _count(self, outcome: str, started: float) -> None:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self._requests.labels(*self._labels, outcome)
        child.inc()
        if self._latency is not None:
            if self._observed is None:
                self._observed = self._latency.labels(*self._labels)
            self._observed.observe(time.perf_counter() - started)

    async def measured(self, accept: Awaitable[Response]) -> Response:
        """Await an endpoint's work and count its answer, or answer and count its refusal."""
        looplag.touch()
        started = time.perf_counter()
        try:
            response = await accept
        except HookbusError as exc:
            return self.refused(exc, started)
        return self.answered(response, started)

    def answered(self, response: Response, started: float) -> Response:
        """Count a recorded delivery's answer: 202 new, 200 seen before."""
        self._count("duplicate" if response.status_code == 200 else "accepted", started)
        return response

    def refused(self, exc: HookbusError, started: float) -> Response:
        """Answer ``exc`` and count it."""
        problem = problem_for(exc)
        if self._rejected is not None and problem.status != 503:
            self._rejected.labels(*self._labels, reason_of(exc, problem)).inc()
        response = problem.response()
        self._count(problem.error, started)
        return response


# --------------------------------------------------------------------- reading a request


def headers_of(request: Request) -> dict[str, str]:
    """Header names lower-cased (the server already sends them so); read from the ASGI
    scope directly, without building Starlette's Headers on the hot path."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}


def peer_of(request: Request) -> str | None:
    """The connected peer's address, from the scope (no Address object per request)."""
    client = request.scope.get("client")
    return client[0] if client else None


def json_content_type(headers: Mapping[str, str], *, forms: bool = False) -> str:
    """The media type, which must be JSON (or a form, where a source takes GitHub's form
    posts with the JSON in a ``payload`` field)."""
    ctype = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype in ("application/json", "text/json") or ctype.endswith("+json"):
        return ctype
    if forms:
        if ctype == FORM:
            return ctype
        raise UnsupportedMediaType(
            f"expected application/json or a form with a payload field, got {ctype[:100]}"
        )
    raise UnsupportedMediaType(f"expected application/json, got {ctype}")


def json_object(body: bytes, *, max_depth: int | None = None) -> dict[str, Any]:
    """The body as a JSON object. Whatever else it is (not JSON, not UTF-8, nested past
    what the parser or ``max_depth`` allows) is refused with 400, never a 5xx."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:  # also numbers out of range (a ValidationError)
        raise BadBody(f"body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:  # msgspec checks UTF-8 inside strings this way
        raise BadBody("body is not valid JSON: a string is not valid UTF-8") from None
    except RecursionError:
        raise BadBody("body is nested too deeply for the JSON parser") from None
    if not isinstance(value, dict):
        raise BadBody("body must be a JSON object")
    if max_depth is not None and deeper_than(value, max_depth):
        raise BadBody(f"body is nested more than {max_depth} levels deep")
    return value


def deeper_than(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests objects and arrays more than ``limit`` levels deep (``{}`` is
    one level). Level by level, without recursion, so any depth is safe to measure."""
    level = [doc] if type(doc) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            below += [
                v for v in (node.values() if type(node) is dict else node) if type(v) in _CONTAINERS
            ]
        level = below
    return False


_CONTAINERS: Final = (dict, list)


def delivery_id(headers: Mapping[str, str]) -> str | None:
    """The sender's id for this delivery: ``Idempotency-Key``, else ``webhook-id``."""
    key = headers.get("idempotency-key") or headers.get("webhook-id") or None
    if key is not None and len(key) > MAX_KEY_LENGTH:
        raise BadRequest(f"the delivery id is longer than {MAX_KEY_LENGTH}")
    return key


def unstorable(facts: Facts, subject: str | None) -> str | None:
    """Which fact cannot be stored, if one cannot: Postgres text holds no NUL character.

    Checked on the few extracted strings only, never by scanning the body again (the raw
    body is bytea and the payload stays JSON, where NUL is escaped and storable).
    """
    f = facts
    for value in (f.event_type, f.delivery_id, f.repository, f.branch, f.tag, f.commit, f.sender):
        if value and "\x00" in value:
            return next(n for n in Facts.__struct_fields__ if "\x00" in (getattr(f, n) or ""))
    if subject and "\x00" in subject:
        return "subject"
    return None


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {h: headers[h] for h in KEPT_HEADERS if h in headers}


def dedupe_key(source: str, delivery: str | None) -> str | None:
    """The event log's key for a delivery of ``source`` (invariant 3); None without an id."""
    if not delivery:
        return None
    if len(delivery) > _HASHED_OVER:
        delivery = "sha256:" + hashlib.sha256(delivery.encode()).hexdigest()
    return f"{source}:{delivery}"


# ------------------------------------------------------------------------- the pipeline


class Inbound:
    """What every endpoint's accepted request goes through, opened in the app's lifespan."""

    __slots__ = ("committer", "max_body_bytes", "max_json_depth")

    def __init__(
        self, committer: GroupCommitter, max_body_bytes: int, max_json_depth: int = 64
    ) -> None:
        self.committer = committer
        self.max_body_bytes = max_body_bytes
        # For partner and image-push bodies; sources' bodies are bounded by the parser alone,
        # so the hot path never walks a body twice.
        self.max_json_depth = max_json_depth

    async def body(self, request: Request, headers: Mapping[str, str]) -> bytes:
        """The whole body, refused (413) as soon as it is known to pass the limit."""
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(limit)
        # Read from the ASGI channel itself: Starlette's request.stream() is an async
        # generator around the same messages, a noticeable cost per webhook.
        receive = request.receive
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # Ordinary on the internet (a sender's timeout, a dropped connection): no
                # traceback, nothing recorded; the meter counts it.
                log.debug("client disconnected mid-body", extra={"received_bytes": size})
                raise Disconnected()
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def record(
        self,
        *,
        source: str,
        kind: str,
        origin: str,
        tenant: str | None,
        facts: Facts,
        content_type: str,
        headers: dict[str, str],
        body: bytes,
        payload: bytes | None = None,
        remote_addr: str | None,
        subject: str | None = None,
        image: ev.ImageInfo | None = None,
    ) -> Response:
        """Build the event, commit it, then answer: 202 new, 200 seen before (invariant 1).

        ``origin`` is the event's CloudEvents source; ``payload`` the JSON inside ``body``
        where it is not the body itself (a form post).
        """
        where = unstorable(facts, subject)
        if where is not None:
            what = where.replace("_", " ")
            raise Unstorable(f"the {what} holds a NUL character, which cannot be recorded")
        data = ev.WebhookReceived(
            source=source,
            kind=kind,
            event_type=facts.event_type,
            delivery_id=facts.delivery_id,
            content_type=content_type,
            headers=headers,
            payload=msgspec.Raw(body if payload is None else payload),
            body_sha256=hashlib.sha256(body).hexdigest(),
            remote_addr=remote_addr,
            repository=facts.repository,
            branch=facts.branch,
            tag=facts.tag,
            commit=facts.commit,
            sender=facts.sender,
            image=image,
        )
        event = ev.make_event(data, source=origin, subject=subject, tenant=tenant)
        if tracing.enabled():  # the request's span (app._Traced) starts the event's trace
            event = tracing.with_current(event)
            tracing.tag("hookbus.event.id", event.id)
        pending = Pending(event, dedupe_key(source, facts.delivery_id), body)
        with correlated(event.id):
            try:
                recorded = await self.committer.record(pending)
            except Unstorable:
                raise  # this delivery alone: the rest of its batch was committed
            except Exception as exc:
                log.error("could not record delivery", extra={"source": source, "error": repr(exc)})
                raise Unavailable() from None
        if recorded.duplicate:
            return JSONAnswer({"id": recorded.event_id, "duplicate": True}, status_code=200)
        return JSONAnswer({"id": recorded.event_id}, status_code=202)
