"""The durable parts' floor: what nats-server and Postgres alone cost for one matching
webhook's commits and messages, with no Python service doing any work of its own.

A matching webhook with a shell action is committed four times (the receiver's
``webhook.received`` before its 202; the router's ``webhook.routed`` with its
``job.requested``; the executor's ``job.started`` before the action runs, and the job's
outcome after it), and five events are published, two of which a durable pull consumer
takes and acks (the router's, the executor's). This replays that sequence from one
client, step by step in the same order and at the same rate as the CPU figure's webhooks,
on the run's own nats-server and Postgres: each commit a one-statement ``INSERT`` into a
table with a primary key and nothing else, each publish a JetStream publish with
``Nats-Msg-Id`` into a file-stored stream, each take a pull that was waiting before the
publish, then its ack.

Its figures, per webhook: the CPU of nats-server and of the client's own Postgres backend
(the floor no Python work can go below while every event is committed and published), and
the time from the first commit to the third (the commit a job's start waits for: the
floor of request → script started).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import asyncpg
import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from . import procs
from .stats import summary_ms

BODY = 2048


async def measure(
    nats_url: str,
    nats_pid: int,
    database_url: str,
    *,
    rate: float,
    seconds: float,
    nats_idle_ms_per_s: float = 0.0,
) -> dict[str, Any]:
    """Replay ``rate * seconds`` webhooks' commits and messages; figures per webhook.

    nats-server serves whatever else is connected to it too: ``nats_idle_ms_per_s``, its
    CPU with those idle (measured before), is taken off."""
    tag = secrets.token_hex(4)
    stream, schema = f"FLOOR_{tag}", f"floor_{tag}"
    nc = await nats.connect(nats_url)
    db = await asyncpg.connect(database_url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=stream, subjects=[f"{schema}.>"], storage=StorageType.FILE)
        )
        takers = []
        for what in ("received", "requested"):
            takers.append(
                await js.pull_subscribe(
                    f"{schema}.{what}",
                    durable=f"{schema}_{what}",
                    stream=stream,
                    config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
                )
            )
        await db.execute(f'CREATE SCHEMA "{schema}"')
        await db.execute(f'CREATE TABLE "{schema}".log (id text PRIMARY KEY, data text)')
        insert = f'INSERT INTO "{schema}".log (id, data) VALUES ($1, $2)'
        backend = await db.fetchval("SELECT pg_backend_pid()")
        body, small = "x" * BODY, "x" * 300
        n = max(1, round(rate * seconds))
        groups = [
            procs.Group("nats-server", nats_pid),
            procs.Group("postgres", backend, descendants=False, reaped=False),
        ]

        # What a webhook's replay did, counted as it runs (the table says it per webhook).
        done = {"commits": 0, "publishes": 0, "takes": 0}

        async def commit(name: str, data: str) -> None:
            await db.execute(insert, name, data)
            done["commits"] += 1

        async def publish(name: str, subject: str, data: str) -> None:
            await js.publish(f"{schema}.{subject}", data.encode(), headers={"Nats-Msg-Id": name})
            done["publishes"] += 1

        async def handed_on(taker: Any, name: str, subject: str, data: str) -> None:
            """Publish with the taker's pull already waiting; take it and ack it."""
            pull = asyncio.ensure_future(taker.fetch(1, timeout=10))
            await asyncio.sleep(0)  # the pull request goes out before the publish
            await publish(name, subject, data)
            for msg in await pull:
                await msg.ack()
                done["takes"] += 1

        to_started: list[float] = []
        before = procs.snapshot(groups)
        start = time.perf_counter()
        for i in range(n):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            t0 = time.perf_counter()
            await commit(f"{i}.received", body)
            await handed_on(takers[0], f"{i}.received", "received", body)
            await commit(f"{i}.routed", small)
            await publish(f"{i}.routed", "routed", small)
            await handed_on(takers[1], f"{i}.requested", "requested", small)
            await commit(f"{i}.started", small)
            to_started.append(time.perf_counter() - t0)
            await publish(f"{i}.started", "started", small)
            await commit(f"{i}.ended", small)
            await publish(f"{i}.ended", "ended", small)
        use = procs.usage(before, procs.snapshot(groups), groups)
        nats_s = use.cpu_s.get("nats-server", 0.0) - nats_idle_ms_per_s / 1000 * use.wall_s
        nats_us = max(0.0, nats_s) / n * 1e6
        pg_us = use.cpu_s.get("postgres", 0.0) / n * 1e6
        return {
            "webhooks": n,
            "rate": rate,
            **{what: count / n for what, count in done.items()},
            "wall_s": round(use.wall_s, 3),
            "cpu_us_per_webhook": round(nats_us + pg_us, 1),
            "cpu_us_per_webhook_by_process": {
                "nats-server": round(nats_us, 1),
                "postgres": round(pg_us, 1),
            },
            "to_job_started": summary_ms(to_started),
        }
    finally:
        try:
            await db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await nc.jetstream().delete_stream(stream)
        finally:
            await db.close()
            await nc.close()


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of ``measure`` at one rate as one figure: counts and CPU per webhook
    weighted by each round's webhooks (the time to a job's start is the first round's)."""
    if not rounds:
        raise ValueError("no rounds to combine")
    n = sum(int(r["webhooks"]) for r in rounds)

    def mean(values: list[float]) -> float:
        return round(
            sum(v * int(r["webhooks"]) for v, r in zip(values, rounds, strict=True)) / n, 1
        )

    processes = list(rounds[0]["cpu_us_per_webhook_by_process"])
    return {
        **rounds[0],
        "webhooks": n,
        "rounds": len(rounds),
        **{w: mean([float(r[w]) for r in rounds]) for w in ("commits", "publishes", "takes")},
        "wall_s": round(sum(float(r["wall_s"]) for r in rounds), 3),
        "cpu_us_per_webhook": mean([float(r["cpu_us_per_webhook"]) for r in rounds]),
        "cpu_us_per_webhook_by_process": {
            p: mean([float(r["cpu_us_per_webhook_by_process"][p]) for r in rounds])
            for p in processes
        },
    }
