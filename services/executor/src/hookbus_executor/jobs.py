"""The executor's handler: a job request in; started, then succeeded or failed, out."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import msgspec

from hookbus_common import events as ev
from hookbus_common.consumer import Handler, Incoming, Yielded
from hookbus_common.errors import PermanentError
from hookbus_common.events import Event, JobRequested, JobRequestedV2

from .config import ExecutorConfig, ExecutorSettings
from .shell import ShellResult, ShellSpawnError, run_shell

SOURCE = "/hookbus/executor"
# The step of a job's one terminal event (succeeded or failed): once it is in the log,
# the job is finished and a redelivery of its request is not run again.
TERMINAL_STEP = "finished"


def action_env(
    req: JobRequestedV2, spec: ev.ShellSpec, inherited: Mapping[str, str]
) -> dict[str, str]:
    """Only allow-listed variables of our own environment, then the event's, then the rule's."""
    return {**inherited, **req.context, "HOOKBUS_JOB_ID": req.job_id, **spec.env}


def inherited_env(settings: ExecutorSettings, environ: Mapping[str, str]) -> dict[str, str]:
    return {k: environ[k] for k in settings.inherit_env if k in environ}


def job_request(event: Event[Any]) -> Event[JobRequestedV2]:
    """The request in its current shape: a v1 request (from a router older than v2, still
    in the stream) is upgraded here, so nothing after this sees v1."""
    match event.data:
        case JobRequestedV2():
            return event
        case JobRequested() as v1:
            return msgspec.structs.replace(event, type=JobRequestedV2.TYPE, data=v1.upgrade())
    raise PermanentError(f"executor cannot handle {event.type}")


def _finished(
    cause: Event[JobRequestedV2], attempt: int, result: ShellResult | None, error: str | None
) -> Event[Any]:
    req = cause.data
    fields: dict[str, Any] = {"job_id": req.job_id, "kind": req.kind, "rule": req.rule}
    fields["attempt"] = attempt
    if result is not None:
        fields.update(
            exit_code=result.exit_code,
            signal=result.signal,
            timed_out=result.timed_out,
            duration_ms=result.duration_ms,
            output=result.output,
            output_bytes=result.output_bytes,
            truncated=result.truncated,
        )
    if error is not None:
        fields["error"] = error
    ok = result is not None and result.ok
    data = ev.JobSucceeded(**fields) if ok else ev.JobFailed(**fields)
    # One id for either outcome: a job finishes once, whatever redelivery happens.
    return ev.make_event(
        data,
        source=SOURCE,
        id=ev.derived_id(cause.id, TERMINAL_STEP),
        cause=cause,
        subject=req.job_id,
    )


async def _shell(
    settings: ExecutorConfig,
    inherited: Mapping[str, str],
    incoming: Incoming,
    req: JobRequestedV2,
    spec: ev.ShellSpec,
) -> tuple[ShellResult | None, str | None]:
    """Run a shell spec; its result, or why it could not be started."""
    env = action_env(req, spec, inherited)
    cwd = str(settings.resolve_path(spec.cwd or settings.executor.workdir or "."))
    payload = bytes(req.payload)
    stdin = payload if spec.payload == "stdin" else None
    with contextlib.ExitStack() as stack:
        if spec.payload == "file":
            fd, path = tempfile.mkstemp(prefix="hookbus-payload-", suffix=".json")
            stack.callback(os.unlink, path)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            env["HOOKBUS_PAYLOAD_FILE"] = path
        try:
            result = await run_shell(
                spec.command,
                env=env,
                cwd=cwd,
                stdin=stdin,
                timeout=spec.timeout,
                kill_grace=settings.executor.kill_grace_seconds,
                max_output_bytes=settings.executor.max_output_bytes,
                on_progress=incoming.progress,
            )
        except ShellSpawnError as exc:
            # A missing program will be missing next time too: record it, do not retry.
            return None, str(exc)
    return result, None


async def run_job(
    settings: ExecutorConfig, inherited: Mapping[str, str], incoming: Incoming
) -> AsyncIterator[Yielded]:
    event = job_request(incoming.event)
    req = event.data
    run: Callable[[], Awaitable[tuple[ShellResult | None, str | None]]]
    match req.spec:
        case ev.ShellSpec() as spec:
            run = partial(_shell, settings, inherited, incoming, req, spec)
        case _:
            raise PermanentError(f"executor cannot run jobs of kind {req.kind!r}")
    attempt = incoming.deliveries
    yield ev.make_event(
        ev.JobStarted(job_id=req.job_id, kind=req.kind, rule=req.rule, attempt=attempt),
        source=SOURCE,
        id=ev.derived_id(event.id, f"started/{attempt}"),
        cause=event,
        subject=req.job_id,
    )
    result, error = await run()
    yield _finished(event, attempt, result, error)


def make_handler(settings: ExecutorConfig) -> Handler:
    inherited = inherited_env(settings.executor, os.environ)

    # A job already finished (we died before acking) never gets here: the consume loop
    # skips it (terminal_step=TERMINAL_STEP), so it is not run again.
    async def handle(incoming: Incoming) -> AsyncIterator[Yielded]:
        async for out in run_job(settings, inherited, incoming):
            yield out

    return handle
