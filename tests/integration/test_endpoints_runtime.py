"""Endpoints managed at run time, end to end: added, rotated, paused, resumed and deleted
through the CLI's store (and the `hookbus endpoints` process), messages committed to the
log as the API commits them, and the dispatcher as its main() wires it (delivery handler
with fan-out, the run-time endpoint store, the scheduler) consuming real NATS, writing
real Postgres and sending to a sink on loopback, signed with the run-time secret, which
is stored encrypted (never a whsec_ in the table) and still signs after a key rotation."""

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
from hookbus_common import readmodels, sealing
from hookbus_common.errors import Deferred
from hookbus_common.sealing import Keyring
from hookbus_common.service import Runtime
from hookbus_dispatcher import endpointstore, retryafter
from hookbus_dispatcher.config import Endpoint
from hookbus_dispatcher.delivery import make_handler
from hookbus_dispatcher.endpointstore import EndpointConflict, EndpointNotFound
from hookbus_dispatcher.fanout import delivery_id, with_fanout
from hookbus_dispatcher.schedule import Scheduler
from hookbus_dispatcher.ssrf import guarded_client

from .dispatching import REQUESTS, dispatcher_consumer
from .test_cli import clean_env, hookbus
from .test_dispatcher import LOOPBACK, Received, Sink, _status, _until

pytestmark = pytest.mark.integration

KEY = sealing.new_key()
KEYRING = Keyring([sealing.parse_key(KEY, "test")])
"""The key run-time endpoints' secrets are sealed under in these tests (the CLI run as a
process gets it as HOOKBUS_SECRETS_KEY)."""


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


@contextlib.asynccontextmanager
async def dispatcher(
    rt: Runtime, configured: Mapping[str, Endpoint] | None = None, keyring: Keyring = KEYRING
) -> AsyncIterator[None]:
    """The dispatcher as its main() builds it (loopback allowed, no endpoint cache)."""
    stop = asyncio.Event()
    async with guarded_client(allow_networks=LOOPBACK, timeout=10.0) as client:
        scheduler = Scheduler(rt.pool, rt.bus, clock=retryafter.utcnow, idle_interval=0.2)
        deliver = make_handler(
            client, rt.pool, 3, endpoints=configured, scheduler=scheduler,
            retry_schedule=[0.2, 0.2],
            runtime=endpointstore.Store(rt.pool, ttl=0, keyring=keyring),
        )  # fmt: skip
        consumer = dispatcher_consumer(
            rt, with_fanout(deliver, rt.pool, configured), max_attempts=3,
            subjects=[REQUESTS, ("message", "submitted")],
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
        _, secret = await endpointstore.add(
            conn, rt.settings.prefix, name=name, url=url, keyring=KEYRING, **kw
        )
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
        _, new, _ = await endpointstore.rotate(
            conn, rt.settings.prefix, "billing", window=3600, keyring=KEYRING
        )
    async with dispatcher(rt):
        await send(rt, "invoice.paid", {"n": 1})
        (got,) = await received(sink, 1)
        assert len(got.headers["webhook-signature"].split()) == 2
        assert _verify(new, got) == {"n": 1}
        assert _verify(old, got) == {"n": 1}
        # Rotated again with no window: only the newest signs.
        async with rt.pool.acquire() as conn:
            _, newest, _ = await endpointstore.rotate(
                conn, rt.settings.prefix, "billing", window=0, keyring=KEYRING
            )
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
                conn, rt.settings.prefix, name="billing", url=sink.url, configured=["billing"],
                keyring=KEYRING,
            )  # fmt: skip
        await add(rt, "crm", sink.url)
        with pytest.raises(EndpointConflict, match="exists"):
            await add(rt, "crm", sink.url)
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
        HOOKBUS_SECRETS_KEY=KEY,
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


# ------------------------------------------------------- secrets encrypted at rest


async def _stored(rt: Runtime) -> list[dict[str, Any]]:
    rows = await rt.pool.fetch(
        "SELECT secret_id, endpoint_id, secret, key_id FROM endpoint_secrets ORDER BY created_at"
    )
    return [dict(r) for r in rows]


async def test_secrets_are_stored_sealed_and_sign_through_the_dispatcher(
    rt: Runtime, sink: Sink
) -> None:
    first = await add(rt, "billing", sink.url)
    async with rt.pool.acquire() as conn:
        _, second, _ = await endpointstore.rotate(
            conn, rt.settings.prefix, "billing", window=3600, keyring=KEYRING
        )
    stored = await _stored(rt)
    assert len(stored) == 2
    for row in stored:
        assert row["key_id"] == KEYRING.current
        assert "whsec_" not in row["secret"]
        assert first[6:] not in row["secret"]
        assert second[6:] not in row["secret"]
    async with dispatcher(rt):
        await send(rt, "invoice.paid", {"n": 1})
        (got,) = await received(sink, 1)
    assert _verify(first, got) == {"n": 1}
    assert _verify(second, got) == {"n": 1}


async def test_plaintext_secrets_keep_signing_until_resealed(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    secret = await add(rt, "billing", sink.url)
    # As a row written before secrets were sealed holds it.
    await rt.pool.execute("UPDATE endpoint_secrets SET secret = $1, key_id = NULL", secret)
    async with dispatcher(rt):
        await send(rt, "invoice.paid", {"n": 1})
        (got,) = await received(sink, 1)
    assert _verify(secret, got) == {"n": 1}

    (tmp_path / "hookbus.toml").write_text("")

    def reseal(env: dict[str, str]) -> Any:
        return hookbus("-c", str(tmp_path / "hookbus.toml"), "endpoints", "reseal", "--json",
                       env=env, cwd=tmp_path)  # fmt: skip

    out = reseal(_env(rt))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"key_id": KEYRING.current, "plaintext": 1, "older_keys": 0}
    (row,) = await _stored(rt)
    assert row["key_id"] == KEYRING.current
    assert "whsec_" not in row["secret"]
    again = reseal(_env(rt))
    assert json.loads(again.stdout)["plaintext"] == 0
    # Sealed, it signs as before.
    async with dispatcher(rt):
        await send(rt, "invoice.paid", {"n": 2})
        got = (await received(sink, 2))[1]
    assert _verify(secret, got) == {"n": 2}

    # Without the key the CLI refuses, naming the setting, and changes nothing.
    bare = {k: v for k, v in _env(rt).items() if k != "HOOKBUS_SECRETS_KEY"}
    refused = reseal(bare)
    assert refused.returncode == 1
    assert "HOOKBUS_SECRETS_KEY" in refused.stderr
    added = hookbus("-c", str(tmp_path / "hookbus.toml"), "endpoints", "add", "crm",
                    "https://crm.example.com/in", env=bare, cwd=tmp_path)  # fmt: skip
    assert added.returncode == 1
    assert "HOOKBUS_SECRETS_KEY" in added.stderr
    assert await endpointstore.get(rt.pool, "crm") is None


async def test_a_key_rotation_reseals_and_the_old_key_alone_no_longer_opens(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    secret = await add(rt, "billing", sink.url)
    new_key = sealing.new_key()
    (tmp_path / "hookbus.toml").write_text("")
    # The new key first (it seals), the old one after it (it still opens).
    env = {**_env(rt), "HOOKBUS_SECRETS_KEY": f"{new_key}, {KEY}"}
    out = hookbus("-c", str(tmp_path / "hookbus.toml"), "endpoints", "reseal", "--json",
                  env=env, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    new_ring = Keyring([sealing.parse_key(new_key, "test")])
    assert json.loads(out.stdout) == {"key_id": new_ring.current, "plaintext": 0, "older_keys": 1}
    (row,) = await _stored(rt)
    assert row["key_id"] == new_ring.current
    # The new key alone signs; the old key alone, or none, cannot open it: the delivery
    # waits (deferred), and the error names the setting and the key, never the secret.
    async with dispatcher(rt, keyring=new_ring):
        await send(rt, "invoice.paid", {"n": 1})
        (got,) = await received(sink, 1)
    assert _verify(secret, got) == {"n": 1}
    # Rotating the endpoint's secret with the old key alone is refused, and changes nothing.
    old_only = hookbus("-c", str(tmp_path / "hookbus.toml"), "endpoints", "rotate-secret",
                       "billing", env=_env(rt), cwd=tmp_path)  # fmt: skip
    assert old_only.returncode == 1
    assert f"sealed under key {new_ring.current}" in old_only.stderr
    assert "Traceback" not in old_only.stderr
    assert len(await _stored(rt)) == 1
    for ring in (KEYRING, None):
        store = endpointstore.Store(rt.pool, ttl=0, keyring=ring)
        with pytest.raises(Deferred) as caught:
            await store.get("billing")
        assert "HOOKBUS_SECRETS_KEY" in caught.value.reason
        assert new_ring.current in caught.value.reason
        assert secret[6:] not in caught.value.reason


async def test_a_sealed_secret_moved_to_another_row_does_not_open(rt: Runtime, sink: Sink) -> None:
    await add(rt, "a", sink.url)
    await add(rt, "b", sink.url)
    first, second = await _stored(rt)
    # b's row given a's sealed secret (as someone with write access to the table might).
    await rt.pool.execute(
        "UPDATE endpoint_secrets SET secret = $1 WHERE secret_id = $2",
        first["secret"],
        second["secret_id"],
    )
    store = endpointstore.Store(rt.pool, ttl=0, keyring=KEYRING)
    assert await store.get("a") is not None
    with pytest.raises(Deferred, match="altered or moved"):
        await store.get("b")


async def test_a_dispatcher_refuses_to_start_with_a_malformed_key(
    rt: Runtime, tmp_path: Path
) -> None:
    s = rt.settings
    config = tmp_path / "hookbus.toml"
    config.write_text(
        f'prefix = "{s.prefix}"\n[nats]\nurl = "{s.nats.url}"\n'
        f'[database]\nurl = "{s.database.url}"\nschema = "{s.database.schema}"\n'
        f"[dispatcher]\nhealth_port = {free_port()}\n"
    )
    bad = "not-a-key-but-a-secret-all-the-same"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hookbus_dispatcher", "--config", str(config),
        env=clean_env(HOOKBUS_SECRETS_KEY=bad), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err.decode()[-2000:]
    assert "HOOKBUS_SECRETS_KEY: key 1: not a key" in err.decode()
    assert bad not in err.decode()
