"""The executor's handler against a real Postgres: records, timeouts, no second run, and
job leases: one run at a time, a run lost with its executor recorded as interrupted (or run
again when its rule says so), and a stopping executor ending its jobs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.consumer import (
    Ack,
    Consumer,
    Defer,
    Gated,
    Incoming,
    Outcome,
    Term,
    Yielded,
)
from hookbus_common.service import Runtime
from hookbus_common.settings import extend
from hookbus_executor import leases, outcomes, procs
from hookbus_executor.config import ExecutorConfig, ExecutorSettings
from hookbus_executor.jobs import TERMINAL_STEP, make_handler
from hookbus_executor.leases import Owner
from hookbus_executor.runs import Runs

pytestmark = pytest.mark.integration


class _Msg:
    """Stands in for the NATS message: counts the progress reports a handler makes."""

    def __init__(self) -> None:
        self.progress = 0

    async def in_progress(self) -> None:
        self.progress += 1


def _request(
    command: list[str], job_id: str = "job_t", **shell: Any
) -> ev.Event[ev.JobRequestedV2]:
    on_interrupt = shell.pop("on_interrupt", "record")
    return ev.make_event(
        ev.JobRequestedV2(
            job_id=job_id, rule="r", webhook_id="evt_w",
            spec=ev.ShellSpec(command=command, **shell),
            context={"HOOKBUS_REPOSITORY": "acme/app"},
            payload=msgspec.Raw(b'{"hello": "world"}'),
            on_interrupt=on_interrupt,
        ),
        source="/test",
    )  # fmt: skip


class Replica:
    """One executor process's state (its own owner id, runs and handler) on ``rt``."""

    def __init__(self, rt: Runtime, owner: Owner | None = None, **executor: Any) -> None:
        executor.setdefault("lease_seconds", 1.5)
        self.rt = rt
        self.settings = extend(rt.settings, ExecutorConfig, executor=ExecutorSettings(**executor))
        self.stopping = asyncio.Event()
        self.runs = Runs(self.settings.executor, rt.pool, rt.outbox, self.stopping, owner)
        self.handler = make_handler(self.settings, self.runs)

    async def outcome(
        self, event: ev.Event[Any], deliveries: int = 1, msg: _Msg | None = None
    ) -> tuple[Outcome, list[ev.Event[Any]]]:
        """Handle one message the way the executor's consume loop does (with its terminal
        step); what it settles to, and the events the handler yielded."""
        out: list[ev.Event[Any]] = []
        handler = self.handler

        async def recording(incoming: Incoming) -> AsyncIterator[Yielded]:
            async for item in handler(incoming):
                yield item
                # Once committed: a step whose gate held it back records nothing.
                out.extend([item] if isinstance(item, ev.Event) else item)

        consumer = Consumer(
            service="executor", bus=self.rt.bus, outbox=self.rt.outbox, durable="unused",
            filter_subjects=["unused"], handler=recording, max_in_flight=1, max_deliver=5,
            terminal_step=TERMINAL_STEP,
        )  # fmt: skip
        incoming = Incoming(
            event=event,
            subject="s",
            deliveries=deliveries,
            _msg=msg or _Msg(),  # type: ignore[arg-type]
        )
        return await consumer.process(incoming), out


async def _outcome(
    rt: Runtime, event: ev.Event[Any], deliveries: int = 1
) -> tuple[Outcome, list[ev.Event[Any]]]:
    return await Replica(rt).outcome(event, deliveries)


async def _handle(rt: Runtime, event: ev.Event[Any], deliveries: int = 1) -> list[ev.Event[Any]]:
    outcome, out = await _outcome(rt, event, deliveries)
    assert outcome == Ack()
    return out


async def _until(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    return procs.alive(pid, None)


async def _chain_types(rt: Runtime, event: ev.Event[Any]) -> list[str]:
    async with rt.pool.acquire() as conn:
        rows = await eventlog.chain(conn, event.id)
    return [r.event.type.removeprefix("io.hookbus.").rsplit(".", 1)[0] for r in rows]


async def _job(rt: Runtime, job_id: str = "job_t") -> tuple[Any, ...]:
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, attempts FROM jobs WHERE job_id = $1", job_id)
    return tuple(row)


async def _lease(rt: Runtime, job_id: str = "job_t") -> dict[str, Any]:
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM job_leases WHERE job_id = $1", job_id)
    return dict(row)


def _interrupted_total(reason: str, retrying: bool) -> float:
    labels = {"kind": "shell", "reason": reason, "retrying": "true" if retrying else "false"}
    return REGISTRY.get_sample_value("hookbus_executor_jobs_interrupted_total", labels) or 0.0


async def test_job_runs_once_and_a_redelivery_does_not_run_it_again(
    rt: Runtime, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    req = _request(["/bin/sh", "-c", f'echo run >> {marker}; echo "$HOOKBUS_REPOSITORY"; cat'])
    await rt.outbox.commit([req])
    first = await _handle(rt, req)
    assert [type(e.data) for e in first] == [ev.JobStarted, ev.JobSucceeded]
    assert first[1].data.output == 'acme/app\n{"hello": "world"}'
    again = await _handle(rt, req, deliveries=2)
    assert again == []
    assert marker.read_text() == "run\n"
    async with rt.pool.acquire() as conn:
        status = await conn.fetchrow("SELECT status, exit_code FROM jobs WHERE job_id = 'job_t'")
        chain = await eventlog.chain(conn, req.id)
    assert tuple(status) == ("succeeded", 0)
    assert len(chain) == 3


async def test_a_fresh_job_takes_its_lease_and_records_its_start_in_one_step(
    rt: Runtime,
) -> None:
    replica = Replica(rt)
    steps: list[Yielded] = []
    handler = replica.handler

    async def watching(incoming: Incoming) -> AsyncIterator[Yielded]:
        async for item in handler(incoming):
            steps.append(item)
            yield item

    replica.handler = watching
    outcome, out = await replica.outcome(_request(["true"], job_id="job_fresh"))
    assert outcome == Ack()
    # job.started gated by taking the lease: one statement, before the action ran.
    assert isinstance(steps[0], Gated)
    assert steps[0].inserted
    assert [type(e.data) for e in out] == [ev.JobStarted, ev.JobSucceeded]
    assert (await _lease(rt, "job_fresh"))["attempt"] == 1


async def test_failure_and_timeout_are_recorded_as_failed(rt: Runtime) -> None:
    failing = _request(["/bin/sh", "-c", "echo boom >&2; exit 3"])
    slow = _request(["/bin/sh", "-c", "sleep 30"], timeout=0.3)
    missing = _request(["/no/such/program"])
    for req in (failing, slow, missing):
        await rt.outbox.commit([req])
    (_, f1), (_, f2), (_, f3) = [await _handle(rt, r) for r in (failing, slow, missing)]
    assert isinstance(f1.data, ev.JobFailed)
    assert (f1.data.exit_code, f1.data.output) == (3, "boom\n")
    assert isinstance(f2.data, ev.JobFailed)
    assert f2.data.timed_out
    assert f2.data.duration_ms < 10_000
    assert isinstance(f3.data, ev.JobFailed)
    assert f3.data.error is not None
    assert "/no/such/program" in f3.data.error


async def test_only_allow_listed_environment_reaches_the_action(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOKBUS_SECRET_THING", "s3cr3t")
    req = _request(["/usr/bin/env"])
    await rt.outbox.commit([req])
    _, done = await _handle(rt, req)
    assert "HOOKBUS_REPOSITORY=acme/app" in done.data.output
    assert "HOOKBUS_JOB_ID=job_t" in done.data.output
    assert "s3cr3t" not in done.data.output
    assert "PATH=" in done.data.output


async def test_a_v1_request_from_an_older_router_still_runs(rt: Runtime) -> None:
    old = ev.make_event(
        ev.JobRequested(
            job_id="job_v1", kind="shell", rule="r", webhook_id="evt_w",
            shell=ev.ShellSpec(command=["/bin/sh", "-c", "echo from v1; cat"]),
            payload=msgspec.Raw(b'{"v": 1}'),
        ),
        source="/test",
    )  # fmt: skip
    await rt.outbox.commit([old])
    started, done = await _handle(rt, old)
    assert isinstance(started.data, ev.JobStarted)
    assert isinstance(done.data, ev.JobSucceeded)
    assert (done.data.job_id, done.data.kind) == ("job_v1", "shell")
    assert done.data.output == 'from v1\n{"v": 1}'
    # The ids derive from the v1 event, as a v1 executor's would have.
    assert done.id == ev.derived_id(old.id, TERMINAL_STEP)
    assert done.causationid == old.id
    again = await _handle(rt, old, deliveries=2)
    assert again == []


async def test_a_v1_request_without_a_spec_is_refused_for_good(rt: Runtime) -> None:
    empty = ev.make_event(
        ev.JobRequested(job_id="job_e", kind="ssh", rule="r", webhook_id="evt_w"), source="/test"
    )
    outcome, out = await _outcome(rt, empty)
    assert isinstance(outcome, Term)
    assert "job_e" in outcome.reason
    assert out == []


# ------------------------------------------------------------------------ job leases


def _waits_for(marker: Path, release: Path) -> list[str]:
    """An action that notes each run, then waits until the test releases it."""
    script = f'echo "run $HOOKBUS_JOB_ATTEMPT" >> {marker}; while [ ! -e {release} ]; do sleep 0.05; done'
    return ["/bin/sh", "-c", script]


@pytest.mark.parametrize("same_process", [False, True], ids=["two-executors", "redelivered-here"])
async def test_a_job_whose_lease_is_held_by_a_live_run_is_not_run_again_meanwhile(
    rt: Runtime, tmp_path: Path, same_process: bool
) -> None:
    marker, release = tmp_path / "runs", tmp_path / "release"
    req = _request(_waits_for(marker, release))
    await rt.outbox.commit([req])
    first = Replica(rt)
    second = first if same_process else Replica(rt)
    running = asyncio.create_task(first.outcome(req))
    await _until(marker.exists, "the first run to start")

    # The message comes again (its ack wait passed) while the first run goes on: it is
    # deferred (given back for a while, no failure), not run beside the first, and does
    # not wait in hand for it.
    for deliveries in (2, 3, 4):
        dup_outcome, dup_out = await second.outcome(req, deliveries=deliveries)
        assert isinstance(dup_outcome, Defer), dup_outcome
        assert 0 < dup_outcome.delay <= 10.0
        assert dup_out == []
    assert not running.done()
    assert marker.read_text() == "run 1\n"
    assert (await _lease(rt))["owner"] == first.runs.owner.id

    release.touch()
    outcome, out = await running
    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobStarted, ev.JobSucceeded]
    # Back once the run is over, the duplicate finds the job finished.
    assert await second.outcome(req, deliveries=5) == (Ack(), [])
    assert marker.read_text() == "run 1\n"
    assert await _chain_types(rt, req) == ["job.requested", "job.started", "job.succeeded"]
    assert await _job(rt) == ("succeeded", 1)


async def _left_by_a_dead_executor(
    rt: Runtime,
    req: ev.Event[ev.JobRequestedV2],
    *,
    host: str,
    expires_in: float,
    pgid: int | None = None,
    pgid_started: int | None = None,
    owner_pid: int | None = None,
) -> int:
    """The log and the lease as an executor leaves them when it dies mid-run: the request,
    its job.started (attempt 1), and a lease held by a process that is gone (or by
    ``owner_pid``, alive). Returns the holder's pid."""
    if owner_pid is None:
        gone = subprocess.Popen(["sleep", "30"])
        gone_started = procs.start_time(gone.pid)
        gone.kill()
        gone.wait()
        owner_pid = gone.pid
    else:
        gone_started = procs.start_time(owner_pid)
    await rt.outbox.commit([req, outcomes.started(req, 1)])
    async with rt.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO job_leases (job_id, request_id, attempt, owner, host, hostname,"
            " owner_pid, owner_started, pgid, pgid_started, expires_at)"
            " VALUES ($1, $2, 1, 'exe_dead', $3, 'dead-host', $4, $5, $6, $7,"
            " now() + make_interval(secs => $8))",
            req.data.job_id, req.id, host, owner_pid, gone_started, pgid, pgid_started,
            expires_in,
        )  # fmt: skip
    return owner_pid


@pytest.mark.parametrize(
    ("where", "expires_in"),
    [("another-host", -1.0), ("this-host", 60.0)],
    ids=["expired-lease-of-another-host", "live-lease-of-a-dead-executor-here"],
)
async def test_a_run_lost_with_its_executor_is_recorded_interrupted_and_not_run_again(
    rt: Runtime, tmp_path: Path, where: str, expires_in: float
) -> None:
    marker = tmp_path / "runs"
    req = _request(["/bin/sh", "-c", f"echo run >> {marker}"])
    replica = Replica(rt)
    # Another host's lease tells only by expiring; on this host, a dead owner is seen at once.
    host = "elsewhere/pid:[1]" if where == "another-host" else replica.runs.owner.host.id
    await _left_by_a_dead_executor(rt, req, host=host, expires_in=expires_in)
    before = _interrupted_total("executor_lost", retrying=False)

    outcome, out = await replica.outcome(req, deliveries=2)

    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobInterrupted]
    done = out[0]
    assert done.id == ev.derived_id(req.id, TERMINAL_STEP)  # the job's one terminal event
    assert (done.data.attempt, done.data.reason, done.data.retrying) == (1, "executor_lost", False)
    assert done.data.host == "dead-host"
    assert done.bus_subject(rt.settings.prefix) == f"{rt.settings.prefix}.job.interrupted.shell"
    assert not marker.exists()
    assert await _job(rt) == ("interrupted", 1)
    assert _interrupted_total("executor_lost", retrying=False) == before + 1
    lease = await _lease(rt)
    assert (lease["outcome"], lease["ended_at"] is not None) == ("interrupted", True)

    # Its message comes once more: nothing more is done or recorded.
    assert await Replica(rt).outcome(req, deliveries=3) == (Ack(), [])
    assert not marker.exists()
    assert await _chain_types(rt, req) == ["job.requested", "job.started", "job.interrupted"]


async def test_a_live_executor_of_this_host_keeps_its_run_even_past_the_lease(
    rt: Runtime, tmp_path: Path
) -> None:
    # It could not renew (Postgres was away), but its process is alive: it runs the job.
    marker = tmp_path / "runs"
    req = _request(["/bin/sh", "-c", f"echo run >> {marker}"])
    replica = Replica(rt)
    await _left_by_a_dead_executor(
        rt, req, host=replica.runs.owner.host.id, expires_in=-1.0, owner_pid=os.getpid()
    )
    # The message is deferred (it comes back later), not run beside the live run.
    outcome, out = await replica.outcome(req, deliveries=2)
    assert isinstance(outcome, Defer)
    assert out == []

    # That run ends and is recorded by its executor.
    await rt.outbox.commit([outcomes.finished(req, 1, None, "ended elsewhere")])
    async with rt.pool.acquire() as conn:
        await conn.execute("UPDATE job_leases SET ended_at = now(), outcome = 'failed'")
    assert await replica.outcome(req, deliveries=3) == (Ack(), [])
    assert not marker.exists()
    assert await _chain_types(rt, req) == ["job.requested", "job.started", "job.failed"]


async def test_a_lost_run_of_a_rule_that_retries_runs_again_as_attempt_2(
    rt: Runtime, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    req = _request(
        ["/bin/sh", "-c", f'echo "run $HOOKBUS_JOB_ATTEMPT" >> {marker}'], on_interrupt="retry"
    )
    await _left_by_a_dead_executor(rt, req, host="elsewhere/pid:[1]", expires_in=-1.0)

    outcome, out = await Replica(rt).outcome(req, deliveries=2)

    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobInterrupted, ev.JobStarted, ev.JobSucceeded]
    lost, started, done = out
    assert (lost.data.attempt, lost.data.retrying) == (1, True)
    assert lost.id == ev.derived_id(req.id, "interrupted/1")  # not the terminal one
    assert started.data.attempt == 2
    assert started.id == ev.derived_id(req.id, "started/2")
    assert (done.data.attempt, done.id) == (2, ev.derived_id(req.id, TERMINAL_STEP))
    assert marker.read_text() == "run 2\n"
    assert await _job(rt) == ("succeeded", 2)
    assert await _chain_types(rt, req) == [
        "job.requested", "job.started", "job.interrupted", "job.started", "job.succeeded",
    ]  # fmt: skip


async def test_a_retried_job_is_recorded_interrupted_for_good_at_its_last_attempt(
    rt: Runtime, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    req = _request(["/bin/sh", "-c", f"echo run >> {marker}"], on_interrupt="retry")
    await _left_by_a_dead_executor(rt, req, host="elsewhere/pid:[1]", expires_in=-1.0)

    outcome, out = await Replica(rt, max_attempts=1).outcome(req, deliveries=2)

    assert outcome == Ack()
    assert [(type(e.data), e.data.retrying) for e in out] == [(ev.JobInterrupted, False)]
    assert not marker.exists()


async def _pids(leader_file: Path, child_file: Path) -> tuple[int, int]:
    await _until(lambda: leader_file.exists() and child_file.exists(), "the action to start")
    await _until(
        lambda: leader_file.read_text().endswith("\n") and child_file.read_text().endswith("\n"),
        "its pids",
    )
    return int(leader_file.read_text()), int(child_file.read_text())


def _long_action(tmp_path: Path) -> tuple[list[str], Path, Path]:
    """An action with a child that ignores SIGTERM: only the whole group's end stops it."""
    leader, child = tmp_path / "leader.pid", tmp_path / "child.pid"
    script = (
        f"sh -c 'trap \"\" TERM; echo $$ > {child}; exec sleep 60' &"
        f" echo $$ > {leader}; echo working; wait"
    )
    return ["/bin/sh", "-c", script], leader, child


@pytest.mark.parametrize("on_interrupt", ["record", "retry"])
async def test_a_stopping_executor_ends_a_long_job_after_its_grace_and_records_it(
    rt: Runtime, tmp_path: Path, on_interrupt: str
) -> None:
    command, leader_file, child_file = _long_action(tmp_path)
    req = _request(command, on_interrupt=on_interrupt)
    await rt.outbox.commit([req])
    replica = Replica(rt, shutdown_grace_seconds=0.5, kill_grace_seconds=0.5)
    await replica.runs.start()
    try:
        running = asyncio.create_task(replica.outcome(req))
        leader, child = await _pids(leader_file, child_file)

        replica.stopping.set()  # SIGTERM or SIGINT
        outcome, out = await running
    finally:
        await replica.runs.close()

    await _until(lambda: not _alive(leader) and not _alive(child), "the action's group to end")
    assert [type(e.data) for e in out] == [ev.JobStarted, ev.JobInterrupted]
    done = out[1].data
    assert (done.reason, done.attempt, done.pgid) == ("shutdown", 1, leader)
    assert done.output == "working\n"  # ended by us, so what it wrote is known
    assert done.signal == signal.SIGTERM
    assert (await _lease(rt))["outcome"] == "interrupted"
    if on_interrupt == "record":
        assert outcome == Ack()
        assert not done.retrying
        assert out[1].id == ev.derived_id(req.id, TERMINAL_STEP)
        assert await _job(rt) == ("interrupted", 1)
        return
    # A rule that retries: the message goes back (deferred: the lease counts the runs),
    # and the next executor runs attempt 2.
    assert isinstance(outcome, Defer)
    assert done.retrying
    leader_file.unlink()
    child_file.unlink()
    again = asyncio.create_task(Replica(rt).outcome(req, deliveries=2))
    leader2, _ = await _pids(leader_file, child_file)
    os.killpg(leader2, signal.SIGKILL)
    outcome2, out2 = await again
    assert outcome2 == Ack()
    assert [(type(e.data), e.data.attempt) for e in out2] == [
        (ev.JobStarted, 2), (ev.JobFailed, 2),
    ]  # fmt: skip


async def test_a_stopping_executor_lets_a_job_that_ends_within_the_grace_finish(
    rt: Runtime, tmp_path: Path
) -> None:
    marker, release = tmp_path / "runs", tmp_path / "release"
    req = _request(_waits_for(marker, release))
    await rt.outbox.commit([req])
    replica = Replica(rt, shutdown_grace_seconds=30.0)
    await replica.runs.start()
    try:
        running = asyncio.create_task(replica.outcome(req))
        await _until(marker.exists, "the run to start")
        replica.stopping.set()
        # A stopping executor takes no new job: this one's message goes back.
        other = _request(["/bin/sh", "-c", f"echo other >> {marker}"], job_id="job_other")
        await rt.outbox.commit([other])
        refused, nothing = await replica.outcome(other)
        assert isinstance(refused, Defer)
        assert nothing == []
        release.touch()
        outcome, out = await running
    finally:
        await replica.runs.close()
    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobStarted, ev.JobSucceeded]
    assert marker.read_text() == "run 1\n"


def _orphan(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """An action left running by a dead executor: its own session and process group."""
    return subprocess.Popen(
        ["/bin/sh", "-c", "sleep 60 & wait"],
        start_new_session=True,
        env={"PATH": os.environ["PATH"], **(env or {})},
    )


async def test_an_executor_starting_ends_what_a_dead_executor_left_on_its_host(
    rt: Runtime,
) -> None:
    replica = Replica(rt, kill_grace_seconds=0.5)
    here = replica.runs.owner.host.id
    # Recorded with its process group.
    recorded = _orphan()
    recorded_req = _request(["x"], job_id="job_recorded")
    await _left_by_a_dead_executor(
        rt, recorded_req, host=here, expires_in=60.0,
        pgid=recorded.pid, pgid_started=procs.start_time(recorded.pid),
    )  # fmt: skip
    # The executor died before writing its process group down: found by its environment.
    unrecorded = _orphan(
        {"HOOKBUS_JOB_ID": "job_unrecorded", "HOOKBUS_JOB_ATTEMPT": "1", "HOOKBUS_JOB_LOCAL": "1"}
    )
    unrecorded_req = _request(["x"], job_id="job_unrecorded")
    await _left_by_a_dead_executor(rt, unrecorded_req, host=here, expires_in=60.0)
    # A process of another run of the same job on this host that the executor did not
    # spawn (an SSH command sent to this host, a container): its marks, not the local one.
    remote = _orphan({"HOOKBUS_JOB_ID": "job_unrecorded", "HOOKBUS_JOB_ATTEMPT": "1"})
    # A recorded group id that now names some other process (its start time differs).
    bystander = _orphan()
    reused_req = _request(["x"], job_id="job_reused")
    await _left_by_a_dead_executor(
        rt, reused_req, host=here, expires_in=60.0,
        pgid=bystander.pid, pgid_started=(procs.start_time(bystander.pid) or 0) - 1,
    )  # fmt: skip
    try:
        await replica.runs.start()
        for proc in (recorded, unrecorded):
            proc.wait(timeout=20)  # ended, and reaped here (the test is their parent)
        assert bystander.poll() is None  # never signalled
        assert remote.poll() is None  # not the executor's to end
    finally:
        await replica.runs.close()
        for other in (bystander, remote):
            other.kill()
            other.wait()

    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT data->>'job_id' AS job, data->>'reason' AS reason FROM events"
            " WHERE type = $1 ORDER BY data->>'job_id'",
            ev.JobInterrupted.TYPE,
        )
        open_leases = await conn.fetchval("SELECT count(*) FROM job_leases WHERE ended_at IS NULL")
    assert [tuple(r) for r in rows] == [
        ("job_recorded", "orphaned"),
        ("job_reused", "executor_lost"),
        ("job_unrecorded", "orphaned"),
    ]
    assert open_leases == 0
    assert await _job(rt, "job_recorded") == ("interrupted", 1)
    # Their messages come back later: nothing is run or recorded again.
    assert await replica.outcome(recorded_req, deliveries=2) == (Ack(), [])


async def test_an_adoption_cut_short_leaves_a_lost_run_to_record_not_a_job_to_run_again(
    rt: Runtime, tmp_path: Path
) -> None:
    # A sweep took a dead executor's lease, then stopped before it recorded the run (its
    # process died, or Postgres went away). The lease is this live executor's now, but the
    # job's action did run: when its message comes back, the run is recorded as lost and
    # the action is not started a second time.
    replica = Replica(rt, kill_grace_seconds=1.0)
    here = replica.runs.owner.host.id
    stubborn = subprocess.Popen(
        ["/bin/sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True
    )
    marker = tmp_path / "ran-again"
    req = _request(["/bin/sh", "-c", f"echo x >> {marker}"], job_id="job_cut")
    await _left_by_a_dead_executor(
        rt, req, host=here, expires_in=60.0,
        pgid=stubborn.pid, pgid_started=procs.start_time(stubborn.pid),
    )  # fmt: skip
    async with rt.pool.acquire() as conn:
        [lease] = await leases.open_on_host(conn, replica.runs.owner)
    try:
        adopting = asyncio.create_task(replica.runs._adopt(lease))
        owner = replica.runs.owner.id
        # Taken, and now ending the stubborn group (it ignores SIGTERM: the grace runs).
        deadline = time.monotonic() + 20
        while (await _lease(rt, "job_cut"))["owner"] != owner:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        adopting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await adopting
        assert not await _chain_types_of(rt, "job_cut", "job.interrupted")

        outcome, out = await replica.outcome(req, deliveries=2)

        assert outcome == Ack()
        assert [type(e.data) for e in out] == [ev.JobInterrupted]
        assert out[0].data.attempt == 1
        assert not marker.exists()
        stubborn.wait(timeout=20)  # what was left of the run is ended too
    finally:
        if stubborn.poll() is None:
            os.killpg(stubborn.pid, signal.SIGKILL)
            stubborn.wait()


async def test_an_adoption_cut_short_just_after_taking_the_lease_runs_nothing_again(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same, cut short at the first moment the lease is this executor's: while it reads
    # the job's request back, before it has looked at anything else. The run is still
    # recorded as lost when the message comes back, and the action not started again.
    replica = Replica(rt, kill_grace_seconds=1.0)
    marker = tmp_path / "ran-again"
    req = _request(["/bin/sh", "-c", f"echo x >> {marker}"], job_id="job_cut_early")
    await _left_by_a_dead_executor(rt, req, host=replica.runs.owner.host.id, expires_in=60.0)
    async with rt.pool.acquire() as conn:
        [lease] = await leases.open_on_host(conn, replica.runs.owner)
    reading, never = asyncio.Event(), asyncio.Event()

    async def held(*_: object) -> None:
        reading.set()
        await never.wait()

    monkeypatch.setattr(leases, "request_event", held)
    adopting = asyncio.create_task(replica.runs._adopt(lease))
    await asyncio.wait_for(reading.wait(), 20)
    assert (await _lease(rt, "job_cut_early"))["owner"] == replica.runs.owner.id
    adopting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await adopting
    monkeypatch.undo()

    outcome, out = await replica.outcome(req, deliveries=2)

    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobInterrupted]
    assert out[0].data.attempt == 1
    assert not marker.exists()


async def _chain_types_of(rt: Runtime, job_id: str, kind: str) -> bool:
    async with rt.pool.acquire() as conn:
        n = await conn.fetchval(
            "SELECT count(*) FROM events WHERE data->>'job_id' = $1 AND type = $2",
            job_id, f"io.hookbus.{kind}.v1",
        )  # fmt: skip
    return bool(n)


async def test_an_executor_leaves_alone_the_jobs_of_a_live_executor_on_its_host(
    rt: Runtime, tmp_path: Path
) -> None:
    marker, release = tmp_path / "runs", tmp_path / "release"
    req = _request(_waits_for(marker, release))
    await rt.outbox.commit([req])
    first = Replica(rt)
    running = asyncio.create_task(first.outcome(req))
    await _until(marker.exists, "the run to start")

    starting = Replica(rt)  # a second replica (this test process) starts on the same host
    assert await starting.runs.sweep() == 0
    release.touch()
    outcome, out = await running
    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobStarted, ev.JobSucceeded]


async def test_a_run_whose_lease_another_executor_took_is_ended_and_records_nothing(
    rt: Runtime, tmp_path: Path
) -> None:
    command, leader_file, child_file = _long_action(tmp_path)
    req = _request(command)
    await rt.outbox.commit([req])
    replica = Replica(rt, kill_grace_seconds=0.5)
    await replica.runs.start()
    try:
        running = asyncio.create_task(replica.outcome(req))
        leader, child = await _pids(leader_file, child_file)
        # As when this executor could not renew in time and one elsewhere took the run
        # as lost (and recorded it): it must not go on beside what that one does.
        async with rt.pool.acquire() as conn:
            await conn.execute("UPDATE job_leases SET owner = 'exe_elsewhere'")
        outcome, out = await running
    finally:
        await replica.runs.close()
    await _until(lambda: not _alive(leader) and not _alive(child), "the action's group to end")
    assert isinstance(outcome, Defer)
    assert [type(e.data) for e in out] == [ev.JobStarted]
    assert (await _lease(rt))["owner"] == "exe_elsewhere"
