"""The machine's own limits, measured from Python the way the services use each part."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import nats

from hookbus_common import events as ev
from hookbus_common.db import open_pool
from hookbus_common.settings import DatabaseSettings
from hookbus_dispatcher import httpclient
from hookbus_dispatcher.ssrf import guarded_client

from . import payloads


def sample_event() -> ev.Event[ev.WebhookReceived]:
    """A webhook event like the receiver records: the 2 KB body embedded as raw JSON."""
    body = payloads.push_body(0)
    data = ev.WebhookReceived(
        source="github",
        kind="github",
        event_type="push",
        delivery_id="bench",
        headers={"x-github-event": "push", "x-hub-signature-256": payloads.sign(body)},
        payload=msgspec.Raw(body),
        body_sha256="0" * 64,
        repository="acme/app",
        branch="main",
        commit="0" * 40,
        sender="octocat",
    )
    return ev.make_event(data, source="/hookbus/receiver/github", id=ev.new_id())


async def nats_publish(url: str, *, duration: float, window: int) -> dict[str, float]:
    """JetStream publishes with acks (file storage, Nats-Msg-Id set): ``window`` in flight.

    window=1 is one awaited publish at a time; larger windows pipeline like
    ``Bus.publish_many`` does (gather of publishes, each awaiting its ack).
    """
    name = "BENCHRAW" + secrets.token_hex(3).upper()
    subject = name.lower() + ".webhook.received.github.push"
    payload = ev.encode(sample_event())
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(name=name, subjects=[name.lower() + ".>"])
        sent = 0
        start = time.perf_counter()
        deadline = start + duration
        while time.perf_counter() < deadline:
            if window == 1:
                await js.publish(subject, payload, headers={"Nats-Msg-Id": f"m{sent}"})
                sent += 1
            else:
                await asyncio.gather(
                    *(
                        js.publish(subject, payload, headers={"Nats-Msg-Id": f"m{sent + k}"})
                        for k in range(window)
                    )
                )
                sent += window
        elapsed = time.perf_counter() - start
        await js.delete_stream(name)
        return {"msgs_per_s": sent / elapsed, "messages": sent, "payload_bytes": len(payload)}
    finally:
        await nc.close()


async def pg_insert(
    database_url: str, *, duration: float, batch: int, concurrency: int
) -> dict[str, float]:
    """Batched ``INSERT … SELECT FROM unnest`` into a copy of the events table (same columns,
    indexes and constraints, no outbox, no triggers), ``concurrency`` transactions in flight."""
    schema = "benchraw_" + secrets.token_hex(3)
    db = DatabaseSettings(url=database_url, schema=schema, pool_max=concurrency)
    event = sample_event()
    data = ev.encode_data(event.data).decode()
    raw = payloads.push_body(0)
    now = datetime.now(UTC)
    async with open_pool(db) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
        counter = 0

        def columns() -> list[list[Any]]:
            nonlocal counter
            ids = [f"evt_{counter + k:032x}" for k in range(batch)]
            counter += batch
            return [
                ids, ["io.hookbus.webhook.received.v1"] * batch,
                ["/hookbus/receiver/github"] * batch, ["acme/app"] * batch,
                ["hookbus.webhook.received.github.push"] * batch, ["default"] * batch, ids,
                [None] * batch, [now] * batch, [f"github:{i}" for i in ids], [data] * batch,
                [raw] * batch,
            ]  # fmt: skip

        sql = """
            INSERT INTO raw_events (id, type, source, subject, bus_subject, tenant,
                correlation_id, causation_id, time, dedupe_key, data, raw_body)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::text[],
                $11::json[], $12::bytea[])
            ON CONFLICT DO NOTHING
        """
        rows = 0
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal rows
            async with pool.acquire() as conn:
                while time.perf_counter() < deadline:
                    await conn.execute(sql, *columns())
                    rows += batch

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return {"rows_per_s": rows / elapsed, "rows": rows, "batch": batch, "in_flight": concurrency}


async def pg_version(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def nats_version(url: str) -> str:
    nc = await nats.connect(url)
    try:
        return str(nc.connected_server_version)
    finally:
        await nc.close()


async def post_as_attempt(
    client: httpclient.Client, url: str, headers: httpclient.Headers[str], body: bytes
) -> None:
    """As an attempt sends: a request built, sent, and its answer read and let go of."""
    r = await client.send(httpclient.request("POST", url, headers, body))
    try:
        while await r.read(4096):
            pass
    finally:
        r.close()
    assert r.status < 400, r.status


async def http_post(sink_port: int, *, duration: float, concurrency: int) -> dict[str, float]:
    """The dispatcher's own HTTP client POSTing 2 KB bodies to the sink, ``concurrency`` at
    once: built as the dispatcher builds it (SSRF guard in place, loopback allowed) and sent
    as an attempt sends, with none of the dispatcher's other work.
    The caller measures several concurrencies and keeps the best."""
    body = payloads.push_body(0)
    url = f"http://127.0.0.1:{sink_port}/ceiling"
    done = 0
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    async with guarded_client(allow_networks=loopback, timeout=10.0) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                headers = httpclient.Headers({"x-hookbus-delivery": "c"})
                await post_as_attempt(client, url, headers, body)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"req_per_s": done / elapsed, "requests": done, "in_flight": concurrency}


async def spawn_floor(script: str, stamps: str, *, runs: int) -> dict[str, float]:
    """How soon the action's script stamps its start when Python spawns it directly, one
    at a time: the floor under "request → action started" (fork, exec, bash start-up)."""
    import os
    from pathlib import Path

    from .stats import perf_to_wall, summary_ms

    path = Path(stamps)
    path.write_text("")
    t0s: dict[str, float] = {}
    for i in range(runs):
        key = f"floor-{i}"
        t0s[key] = time.perf_counter() + perf_to_wall()
        proc = await asyncio.create_subprocess_exec(
            script,
            env={
                "PATH": os.environ.get("PATH", ""),
                "HOOKBUS_DELIVERY_ID": key,
                "BENCH_STAMPS": stamps,
            },
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        await proc.wait()
    gaps = []
    for line in path.read_text().splitlines():
        key, _, when = line.partition(" ")
        gaps.append(float(when.replace(",", ".")) - t0s[key])
    return summary_ms(gaps)
