"""The receiver's HTTP app: its endpoints, and the resources its lifespan opens for them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hookbus_common import gcsettle, logs, tracing
from hookbus_common.service import Runtime, runtime

from . import config, webhookurl
from .config import ReceiverConfig
from .groupcommit import GroupCommitter
from .imagepush import ImagePushHooks
from .inbound import NOT_FOUND, Inbound, Problem
from .partners import PartnerHooks
from .respond import Responder
from .schemachecks import SchemaChecks
from .sourcehooks import SourceHooks, prepare_sources
from .waiters import Waiters

__all__ = ["State", "create_app"]


class State(TypedDict):
    """What the lifespan opens; uvicorn hands a copy to every request as ``scope["state"]``."""

    runtime: Runtime
    sources: SourceHooks
    partners: PartnerHooks
    image_push: ImagePushHooks


def _state(request: Request) -> State:
    state: State = request.scope["state"]
    return state


async def _source_hook(request: Request) -> Response:
    # Reached only past _HooksFirst (a mounted root path): the same hook all the same.
    return await _state(request)["sources"].hook(request, request.path_params["source"])


async def _partner_hook(request: Request) -> Response:
    return await _state(request)["partners"].handle(request)


async def _image_push_hook(request: Request) -> Response:
    return await _state(request)["image_push"].handle(request)


async def _healthz(request: Request) -> Response:
    return Response("ok\n", media_type="text/plain")


async def _readyz(request: Request) -> Response:
    checks = await _state(request)["runtime"].ready()
    body = "".join(f"{k}: {'ok' if v else 'down'}\n" for k, v in checks.items())
    return Response(body, status_code=200 if all(checks.values()) else 503)


async def _metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _not_found(request: Request, exc: Exception) -> Response:
    return NOT_FOUND.response()


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return Problem(405, "method_not_allowed").response()


class _HooksFirst:
    """Serve ``POST /hooks/<source>`` straight to the sources, everything else via Starlette.

    The webhook path is the hot one; Starlette's middleware stack and router cost about as
    much per request as the rest of the receiver's work (measured with py-spy under load),
    and add nothing there: the sources answer every outcome themselves.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith("/hooks/") and len(path) > 7 and "/" not in path[7:]:
                try:
                    hooks: SourceHooks = scope["state"]["sources"]
                except KeyError:
                    raise RuntimeError(
                        "the receiver serves only once its lifespan has run"
                    ) from None
                response = await hooks.hook(Request(scope, receive), path[7:])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# The routes a POST can take, for a span's name: never the path itself, which holds a
# partner's token or the image-push secret.
_ROUTES = (("/hooks/", "/hooks/{source}"), ("/webhook/v1/", "/webhook/v1/{token}"),
           ("/api/webhook/", "/api/webhook/{secret}"))  # fmt: skip


class _Traced:
    """A server span per POST while tracing is on, continuing the sender's
    ``traceparent``; the event a request records carries it on (``Inbound.record``).
    Off, it costs one check per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not tracing.enabled() or scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = next((r for start, r in _ROUTES if path.startswith(start)), "other")
        attributes = {"http.request.method": "POST", "http.route": route}
        if route == "/hooks/{source}":
            attributes["hookbus.source"] = path[7:]
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.lower() in (b"traceparent", b"tracestate")
        }
        with tracing.serving(f"POST {route}", headers, attributes) as span:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        from opentelemetry.trace import Status, StatusCode

                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, sending)


def create_app(settings: ReceiverConfig | None = None) -> ASGIApp:
    """The ASGI app. Everything it serves with is opened in its lifespan and handed to
    requests through the lifespan state, never made at import or kept in a holder."""
    if settings is None:  # started by uvicorn (one call per worker process)
        settings = config.load()
        logs.setup("receiver", settings.log.level, settings.log.format)
    return _Traced(_HooksFirst(_starlette(settings)))


def _starlette(settings: ReceiverConfig) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        admitted = prepare_sources(settings)
        async with runtime(settings, "receiver") as rt:
            async with rt.pool.acquire() as conn:
                await webhookurl.ensure(conn)  # the image-push URL, made on first start
            committer = GroupCommitter(
                rt.outbox,
                batch_size=settings.receiver.commit_batch_size,
                interval=settings.receiver.commit_interval_ms / 1000,
            )
            committer.start()
            pipeline = Inbound(
                committer, settings.receiver.max_body_bytes, settings.receiver.max_json_depth
            )
            schemas = SchemaChecks(
                workers=settings.receiver.validation_workers,
                budget=settings.receiver.validation_timeout,
            )
            # Only when some source waits for its jobs: a subscription to every job end.
            waiters = None
            if any(a.respond_wait is not None for a in admitted.values()):
                waiters = Waiters(rt.bus, rt.pool, settings.receiver.respond_max_waiting)
                await waiters.start()
            responder = (
                None
                if waiters is None
                else Responder(waiters, settings.receiver.respond_max_output_bytes)
            )
            state = State(
                runtime=rt,
                sources=SourceHooks(pipeline, admitted, responder),
                partners=PartnerHooks(rt.pool, pipeline, schemas),
                image_push=ImagePushHooks(rt.pool, pipeline),
            )
            # What exists now lives as long as the process: the collector walks it no
            # more.
            gcsettle.settle()
            try:
                yield state
            finally:
                if waiters is not None:
                    await waiters.close()
                await committer.close()
                await schemas.close()

    return Starlette(
        routes=[
            # POSTs are served before Starlette (_HooksFirst); the route answers other
            # methods with 405, as for any known path.
            Route("/hooks/{source}", _source_hook, methods=["POST"]),
            Route("/webhook/v1/{token}", _partner_hook, methods=["POST"]),
            Route("/api/webhook/{secret}", _image_push_hook, methods=["POST"]),
            Route("/healthz", _healthz, methods=["GET"]),
            Route("/readyz", _readyz, methods=["GET"]),
            Route("/metrics", _metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
