"""Serving the operator API in tests (uvicorn on the test's loop or in a thread) and a
recorded history to look at: webhooks, their routing, a failed job, a dead delivery."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from hookbus_api.app import create_app
from hookbus_api.config import ApiConfig
from hookbus_api.config import load as load_api
from hookbus_cli.embedded import free_port
from hookbus_common import events as ev
from hookbus_common.eventlog import Pending
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings


def api_config(settings: Settings, base_dir: Path, extra_toml: str = "") -> ApiConfig:
    """The test's settings as a real file the API loads, on a free port."""
    path = base_dir / "hookbus.toml"
    path.write_text(
        f'prefix = "{settings.prefix}"\n'
        f'[nats]\nurl = "{settings.nats.url}"\nconnect_timeout = 10\n'
        f'[database]\nurl = "{settings.database.url}"\nschema = "{settings.database.schema}"\n'
        f"pool_max = 5\n[api]\nport = {free_port()}\n{extra_toml}"
    )
    return load_api(path, {})


def _server(config: ApiConfig) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host="127.0.0.1",
            port=config.api.port,
            log_config=None,
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    )


@contextlib.asynccontextmanager
async def serve_api(config: ApiConfig) -> AsyncIterator[str]:
    server = _server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 30
    while not server.started:
        if task.done():
            task.result()
        assert asyncio.get_running_loop().time() < deadline, "api did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.api.port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


@contextlib.contextmanager
def serve_api_in_thread(config: ApiConfig) -> Iterator[str]:
    server = _server(config)
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "api exited during start-up"
        assert time.monotonic() < deadline, "api did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.api.port}"
    finally:
        server.should_exit = True
        thread.join(20)


# ------------------------------------------------------------------ history


class Chain(msgspec.Struct):
    hook: ev.Event[ev.WebhookReceived]
    routed: ev.Event[ev.WebhookRouted]
    delivery_id: str
    job_id: str
    events: list[ev.Event[Any]]


def webhook(source: str, n: int, *, tenant: str = "acme") -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source=source, kind="github", event_type="push", delivery_id=f"{source}-{n}",
        headers={"x-github-event": "push", "x-github-delivery": f"{source}-{n}"},
        payload=msgspec.Raw(b'{"ref": "refs/heads/main", "n": %d}' % n),
        repository="acme/app", branch="main",
    )  # fmt: skip
    return ev.make_event(data, source=f"/hookbus/receiver/{source}", tenant=tenant, subject="a/b")


def failing_chain(hook: ev.Event[ev.WebhookReceived]) -> Chain:
    """What the router, executor and dispatcher record for ``hook`` when its deploy job
    fails and its notification's endpoint is down for good."""
    routed = ev.make_event(
        ev.WebhookRouted(
            source=hook.data.source, event_type="push", webhook_id=hook.id,
            matched=["deploy", "notify"],
            evaluations=[
                ev.RuleEvaluation(rule="deploy", matched=True, reason="matched"),
                ev.RuleEvaluation(rule="notify", matched=True, reason="matched"),
                ev.RuleEvaluation(rule="docs", matched=False, reason="branch main is not gh-pages"),
            ],
        ),
        source="/hookbus/router", id=ev.derived_id(hook.id, "routed"), cause=hook,
    )  # fmt: skip
    job_id = ev.derived_id(routed.id, "job/deploy/0", prefix="job")
    spec = ev.ShellSpec(command=["./deploy.sh"], env={"DEPLOY_TOKEN": "s3cr3t-deploy"})
    jreq = ev.make_event(
        ev.JobRequestedV2(job_id=job_id, rule="deploy", webhook_id=hook.id, spec=spec),
        source="/hookbus/router", id=ev.derived_id(routed.id, "request/deploy/0"), cause=routed,
    )  # fmt: skip
    started = ev.make_event(
        ev.JobStarted(job_id=job_id, kind="shell", rule="deploy"),
        source="/hookbus/executor", id=ev.derived_id(jreq.id, "started/1"), cause=jreq,
    )  # fmt: skip
    failed = ev.make_event(
        ev.JobFailed(
            job_id=job_id, kind="shell", rule="deploy", exit_code=3, duration_ms=812.0,
            output="pulling acme/app\nerror: disk full\n", output_bytes=34,
        ),
        source="/hookbus/executor", id=ev.derived_id(jreq.id, "finished"), cause=jreq,
    )  # fmt: skip
    delivery_id = ev.derived_id(routed.id, "delivery/notify/0", prefix="dlv")
    url = "https://hooks.example.com/in?token=url-secret"
    dreq = ev.make_event(
        ev.DeliveryRequested(
            delivery_id=delivery_id, rule="notify", webhook_id=hook.id, url=url,
            headers={"Authorization": "Bearer header-secret", "X-Team": "ops"},
            body=msgspec.Raw(b'{"text": "pushed"}'), tenant=hook.tenant,
        ),
        source="/hookbus/router", id=ev.derived_id(routed.id, "request/notify/0"), cause=routed,
    )  # fmt: skip
    attempts: list[ev.Event[Any]] = [
        ev.make_event(
            ev.DeliveryAttempted(
                delivery_id=delivery_id,
                url=url,
                attempt=n,
                status_code=503,
                response_body="upstream down",
                duration_ms=20.0,
                tenant=hook.tenant,
            ),
            source="/hookbus/dispatcher",
            id=ev.derived_id(dreq.id, f"attempt/{n}"),
            cause=dreq,
        )
        for n in (1, 2)
    ]
    dead = ev.make_event(
        ev.DeliveryDead(
            delivery_id=delivery_id, url=url, attempt=2, status_code=503, tenant=hook.tenant
        ),
        source="/hookbus/dispatcher", id=ev.derived_id(dreq.id, "outcome"), cause=dreq,
    )  # fmt: skip
    return Chain(
        hook=hook, routed=routed, delivery_id=delivery_id, job_id=job_id,
        events=[hook, routed, jreq, dreq, started, failed, *attempts, dead],
    )  # fmt: skip


RAW_BODY = b'{"ref": "refs/heads/main", "n": %d}'


async def record_chain(rt: Runtime, chain: Chain) -> None:
    """Commit the chain one service step at a time, as the services do; the webhook with
    its raw body, as the receiver records it."""
    hook = chain.hook
    await rt.outbox.commit_and_publish(
        [Pending(hook, dedupe_key=f"test:{hook.id}", raw_body=bytes(hook.data.payload))]
    )
    for e in chain.events[1:]:
        await rt.outbox.commit_and_publish([e])
