"""The ceiling for ingest: a bare Starlette app on the receiver's server stack answering 202.

It reads the body, as the receiver must, and does nothing else. Started as its own process
with the same uvicorn options as ``hookbus_receiver.__main__`` (uvloop, httptools, no
access log, same worker count).
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_ACCEPTED = {"id": "evt_00000000000000000000000000000000"}


async def hook(request: Request) -> Response:
    await request.body()
    return JSONResponse(_ACCEPTED, status_code=202)


async def healthz(request: Request) -> Response:
    return Response("ok\n", media_type="text/plain")


def create_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/hooks/{source}", hook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bareapp")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "bench.bareapp:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
