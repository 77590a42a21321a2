"""Concurrency keys across executor replicas (real NATS and Postgres, two consume loops on
one durable, as two deployed executors): ``latest`` runs only the newest of the jobs that
waited and records the others skipped; ``queue`` runs one at a time, in order;
``cancel-running`` stops the running job and records it interrupted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.service import Runtime

from .test_executor import _request
from .test_executor_deferrals import Consuming, _until

pytestmark = pytest.mark.integration


def _keyed(
    command: list[str], job_id: str, key: str, strategy: ev.ConcurrencyStrategy
) -> ev.Event[ev.JobRequestedV2]:
    event = _request(command, job_id=job_id)
    data = msgspec.structs.replace(
        event.data, concurrency=ev.Concurrency(key=key, strategy=strategy)
    )
    return msgspec.structs.replace(event, data=data)


async def _statuses(rt: Runtime, job_ids: list[str]) -> dict[str, str]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT job_id, status FROM jobs WHERE job_id = ANY($1::text[])", job_ids
        )
    return {r["job_id"]: r["status"] for r in rows}


async def _events(rt: Runtime, type_: str) -> list[dict[str, Any]]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT data::text AS data FROM events WHERE type = $1 ORDER BY seq", type_
        )
    return [json.loads(r["data"]) for r in rows]


async def _registered(rt: Runtime, key: str) -> int:
    async with rt.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM job_concurrency WHERE key = $1", key))


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_latest_with_two_executors_runs_only_the_newest_waiting_job(
    rt: Runtime, tmp_path: Path
) -> None:
    marker, release = tmp_path / "runs", tmp_path / "release"
    key = "deploy-acme/app-production"
    first = _keyed(
        ["/bin/sh", "-c", f"echo job_1 >> {marker}; while [ ! -e {release} ]; do sleep 0.05; done"],
        "job_1", key, "latest",
    )  # fmt: skip
    later = [
        _keyed(["/bin/sh", "-c", f"echo job_{n} >> {marker}"], f"job_{n}", key, "latest")
        for n in range(2, 7)
    ]
    async with Consuming(rt, max_in_flight=2) as one, Consuming(rt, max_in_flight=2) as two:
        assert one.durable == two.durable
        await rt.outbox.commit_and_publish([first])
        await _until(lambda: _lines(marker) == ["job_1"], "the first deploy to start")
        # Five pushes during the deploy, one after another; each executor sees some.
        for req in later:
            await rt.outbox.commit_and_publish([req])
        await _until(lambda: _registered(rt, key), "the waiting jobs")
        await _until(
            lambda: _count_at_least(rt, key, 6), "all six jobs to be seen by the executors"
        )
        assert _lines(marker) == ["job_1"]  # nothing ran beside the first
        release.touch()
        ids = [f"job_{n}" for n in range(1, 7)]

        async def settled() -> bool:
            got = await _statuses(rt, ids)
            return all(got.get(i) in ("succeeded", "skipped") for i in ids)

        await _until(settled, "every job to end")
    assert _lines(marker) == ["job_1", "job_6"]
    got = await _statuses(rt, ids)
    assert got == {
        "job_1": "succeeded",
        **{f"job_{n}": "skipped" for n in range(2, 6)},
        "job_6": "succeeded",
    }
    skipped = await _events(rt, ev.JobSkipped.TYPE)
    assert sorted(s["job_id"] for s in skipped) == [f"job_{n}" for n in range(2, 6)]
    # Each was superseded by a newer job of its key (which one depends on when each arrived:
    # job_4 arriving supersedes job_2 and job_3 then waiting; job_6 supersedes the rest).
    for s in skipped:
        assert s["superseded_by"] in ids
        assert ids.index(s["superseded_by"]) > ids.index(s["job_id"])
    assert "job_6" in {s["superseded_by"] for s in skipped}
    assert {s["reason"] for s in skipped} == {"superseded"}
    assert {s["concurrency_key"] for s in skipped} == {key}
    assert sorted(s["job_id"] for s in await _events(rt, ev.JobStarted.TYPE)) == ["job_1", "job_6"]


async def _count_at_least(rt: Runtime, key: str, n: int) -> bool:
    return await _registered(rt, key) >= n


async def test_queue_runs_one_job_at_a_time_in_order_across_two_executors(
    rt: Runtime, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    jobs = [
        _keyed(
            ["/bin/sh", "-c", f"echo start_{n} >> {log}; sleep 0.3; echo end_{n} >> {log}"],
            f"job_q{n}",
            "migrate-db",
            "queue",
        )
        for n in range(1, 4)
    ]
    async with Consuming(rt, max_in_flight=3), Consuming(rt, max_in_flight=3):
        for req in jobs:
            await rt.outbox.commit_and_publish([req])

        async def done() -> bool:
            got = await _statuses(rt, [f"job_q{n}" for n in range(1, 4)])
            return list(got.values()).count("succeeded") == 3

        await _until(done, "the three queued jobs")
    assert _lines(log) == ["start_1", "end_1", "start_2", "end_2", "start_3", "end_3"]


async def test_cancel_running_stops_the_running_job_and_runs_the_new_one(
    rt: Runtime, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    old = _keyed(
        ["/bin/sh", "-c", f"echo old >> {marker}; exec sleep 60"], "job_old", "preview-42",
        "cancel-running",
    )  # fmt: skip
    new = _keyed(
        ["/bin/sh", "-c", f"echo new >> {marker}"], "job_new", "preview-42", "cancel-running"
    )
    async with Consuming(rt, max_in_flight=2), Consuming(rt, max_in_flight=2):
        await rt.outbox.commit_and_publish([old])
        await _until(lambda: _lines(marker) == ["old"], "the old job to start")
        await rt.outbox.commit_and_publish([new])

        async def done() -> bool:
            got = await _statuses(rt, ["job_old", "job_new"])
            return got == {"job_old": "interrupted", "job_new": "succeeded"}

        await _until(done, "the old job cancelled and the new one run")
    assert _lines(marker) == ["old", "new"]
    (interrupted,) = await _events(rt, ev.JobInterrupted.TYPE)
    assert interrupted["job_id"] == "job_old"
    assert interrupted["reason"] == "cancelled"
    assert interrupted["retrying"] is False
    assert "job_new" in interrupted["error"]
