"""Retries after a failure (real NATS and Postgres, the executor's consume loop): a failed
run is run again after its backoff as the next attempt, each attempt recorded, and the
last failure is the job's end; the wait holds no place in flight."""

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


def _retried(
    command: list[str], job_id: str, retries: int, base: float = 0.2
) -> ev.Event[ev.JobRequestedV2]:
    event = _request(command, job_id=job_id)
    data = msgspec.structs.replace(
        event.data, retries=retries, backoff=ev.Backoff(base=base, max=base * 1.5)
    )
    return msgspec.structs.replace(event, data=data)


async def _story(rt: Runtime, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT type, data::text AS data FROM events WHERE data->>'job_id' = $1"
            " AND type NOT LIKE '%requested%' ORDER BY seq",
            job_id,
        )
    return [(r["type"].split(".")[3], json.loads(r["data"])) for r in rows]


async def _status(rt: Runtime, job_id: str) -> str | None:
    async with rt.pool.acquire() as conn:
        got = await conn.fetchval("SELECT status FROM jobs WHERE job_id = $1", job_id)
    return None if got is None else str(got)


async def test_a_failed_run_is_run_again_after_its_backoff_until_it_succeeds(
    rt: Runtime, tmp_path: Path
) -> None:
    count = tmp_path / "count"
    # Fails on its first two runs, succeeds on the third.
    script = f'echo x >> {count}; [ "$(wc -l < {count})" -ge 3 ]'
    req = _retried(["/bin/sh", "-c", script], "job_flaky", retries=3)
    async with Consuming(rt, max_in_flight=1):
        await rt.outbox.commit_and_publish([req])

        async def done() -> bool:
            return await _status(rt, "job_flaky") == "succeeded"

        await _until(done, "the job to succeed on its third run")
    story = await _story(rt, "job_flaky")
    assert [(t, d["attempt"]) for t, d in story] == [
        ("started", 1), ("failed", 1), ("started", 2), ("failed", 2), ("started", 3),
        ("succeeded", 3),
    ]  # fmt: skip
    failures = [d for t, d in story if t == "failed"]
    assert all(f["retrying"] and f["retry_at"] and f["exit_code"] == 1 for f in failures)
    assert count.read_text() == "x\nx\nx\n"


async def test_the_last_failed_attempt_is_the_jobs_end_and_waits_hold_no_place(
    rt: Runtime, tmp_path: Path
) -> None:
    req = _retried(["/bin/sh", "-c", "exit 7"], "job_broken", retries=2, base=3.0)
    other = _request(["/bin/true"], job_id="job_other")
    async with Consuming(rt, max_in_flight=1):
        await rt.outbox.commit_and_publish([req])

        async def waiting() -> bool:
            return await _status(rt, "job_broken") == "retrying"

        await _until(waiting, "the first attempt to fail")
        # The replica has one place in flight; the job waiting for its next attempt does
        # not hold it, so another job runs meanwhile.
        await rt.outbox.commit_and_publish([other])

        async def other_done() -> bool:
            return await _status(rt, "job_other") == "succeeded"

        await _until(other_done, "the other job")
        assert await _status(rt, "job_broken") == "retrying"

        async def done() -> bool:
            return await _status(rt, "job_broken") == "failed"

        await _until(done, "the job's last attempt to fail")
    story = await _story(rt, "job_broken")
    failed = [d for t, d in story if t == "failed"]
    assert [(d["attempt"], d["retrying"], d["exit_code"]) for d in failed] == [
        (1, True, 7), (2, True, 7), (3, False, 7),
    ]  # fmt: skip
    assert [d["attempt"] for t, d in story if t == "started"] == [1, 2, 3]
