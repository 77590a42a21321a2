"""The receiver's HTTP API: verify, validate, record durably, then answer."""

from __future__ import annotations

import gc
import hashlib
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hookbus_common import events as ev
from hookbus_common import logs
from hookbus_common.eventlog import Pending
from hookbus_common.service import Runtime, runtime

from . import config, imagepush, inbound, partners, policy, sources
from .config import ReceiverConfig, SourceConfig
from .groupcommit import GroupCommitter
from .inbound import NOT_FOUND, Problem

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "hookbus_receiver_requests_total",
    "Inbound webhook requests by source and outcome",
    ["source", "outcome"],
)
LATENCY = Histogram(
    "hookbus_receiver_request_seconds",
    "Time from request to answer for known sources",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REJECTED = Counter(
    "hookbus_receiver_rejected_total",
    "Refused webhook requests by source and precise reason (ip_denied, bad_signature, ...)",
    ["source", "reason"],
)


class Admitted:
    """A source with its admission policy (allow-list, proxies, rate limit) prepared."""

    def __init__(self, name: str, config: SourceConfig) -> None:
        self.source = sources.Source(name, config)
        self.allow = policy.networks(config.allow_ips)
        self.trusted = policy.networks(config.trusted_proxies)
        limit = config.rate_limit
        self.bucket = (
            policy.TokenBucket(limit.per_second, limit.capacity) if limit is not None else None
        )
        if config.kind == "none" and not self.allow:
            log.warning(
                "source accepts unsigned deliveries from anywhere; consider allow_ips",
                extra={"source": name},
            )


def _form_payload(body: bytes) -> bytes:
    """The JSON in a form body's ``payload`` field, as GitHub sends with that content type."""
    try:
        fields = urllib.parse.parse_qs(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)
        )
    except (UnicodeDecodeError, ValueError):
        raise sources.BadBody("form body is not valid application/x-www-form-urlencoded") from None
    values = fields.get("payload")
    if not values:
        raise sources.BadBody("form body has no payload field")
    return values[0].encode("utf-8", "surrogatepass")


class Receiver:
    def __init__(
        self,
        settings: ReceiverConfig,
        rt: Runtime,
        committer: GroupCommitter,
        admitted: dict[str, Admitted],
    ) -> None:
        self.settings = settings
        self.rt = rt
        self.committer = committer
        self.sources = admitted

    async def hook(self, request: Request) -> Response:
        name = request.path_params["source"]
        source = self.sources.get(name)
        if source is None:
            # The same answer as any unknown path: nothing tells which sources exist.
            return NOT_FOUND.response()
        started = time.perf_counter()
        try:
            response = await self._accept(source, request)
        except Problem as p:
            REQUESTS.labels(name, p.code).inc()
            if p.status != 503:
                REJECTED.labels(name, p.reason).inc()
            return p.response()
        finally:
            LATENCY.labels(name).observe(time.perf_counter() - started)
        REQUESTS.labels(name, inbound.outcome(response)).inc()
        return response

    async def _accept(self, admitted: Admitted, request: Request) -> Response:
        source, name = admitted.source, admitted.source.name
        headers = inbound.headers_of(request)
        peer = request.client.host if request.client else None
        client = policy.client_address(peer, headers.get("x-forwarded-for"), admitted.trusted)
        if not policy.allowed(client, admitted.allow):
            # Outside the allow-list looks like a path that does not exist.
            raise Problem(404, "not_found", reason="ip_denied")
        if admitted.bucket is not None:
            wait = admitted.bucket.take(time.monotonic())
            if wait:
                raise Problem(
                    429, "rate_limited", "too many requests for this source",
                    headers={"Retry-After": policy.retry_after(wait)},
                )  # fmt: skip
        body = await inbound.read_body(request, self.settings.receiver.max_body_bytes)
        ctype = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        form = ctype == "application/x-www-form-urlencoded"
        if (
            not form
            and ctype not in ("application/json", "text/json")
            and not ctype.endswith("+json")
        ):
            raise Problem(
                415, "unsupported_media_type",
                f"expected application/json or a form with a payload field, got {ctype[:100]}",
            )  # fmt: skip
        try:
            source.verify(headers, body, time.time())
        except sources.VerificationError as exc:
            # Every failure answers alike: the reason is for our logs and metrics only.
            log.info("rejected delivery", extra={"source": name, "reason": exc.reason})
            raise Problem(401, "unauthorized", reason=exc.reason) from None
        try:
            payload = _form_payload(body) if form else body
            parsed = sources.parse_json_object(payload)
            facts = source.facts(headers, parsed)
        except sources.BadBody as exc:
            raise Problem(400, "bad_body", str(exc)) from None
        data = ev.WebhookReceived(
            source=name,
            kind=source.kind,
            event_type=facts.event_type,
            delivery_id=facts.delivery_id,
            content_type=ctype,
            headers=source.kept_headers(headers),
            payload=msgspec.Raw(payload),
            body_sha256=hashlib.sha256(body).hexdigest(),
            remote_addr=str(client) if client is not None else peer,
            repository=facts.repository,
            branch=facts.branch,
            tag=facts.tag,
            commit=facts.commit,
            sender=facts.sender,
        )
        event = ev.make_event(
            data,
            source=f"/hookbus/receiver/{name}",
            id=ev.new_id(),
            subject=facts.repository,
            tenant=source.config.tenant,
        )
        return await inbound.record(
            self.committer, Pending(event, source.dedupe_key(facts.delivery_id), body), name
        )

    async def readyz(self, request: Request) -> Response:
        checks = await self.rt.ready()
        body = "".join(f"{k}: {'ok' if v else 'down'}\n" for k, v in checks.items())
        return Response(body, status_code=200 if all(checks.values()) else 503)


async def _not_found(request: Request, exc: Exception) -> Response:
    return NOT_FOUND.response()


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return Problem(405, "method_not_allowed").response()


def prepare_sources(settings: ReceiverConfig) -> dict[str, Admitted]:
    """Build every source before serving: a key that cannot be used stops the start with a
    ConfigError naming it."""
    return {name: Admitted(name, cfg) for name, cfg in settings.sources.items()}


class _HooksFirst:
    """Serve ``POST /hooks/<source>`` straight to the receiver, everything else via Starlette.

    The webhook path is the hot one; Starlette's middleware stack and router cost about as
    much per request as the rest of the receiver's work (measured with py-spy under load),
    and add nothing there: the receiver answers every outcome itself.
    """

    def __init__(self, app: Starlette, hook: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = app
        self.hook = hook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith("/hooks/") and len(path) > 7 and "/" not in path[7:]:
                scope["path_params"] = {"source": path[7:]}
                response = await self.hook(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: ReceiverConfig | None = None) -> ASGIApp:
    """The ASGI app; connections open in its lifespan, never at import."""
    if settings is None:  # started by uvicorn (one call per worker process)
        settings = config.load()
        logs.setup("receiver", settings.log.level, settings.log.format)
    holder: dict[str, Receiver] = {}
    partner_hooks = partners.PartnerHooks(settings)
    image_hooks = imagepush.ImagePushHooks(settings)
    admitted = prepare_sources(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with runtime(settings, "receiver") as rt:
            committer = GroupCommitter(
                rt.outbox,
                batch_size=settings.receiver.commit_batch_size,
                interval=settings.receiver.commit_interval_ms / 1000,
            )
            committer.start()
            holder["r"] = Receiver(settings, rt, committer, admitted)
            partner_hooks.bind(rt.pool, committer)
            await image_hooks.bind(rt.pool, committer)
            # What exists now lives as long as the process: keep the collector from
            # walking it again on every full collection.
            gc.freeze()
            try:
                yield
            finally:
                await committer.close()

    async def hook(request: Request) -> Response:
        return await holder["r"].hook(request)

    async def healthz(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def readyz(request: Request) -> Response:
        return await holder["r"].readyz(request)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/hooks/{source}", hook, methods=["POST"]),
            Route("/webhook/v1/{token}", partner_hooks.handle, methods=["POST"]),
            Route("/api/webhook/{secret}", image_hooks.handle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
    return _HooksFirst(app, hook)
