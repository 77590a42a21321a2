"""An action's process group is written to its run's lease once it has run for a moment
(``runs.SPAWN_RECORD_DELAY``), those spawned together in one statement; an action over by
then writes nothing, and a run whose group was never written is still found, by its
processes' environment, with its group reported."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hookbus_common.service import Runtime
from hookbus_executor import procs
from hookbus_executor.leases import Lease
from hookbus_executor.runs import SPAWN_RECORD_DELAY, end_processes, local_marks

from .test_executor import Replica, _request, _until

pytestmark = pytest.mark.integration


async def _spawn_row(rt: Runtime, job_id: str) -> tuple[Any, ...]:
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT pgid, pgid_started FROM job_leases WHERE job_id = $1", job_id
        )
    return (None, None) if row is None else tuple(row)


async def test_a_running_action_s_group_is_written_and_a_short_one_s_is_not(
    rt: Runtime, tmp_path: Path
) -> None:
    pids = [tmp_path / "a", tmp_path / "b"]
    scripts = [f"echo $$ > {p}.tmp; mv {p}.tmp {p}; sleep 30" for p in pids]
    slow = [_request(["/bin/sh", "-c", s], job_id=f"job_slow{i}") for i, s in enumerate(scripts)]
    quick = _request(["/bin/true"], job_id="job_quick")
    await rt.outbox.commit([*slow, quick])
    replica = Replica(rt)
    await replica.outcome(quick)
    running = [asyncio.create_task(replica.outcome(r)) for r in slow]
    try:
        await _until(lambda: all(p.exists() for p in pids), "both actions to start")
        leaders = [int(p.read_text()) for p in pids]
        for req, leader in zip(slow, leaders, strict=True):
            row = await _spawn_row(rt, req.data.job_id)
            for _ in range(200):
                if row[0] is not None:
                    break
                await asyncio.sleep(SPAWN_RECORD_DELAY / 4)
                row = await _spawn_row(rt, req.data.job_id)
            assert row == (leader, procs.start_time(leader))
    finally:
        replica.stopping.set()
        for run in replica.runs.running.values():
            run.interrupt("shutdown")
        await asyncio.gather(*running, return_exceptions=True)
        await replica.runs.close()
    await asyncio.sleep(SPAWN_RECORD_DELAY * 2)
    assert await _spawn_row(rt, "job_quick") == (None, None)


async def test_a_run_whose_group_was_never_written_is_found_by_its_marks(
    tmp_path: Path,
) -> None:
    host = procs.this_host()
    marks = local_marks("job_unwritten", 1)
    child = subprocess.Popen(["sleep", "30"], env={"PATH": "/usr/bin:/bin", **marks},
                             start_new_session=True)  # fmt: skip
    try:
        lease = Lease(
            job_id="job_unwritten", request_id="evt_r", attempt=1, owner="exe_gone",
            host=host.id, hostname=host.name, owner_pid=0, owner_started=None, pgid=None,
            pgid_started=None, expires_at=datetime.min, ended=False,
            live=False,
        )  # fmt: skip
        await _until(lambda: bool(procs.groups_with_env(marks)), "the process to show its env")
        ended = await end_processes(lease, host, 1.0)
        assert (ended.running, ended.pgid) == (True, child.pid)
        assert child.wait(timeout=10) is not None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
