"""The operator API's HTTP app: the route table's operations, the OpenAPI document, the
dashboard's files, and /healthz, /readyz, /metrics — on its own port."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Final

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hookbus_common import logs
from hookbus_common.errors import HookbusError
from hookbus_common.outage import is_outage
from hookbus_common.service import runtime

from . import auth, config, openapi
from .config import ApiConfig
from .problems import ApiError, for_error, problem
from .replays import Replays
from .routes import OPS, Ctx, Op, State

__all__ = ["create_app"]

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "hookbus_api_requests_total", "Operator API requests by operation and status", ["op", "status"]
)

_encoder = msgspec.json.Encoder()

# The dashboard: plain files, no build step. A strict policy: no inline script or style.
STATIC: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS: Final = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; base-uri 'none';"
    " frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def _state(request: Request) -> State:
    state: State = request.scope["state"]
    return state


def _endpoint(op: Op) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state = _state(request)
        try:
            who = None
            if op.scope is not None:
                who = await auth.principal(state["runtime"].pool, request)
                auth.require(who, op.scope)
            result = await op.handler(Ctx(request, state, who))
            response = (
                result
                if isinstance(result, Response)
                else Response(_encoder.encode(result), op.status, media_type=op.media_type)
            )
        except ApiError as exc:
            response = problem(exc.code, exc.detail)
        except HookbusError as exc:
            response = for_error(exc)
        except Exception as exc:
            if not is_outage(exc):
                log.exception("operator API request failed", extra={"op": op.operation_id})
                response = problem("unavailable", "the request failed; see the API's log")
            else:
                response = problem("unavailable", "Postgres or NATS is away")
        REQUESTS.labels(op.operation_id, str(response.status_code)).inc()
        return response

    endpoint.__name__ = op.operation_id
    return endpoint


async def _openapi(request: Request) -> Response:
    return Response(_encoder.encode(openapi.document()), media_type="application/json")


async def _index(request: Request) -> Response:
    return _file("index.html", "text/html; charset=utf-8")


async def _static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:
        return problem("not_found", f"no file {name}")
    return _file(name, STATIC[name])


def _file(name: str, media_type: str) -> Response:
    body = (resources.files("hookbus_api") / "static" / name).read_bytes()
    return Response(body, media_type=media_type, headers=_SECURITY_HEADERS)


async def _healthz(request: Request) -> Response:
    return Response("ok\n", media_type="text/plain")


async def _readyz(request: Request) -> Response:
    checks = await _state(request)["runtime"].ready()
    body = "".join(f"{k}: {'ok' if v else 'down'}\n" for k, v in checks.items())
    return Response(body, status_code=200 if all(checks.values()) else 503)


async def _metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _not_found(request: Request, exc: Exception) -> Response:
    return problem("not_found", instance=request.url.path)


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return problem("method_not_allowed", instance=request.url.path)


def create_app(settings: ApiConfig | None = None) -> Starlette:
    """The ASGI app; everything it serves with is opened in its lifespan."""
    if settings is None:  # started by uvicorn as a factory
        settings = config.load()
        logs.setup("api", settings.log.level, settings.log.format)
    cfg = settings

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with runtime(cfg, "api") as rt:
            runner = Replays(rt, limit=cfg.api.max_replays)
            try:
                yield State(runtime=rt, settings=cfg, replays=runner)
            finally:
                await runner.close()

    routes: list[Any] = [
        Route(op.path, _endpoint(op), methods=[op.method], name=op.operation_id) for op in OPS
    ]
    # Two operations on one path (GET and POST /api/replays) share the path: Starlette
    # takes the first route whose path matches and whose method fits.
    routes += [
        Route("/api/openapi.json", _openapi, methods=["GET"]),
        Route("/", _index, methods=["GET"]),
        Route("/static/{name}", _static, methods=["GET"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", _readyz, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
