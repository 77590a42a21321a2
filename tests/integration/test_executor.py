"""The executor's handler against a real Postgres: records, timeouts, no second run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.consumer import Ack, Consumer, Incoming, Outcome, Term, Yielded
from hookbus_common.service import Runtime
from hookbus_common.settings import extend
from hookbus_executor.config import ExecutorConfig
from hookbus_executor.jobs import TERMINAL_STEP, make_handler

pytestmark = pytest.mark.integration


class _NoMsg:
    async def in_progress(self) -> None:
        return None


def _request(command: list[str], **shell: Any) -> ev.Event[ev.JobRequestedV2]:
    return ev.make_event(
        ev.JobRequestedV2(
            job_id="job_t", rule="r", webhook_id="evt_w",
            spec=ev.ShellSpec(command=command, **shell),
            context={"HOOKBUS_REPOSITORY": "acme/app"},
            payload=msgspec.Raw(b'{"hello": "world"}'),
        ),
        source="/test",
    )  # fmt: skip


async def _outcome(
    rt: Runtime, event: ev.Event[Any], deliveries: int = 1
) -> tuple[Outcome, list[ev.Event[Any]]]:
    """Handle one message the way the executor's consume loop does (with its terminal
    step); what it settles to, and the events the handler yielded."""
    handler = make_handler(extend(rt.settings, ExecutorConfig))
    out: list[ev.Event[Any]] = []

    async def recording(incoming: Incoming) -> AsyncIterator[Yielded]:
        async for item in handler(incoming):
            out.extend([item] if isinstance(item, ev.Event) else item)
            yield item

    consumer = Consumer(
        service="executor", bus=rt.bus, outbox=rt.outbox, durable="unused",
        filter_subjects=["unused"], handler=recording, max_in_flight=1, max_deliver=5,
        terminal_step=TERMINAL_STEP,
    )  # fmt: skip
    incoming = Incoming(event=event, subject="s", deliveries=deliveries, _msg=_NoMsg())  # type: ignore[arg-type]
    return await consumer.process(incoming), out


async def _handle(rt: Runtime, event: ev.Event[Any], deliveries: int = 1) -> list[ev.Event[Any]]:
    outcome, out = await _outcome(rt, event, deliveries)
    assert outcome == Ack()
    return out


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
