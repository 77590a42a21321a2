"""The events a job leads to (started, finished, interrupted) and their deterministic ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from prometheus_client import Counter

from hookbus_common import events as ev
from hookbus_common.errors import PermanentError
from hookbus_common.events import Event, JobRequested, JobRequestedV2

from .shell import ShellResult

SOURCE = "/hookbus/executor"
# The step of a job's one terminal event (succeeded, failed, or interrupted for good):
# once it is in the log, the job is over and a redelivery of its request is not run again.
TERMINAL_STEP = "finished"

INTERRUPTED = Counter(
    "hookbus_executor_jobs_interrupted_total",
    "Job runs recorded as interrupted, by why (executor_lost, orphaned, shutdown) and"
    " whether the job runs again",
    ["kind", "reason", "retrying"],
)


def job_request(event: Event[Any]) -> Event[JobRequestedV2]:
    """The request in its current shape: a v1 request (from a router older than v2, still
    in the stream) is upgraded here, so nothing after this sees v1."""
    match event.data:
        case JobRequestedV2():
            return event
        case JobRequested() as v1:
            return msgspec.structs.replace(event, type=JobRequestedV2.TYPE, data=v1.upgrade())
    raise PermanentError(f"executor cannot handle {event.type}")


def retries(req: JobRequestedV2, attempt: int, max_attempts: int) -> bool:
    """Whether an interrupted run ``attempt`` is followed by another."""
    return req.on_interrupt == "retry" and attempt < max_attempts


def started(cause: Event[JobRequestedV2], attempt: int) -> Event[ev.JobStarted]:
    req = cause.data
    return ev.make_event(
        ev.JobStarted(job_id=req.job_id, kind=req.kind, rule=req.rule, attempt=attempt),
        source=SOURCE,
        id=ev.derived_id(cause.id, f"started/{attempt}"),
        cause=cause,
        subject=req.job_id,
    )


def _result_fields(result: ShellResult | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {
        "exit_code": result.exit_code,
        "signal": result.signal,
        "timed_out": result.timed_out,
        "duration_ms": result.duration_ms,
        "output": result.output,
        "output_bytes": result.output_bytes,
        "truncated": result.truncated,
    }


def finished(
    cause: Event[JobRequestedV2],
    attempt: int,
    result: ShellResult | None,
    error: str | None,
    deploy: ev.DeployInfo | None = None,
    retry_in: float | None = None,
) -> Event[Any]:
    """The run's end: the job's (succeeded or failed), or, with ``retry_in``, a failed
    attempt's, the next following after that many seconds."""
    req = cause.data
    fields: dict[str, Any] = {"job_id": req.job_id, "kind": req.kind, "rule": req.rule}
    fields["attempt"] = attempt
    fields["sequence"] = req.sequence
    fields.update(_result_fields(result))
    if error is not None:
        fields["error"] = error
    if deploy is not None:
        fields["deploy"] = deploy
    ok = result is not None and result.ok
    if retry_in is not None and not ok:
        at = datetime.now(UTC) + timedelta(seconds=retry_in)
        return ev.make_event(
            ev.JobFailed(**fields, retrying=True, retry_at=at), source=SOURCE,
            id=ev.derived_id(cause.id, f"failed/{attempt}"), cause=cause, subject=req.job_id,
        )  # fmt: skip
    data = ev.JobSucceeded(**fields) if ok else ev.JobFailed(**fields)
    # One id for every outcome: a job finishes once, whatever redelivery happens.
    return ev.make_event(
        data,
        source=SOURCE,
        id=ev.derived_id(cause.id, TERMINAL_STEP),
        cause=cause,
        subject=req.job_id,
    )


def interrupted(
    cause: Event[JobRequestedV2],
    attempt: int,
    reason: str,
    *,
    retrying: bool,
    result: ShellResult | None = None,
    host: str | None = None,
    pgid: int | None = None,
    error: str | None = None,
) -> Event[ev.JobInterrupted]:
    """Run ``attempt`` did not finish by itself. Unless ``retrying``, this is the job's
    terminal event (the id a succeeded or failed one would have had); otherwise its id is
    the attempt's own, and the next attempt follows."""
    req = cause.data
    data = ev.JobInterrupted(
        job_id=req.job_id,
        kind=req.kind,
        rule=req.rule,
        attempt=attempt,
        reason=reason,
        retrying=retrying,
        host=host,
        pgid=pgid,
        error=error,
        sequence=req.sequence,
        **_result_fields(result),
    )
    step = f"interrupted/{attempt}" if retrying else TERMINAL_STEP
    return ev.make_event(
        data, source=SOURCE, id=ev.derived_id(cause.id, step), cause=cause, subject=req.job_id
    )


def count_interrupted(event: Event[ev.JobInterrupted]) -> None:
    d = event.data
    INTERRUPTED.labels(d.kind, d.reason, "true" if d.retrying else "false").inc()


def skipped(cause: Event[JobRequestedV2], by: str) -> Event[ev.JobSkipped]:
    """The job's end without a run: a newer job of its concurrency key runs instead."""
    req = cause.data
    key = req.concurrency.key if req.concurrency is not None else None
    data = ev.JobSkipped(
        job_id=req.job_id, kind=req.kind, rule=req.rule, attempt=0, reason="superseded",
        superseded_by=by, concurrency_key=key, sequence=req.sequence,
        error=f"superseded by {by} (concurrency key {key!r})",
    )  # fmt: skip
    return ev.make_event(
        data, source=SOURCE, id=ev.derived_id(cause.id, TERMINAL_STEP), cause=cause,
        subject=req.job_id,
    )  # fmt: skip


def project_created(cause: Event[JobRequestedV2], created: ev.ProjectCreated) -> Event[Any]:
    """The project a project job made; recorded before its first deploy's end."""
    return ev.make_event(
        created, source=SOURCE, id=ev.derived_id(cause.id, "project"), cause=cause,
        subject=created.project,
    )  # fmt: skip
