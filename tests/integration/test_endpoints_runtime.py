"""Endpoints managed at run time, end to end: added, rotated, paused, resumed and deleted
through the CLI's store (and the `hookbus endpoints` process), messages committed to the
log as the API commits them, and the dispatcher as its main() wires it (delivery handler
with fan-out, the run-time endpoint store, the scheduler) consuming real NATS, writing
real Postgres and sending to a sink on loopback, signed with the run-time secret."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from hookbus_api import messages
from hookbus_api.messages import SendMessage
from hookbus_cli.embedded import free_port
from hookbus_common import readmodels
from hookbus_common.consumer import Consumer
from hookbus_common.service import Runtime
from hookbus_dispatcher import endpointstore, retryafter
from hookbus_dispatcher.config import Endpoint
from hookbus_dispatcher.delivery import make_handler, max_deliver
from hookbus_dispatcher.endpointstore import EndpointConflict, EndpointNotFound
from hookbus_dispatcher.fanout import delivery_id, with_fanout
from hookbus_dispatcher.schedule import Scheduler
from hookbus_dispatcher.ssrf import guarded_client

from .test_cli import clean_env, hookbus
from .test_dispatcher import LOOPBACK, Received, Sink, _status, _until

pytestmark = pytest.mark.integration


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


@contextlib.asynccontextmanager
async def dispatcher(
    rt: Runtime, configured: Mapping[str, Endpoint] | None = None
) -> AsyncIterator[None]:
    """The dispatcher as its main() builds it (loopback allowed, no endpoint cache)."""
    stop = asyncio.Event()
    async with guarded_client(allow_networks=LOOPBACK, timeout=10.0) as client:
        scheduler = Scheduler(rt.pool, rt.bus, clock=retryafter.utcnow, idle_interval=0.2)
        deliver = make_handler(
            client, rt.pool, 3, endpoints=configured, scheduler=scheduler,
            retry_schedule=[0.2, 0.2], runtime=endpointstore.Store(rt.pool, ttl=0),
        )  # fmt: skip
        consumer = Consumer(
            service="dispatcher", bus=rt.bus, outbox=rt.outbox,
            durable=f"{rt.bus.prefix}-dispatcher",
            filter_subjects=[
                f"{rt.bus.prefix}.delivery.requested.>", f"{rt.bus.prefix}.message.submitted.>"
            ],
            handler=with_fanout(deliver, rt.pool, configured),
            max_in_flight=4, max_deliver=max_deliver(3), terminal_step="outcome",
        )  # fmt: skip
        tasks = [
            asyncio.create_task(consumer.run(stop)),
            asyncio.create_task(scheduler.run(stop)),
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


async def send(
    rt: Runtime, event_type: str, payload: Any, tenant: str = "default", key: str | None = None
) -> messages.MessageAccepted:
    """What POST /api/v1/messages does: commit, then publish."""
    msg = SendMessage(event_type=event_type, payload=payload, tenant=tenant, idempotency_key=key)
    async with rt.pool.acquire() as conn:
        accepted, appended = await messages.submit(conn, rt.settings.prefix, msg, by="test")
    await rt.outbox.publish(appended)
    return accepted


async def add(rt: Runtime, name: str, url: str, **kw: Any) -> str:
    async with rt.pool.acquire() as conn:
        _, secret = await endpointstore.add(conn, rt.settings.prefix, name=name, url=url, **kw)
    return secret


async def received(sink: Sink, n: int) -> list[Received]:
    async def enough() -> bool:
        return len(sink.received) >= n

    await _until(enough)
    return list(sink.received)


def _verify(secret: str, got: Received) -> Any:
    return Webhook(secret).verify(got.body, got.headers)


def _delivery_of(accepted: messages.MessageAccepted, endpoint: str) -> str:
    return delivery_id(accepted.event_id, endpoint)


async def test_an_added_endpoint_gets_a_sent_message_signed_with_its_secret(
    rt: Runtime, sink: Sink
) -> None:
    secret = await add(rt, "billing", sink.url, tenant="acme", events=["invoice.*"])
    assert secret.startswith("whsec_")
    async with dispatcher(rt):
        accepted = await send(rt, "invoice.paid", {"id": "in_1", "amount": 5}, tenant="acme")
        (got,) = await received(sink, 1)
    assert _verify(secret, got) == {"id": "in_1", "amount": 5}
    assert got.headers["webhook-id"] == accepted.id  # the message id, at every endpoint
    assert got.headers["x-hookbus-delivery"] == _delivery_of(accepted, "billing")
    assert await _status(rt, _delivery_of(accepted, "billing")) == ("succeeded", 1, 200)
    # The secret is nowhere in the log.
    texts = await rt.pool.fetch("SELECT type, data::text AS data FROM events")
    assert "io.hookbus.endpoint.created.v1" in {r["type"] for r in texts}
    assert all(secret not in r["data"] and secret[6:] not in r["data"] for r in texts)


async def test_a_rotated_secret_and_the_one_before_both_sign_during_the_window(
    rt: Runtime, sink: Sink
) -> None:
    old = await add(rt, "billing", sink.url)
    async with rt.pool.acquire() as conn:
        _, new, _ = await endpointstore.rotate(conn, rt.settings.prefix, "billing", window=3600)
    async with dispatcher(rt):
        await send(rt, "invoice.paid", {"n": 1})
        (got,) = await received(sink, 1)
        assert len(got.headers["webhook-signature"].split()) == 2
        assert _verify(new, got) == {"n": 1}
        assert _verify(old, got) == {"n": 1}
        # Rotated again with no window: only the newest signs.
        async with rt.pool.acquire() as conn:
            _, newest, _ = await endpointstore.rotate(conn, rt.settings.prefix, "billing", window=0)
        await send(rt, "invoice.paid", {"n": 2})
        got = (await received(sink, 2))[1]
    assert len(got.headers["webhook-signature"].split()) == 1
    assert _verify(newest, got) == {"n": 2}
    for stale in (old, new):
        with pytest.raises(WebhookVerificationError):
            _verify(stale, got)


async def test_a_paused_endpoint_gets_nothing_until_resumed_and_then_what_waited(
    rt: Runtime, sink: Sink
) -> None:
    secret = await add(rt, "billing", sink.url)
    async with rt.pool.acquire() as conn:
        await endpointstore.set_paused(conn, rt.settings.prefix, "billing", True, reason="maint")
    async with dispatcher(rt):
        accepted = await send(rt, "invoice.paid", {"n": 1})
        dlv = _delivery_of(accepted, "billing")

        async def held() -> bool:
            return bool(
                await rt.pool.fetchval(
                    "SELECT 1 FROM delivery_schedule WHERE delivery_id = $1", dlv
                )
            )

        await _until(held)
        # Held, not attempted: no request, no attempt, the delivery still pending.
        assert sink.received == []
        assert await _status(rt, dlv) == ("pending", 0, None)
        async with rt.pool.acquire() as conn:
            _, released = await endpointstore.set_paused(conn, rt.settings.prefix, "billing", False)
        assert released == 1
        (got,) = await received(sink, 1)
    assert _verify(secret, got) == {"n": 1}
    assert await _status(rt, dlv) == ("succeeded", 1, 200)


async def test_a_deleted_endpoint_is_sent_nothing_and_its_name_can_be_used_again(
    rt: Runtime, sink: Sink
) -> None:
    await add(rt, "billing", sink.url)
    async with rt.pool.acquire() as conn:
        gone = await endpointstore.delete(conn, rt.settings.prefix, "billing")
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM endpoint_secrets WHERE endpoint_id = $1", gone.endpoint_id
            )
            == 0
        )
        with pytest.raises(EndpointNotFound):
            await endpointstore.delete(conn, rt.settings.prefix, "billing")
    async with dispatcher(rt):
        accepted = await send(rt, "invoice.paid", {"n": 1})

        async def dispatched() -> bool:
            return bool(
                await rt.pool.fetchval(
                    "SELECT 1 FROM events WHERE type = 'io.hookbus.message.dispatched.v1'"
                    " AND data->>'message_id' = $1",
                    accepted.id,
                )
            )

        await _until(dispatched)
    assert sink.received == []
    again = await add(rt, "billing", sink.url)
    assert again.startswith("whsec_")


async def test_names_clash_with_the_config_file_and_with_each_other(
    rt: Runtime, sink: Sink
) -> None:
    async with rt.pool.acquire() as conn:
        with pytest.raises(EndpointConflict, match=r"\[endpoints.billing\]"):
            await endpointstore.add(
                conn, rt.settings.prefix, name="billing", url=sink.url, configured=["billing"]
            )
        await endpointstore.add(conn, rt.settings.prefix, name="crm", url=sink.url)
        with pytest.raises(EndpointConflict, match="exists"):
            await endpointstore.add(conn, rt.settings.prefix, name="crm", url=sink.url)
        assert await endpointstore.clashes(conn, ["crm", "billing"]) == ["crm"]


async def test_the_endpoints_read_model_is_rebuilt_from_the_log(rt: Runtime, sink: Sink) -> None:
    await add(rt, "a", sink.url, tenant="acme", events=["invoice.*"])
    await add(rt, "b", sink.url)
    await add(rt, "c", sink.url)
    async with rt.pool.acquire() as conn:
        p = rt.settings.prefix
        await endpointstore.update(conn, p, "a", url=sink.url + "/v2", description="new")
        await endpointstore.set_paused(conn, p, "b", True)
        await endpointstore.delete(conn, p, "c")
        before = [msgspec.to_builtins(e) for e in await endpointstore.list_all(conn)]
        secrets = await conn.fetchval("SELECT count(*) FROM endpoint_secrets")
        await readmodels.rebuild(conn)
        after = [msgspec.to_builtins(e) for e in await endpointstore.list_all(conn)]
        assert await conn.fetchval("SELECT count(*) FROM endpoint_secrets") == secrets
    assert after == before
    assert [(e["name"], e["paused"], e["url"]) for e in after] == [
        ("a", False, sink.url + "/v2"),
        ("b", True, sink.url),
    ]


def _env(rt: Runtime) -> dict[str, str]:
    s = rt.settings
    return clean_env(
        HOOKBUS_DATABASE__URL=s.database.url,
        HOOKBUS_DATABASE__SCHEMA=s.database.schema,
        HOOKBUS_PREFIX=s.prefix,
    )


def test_the_cli_adds_lists_rotates_pauses_and_deletes(rt: Runtime, tmp_path: Path) -> None:
    (tmp_path / "hookbus.toml").write_text(
        '[endpoints.billing]\nurl = "https://billing.example.com/in"\n'
    )

    def run(*argv: str, ok: bool = True) -> str:
        out = hookbus("-c", str(tmp_path / "hookbus.toml"), "endpoints", *argv, env=_env(rt),
                      cwd=tmp_path)  # fmt: skip
        assert (out.returncode == 0) is ok, out.stderr
        return out.stdout if ok else out.stderr

    argv = ("add", "crm", "https://crm.example.com/in", "--tenant", "acme", "-e", "deal.*")
    added = json.loads(run(*argv, "--json"))
    assert added["secret"].startswith("whsec_")
    assert added["endpoint"]["kind"] == "runtime"
    text = run("add", "erp", "https://erp.example.com/in")
    assert "shown only now" in text
    assert "whsec_" in text
    assert "in the config file" in run("add", "billing", "https://x.example.com", ok=False)
    assert "url" in run("add", "bad", "ftp://x.example.com", ok=False)

    table = run("list").splitlines()
    assert table[0].split() == ["NAME", "STATE", "TENANT", "KIND", "EVENTS", "URL", "NOTE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["billing"][1:4] == ["enabled", "default", "config"]
    assert rows["crm"][1:5] == ["enabled", "acme", "runtime", "deal.*"]
    listed = [json.loads(line) for line in run("list", "--json", "--tenant", "acme").splitlines()]
    assert [v["name"] for v in listed] == ["crm"]

    rotated = json.loads(run("rotate-secret", "crm", "--keep-old", "1h", "--json"))
    assert rotated["secret"] not in (added["secret"],)
    assert "paused" in run("pause", "crm", "--reason", "maintenance")
    assert json.loads(run("show", "crm", "--json"))["state"] == "paused"
    assert "already" in run("pause", "crm", ok=False)
    assert "resumed" in run("resume", "crm")
    run("update", "crm", "--url", "https://crm2.example.com/in", "-e", "deal.won")
    shown = json.loads(run("show", "crm", "--json"))
    assert (shown["url"], shown["events"]) == ("https://crm2.example.com/in", ["deal.won"])
    assert "deleted" in run("delete", "crm")
    assert "crm" not in run("list")
    # Neither secret reached the log's readable fields.
    out = hookbus("-c", str(tmp_path / "hookbus.toml"), "events", "--json", env=_env(rt),
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "io.hookbus.endpoint.secret.rotated.v1" in out.stdout
    assert added["secret"] not in out.stdout
    assert rotated["secret"] not in out.stdout


async def test_a_dispatcher_refuses_to_start_with_a_name_in_both(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    await add(rt, "billing", sink.url)
    s = rt.settings
    config = tmp_path / "hookbus.toml"
    config.write_text(
        f'prefix = "{s.prefix}"\n[nats]\nurl = "{s.nats.url}"\n'
        f'[database]\nurl = "{s.database.url}"\nschema = "{s.database.schema}"\n'
        f"[dispatcher]\nhealth_port = {free_port()}\n"
        f'[endpoints.billing]\nurl = "https://billing.example.com/in"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hookbus_dispatcher", "--config", str(config),
        env=clean_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "endpoints.billing: also added at run time" in err.decode()
