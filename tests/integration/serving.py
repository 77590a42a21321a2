"""Helpers for tests that talk to a real receiver over HTTP and run the real ``hookbus`` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn

from hookbus_cli import main as cli
from hookbus_receiver.app import create_app
from hookbus_receiver.config import ReceiverConfig


@contextlib.asynccontextmanager
async def serve(settings: ReceiverConfig) -> AsyncIterator[str]:
    """The receiver app under uvicorn on ``settings.receiver.port``; yields its base URL."""
    port = settings.receiver.port
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None,
        lifespan="on", access_log=False, proxy_headers=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 30
    while not server.started:
        if task.done():
            task.result()
        assert asyncio.get_running_loop().time() < deadline, "receiver did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


def write_config(settings: ReceiverConfig, path: Path) -> Path:
    """A hookbus.toml pointing the CLI at the test's Postgres schema and receiver port."""
    path.write_text(
        f'prefix = "{settings.prefix}"\n'
        f"[database]\n"
        f'url = "{settings.database.url}"\n'
        f'schema = "{settings.database.schema}"\n'
        f"[receiver]\n"
        f'host = "127.0.0.1"\n'
        f"port = {settings.receiver.port}\n"
    )
    return path


async def run_cli(config: Path, *argv: str) -> tuple[int, str, str]:
    """Run ``hookbus --config CONFIG ARGV…`` in a thread (it runs its own event loop)."""

    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(["--config", str(config), "--data-dir", str(config.parent), *argv])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
                if isinstance(exc.code, str):
                    err.write(exc.code)
            else:
                code = 0
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(call)
