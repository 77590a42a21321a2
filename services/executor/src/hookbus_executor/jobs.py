"""The executor's handler: a job request in; started, then succeeded, failed or
interrupted, out — one run of a job at a time, under the job's lease."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Mapping

from hookbus_common import events as ev
from hookbus_common.consumer import Gated, Handler, Incoming, Yielded
from hookbus_common.errors import Deferred, PermanentError
from hookbus_common.events import Event, JobRequestedV2

from . import concurrency, dockerrecreate, inspect, leases, outcomes, retries
from . import docker as dockerops
from .compose import compose_argv
from .config import ExecutorConfig, ExecutorSettings, progress_interval
from .docker import DockerFailure, DockerOutcome, Engine, EngineUnreachable
from .leases import Lease
from .outcomes import TERMINAL_STEP, job_request
from .runs import Run, Runs, end_processes, local_marks, marks
from .shell import ShellResult, ShellSpawnError, run_shell
from .ssh import SshConnectionLost, SshHosts, SshRefused, SshUnreachable, run_ssh, ssh_outcome
from .ssh import count as ssh_count
from .sshconfig import load_keys

__all__ = ["TERMINAL_STEP", "Executor", "action_env", "inherited_env", "job_request"]

log = logging.getLogger(__name__)

# How soon a stopping executor's message comes back (to another replica, or to this one
# once it has restarted).
_STOPPING_DELAY = 1.0


def action_env(
    req: JobRequestedV2, spec: ev.ShellSpec, inherited: Mapping[str, str], attempt: int = 1
) -> dict[str, str]:
    """Only allow-listed variables of our own environment, then the event's, then the
    rule's; the job's marks last, since they are how its processes are found."""
    return {**inherited, **req.context, **spec.env, **local_marks(req.job_id, attempt)}


def inherited_env(settings: ExecutorSettings, environ: Mapping[str, str]) -> dict[str, str]:
    return {k: environ[k] for k in settings.inherit_env if k in environ}


class Executor:
    """Runs job requests: takes each job's lease, runs it as its next attempt, and records
    a run whose end is unknown as interrupted (or runs the job again, if its rule says)."""

    def __init__(self, settings: ExecutorConfig, runs: Runs) -> None:
        self.settings = settings
        self.runs = runs
        self.inherited = inherited_env(settings.executor, os.environ)
        # When each job's lease was asked for, from taking it to the run's start.
        self._taken_at: dict[str, float] = {}
        ssh = settings.executor.ssh
        self.ssh = SshHosts(ssh, load_keys(ssh, settings.resolve_path, os.environ),
                            settings.resolve_path)  # fmt: skip
        # The engine docker and compose actions act on (a client opened when first used).
        self.docker = Engine(settings.executor.docker, os.environ)
        # Runs a newer job of their cancel-running concurrency key stopped: by which job.
        self._cancelled: dict[str, str] = {}

    async def close(self) -> None:
        """Close what the actions keep open between jobs: SSH connections, the engine's client."""
        await self.ssh.close()
        self.docker.close()

    @property
    def _e(self) -> ExecutorSettings:
        return self.settings.executor

    def _refuse_if_stopping(self) -> None:
        if self.runs.stopping.is_set():
            # No failure of the job: it is deferred, spending none of its retry budget.
            raise Deferred(_STOPPING_DELAY, "the executor is stopping; the job is left for later")

    def _held_delay(self) -> float:
        """How soon a message whose job another run holds comes back to look again."""
        return min(max(self.runs.renew_every, 0.2), 10.0)

    async def handle(self, incoming: Incoming) -> AsyncIterator[Yielded]:
        event = job_request(incoming.event)
        req = event.data
        match req.spec:
            case (
                ev.ShellSpec() | ev.SshSpec() | ev.DockerSpec() | ev.ComposeSpec()
                | ev.ProjectSpec() as spec
            ):  # fmt: skip
                pass
            case _:
                raise PermanentError(f"executor cannot run jobs of kind {req.kind!r}")
        runs = self.runs
        terminal_id = ev.derived_id(event.id, TERMINAL_STEP)
        limit = concurrency.limited(req)
        if limit is not None:
            self._refuse_if_stopping()
            async with runs.pool.acquire() as conn:
                admission = await concurrency.admit(conn, event, limit, terminal_id)
            match admission:
                case concurrency.Superseded(by):
                    yield outcomes.skipped(event, by)
                    return
                case concurrency.Wait(reason):
                    # Given back to NATS: a waiting job holds no place in flight.
                    raise Deferred(self._held_delay(), f"job {req.job_id} waits: {reason}")
        if req.retries:
            async with runs.pool.acquire() as conn:
                left = await retries.wait_left(conn, req)
            if left > 0:
                # Back before its backoff ended (a restart, a redelivery): not yet.
                raise Deferred(left, f"job {req.job_id}: its next attempt is due in {left:.1f}s")
        # A job seen for the first time (the common case) whose run starts at once: its
        # lease and its job.started are recorded in one statement, or neither is.
        fresh = incoming.deliveries == 1 and self._starts_at_once(spec)
        tried = False  # the fresh statement was tried: the lease has a history, or is taken
        while True:
            self._refuse_if_stopping()
            asked = time.monotonic()
            claim: leases.Claim | None = None
            if fresh:
                fresh, tried = False, True
                gate = leases.fresh_gate(event, req.job_id, runs.owner, runs.ttl,
                                         terminal_id=terminal_id)  # fmt: skip
                started = Gated([outcomes.started(event, 1)], gate)
                yield started
                if started.inserted:
                    claim = leases.Acquired(1, started=True)
            if claim is None:
                async with runs.pool.acquire() as conn:
                    claim = (
                        None if tried else await leases.take_fresh(
                            conn, event, req.job_id, runs.owner, runs.ttl,
                            terminal_id=terminal_id,
                        )
                    ) or await leases.take(
                        conn, event, req.job_id, runs.owner, runs.ttl,
                        running_here=req.job_id in runs.running,
                        acted_here=runs.acted.get(req.job_id), terminal_id=terminal_id,
                    )  # fmt: skip
            if isinstance(claim, leases.Acquired):
                self._taken_at[req.job_id] = asked
            match claim:
                case leases.Finished():
                    return
                case leases.Held(lease):
                    # Never two runs at once: this message comes back later, to find that
                    # run ended (its end recorded) or lost. Meanwhile it holds no place
                    # among the messages in flight, and counts as no failure.
                    raise Deferred(
                        self._held_delay(),
                        f"job {req.job_id} is running (attempt {lease.attempt},"
                        f" executor {lease.owner} on {lease.hostname or lease.host})",
                    )
                case leases.Lost(previous):
                    done = await self._lost(event, previous)
                    yield done
                    outcomes.count_interrupted(done)
                    await self._end(req.job_id, "interrupted")
                    if not done.data.retrying:
                        return
                case leases.Acquired(attempt, recorded):
                    async for out in self._run(incoming, event, spec, attempt, recorded):
                        yield out
                    return

    def _starts_at_once(self, spec: ev.JobSpec) -> bool:
        """Whether a run of ``spec`` records its start as soon as it has the lease (an ssh
        job first waits for one of its host's session places, and has not started then)."""
        return not (isinstance(spec, ev.SshSpec) and spec.host in self.ssh)

    async def _lost(
        self, event: Event[JobRequestedV2], previous: Lease
    ) -> Event[ev.JobInterrupted]:
        """The interruption of a run whose end is unknown; what is left of it on this
        host is ended first."""
        ended = await end_processes(previous, self.runs.owner.host, self._e.kill_grace_seconds)
        log.warning(
            "job run lost with its executor; recording it interrupted",
            extra={"job_id": previous.job_id, "attempt": previous.attempt,
                   "ended": ended.running},
        )  # fmt: skip
        return outcomes.interrupted(
            event,
            previous.attempt,
            "orphaned" if ended.running else "executor_lost",
            retrying=outcomes.retries(event.data, previous.attempt, self._e.max_attempts),
            host=previous.hostname or None,
            pgid=ended.pgid,
        )

    def _ended(self, job_id: str) -> None:
        """The run's end is committed, and with it the end of its lease: the statement
        that records a job's succeeded, failed or interrupted event ends the lease of
        that attempt too (``readmodels``), so no commit of its own is needed."""
        self.runs.acted.pop(job_id, None)

    async def _end(self, job_id: str, outcome: str) -> None:
        """End the lease after recording an interruption: committed with the event, unless
        the event was recorded already (by an executor that died before ending its lease)."""
        async with self.runs.pool.acquire() as conn:
            if not await leases.end(conn, job_id, self.runs.owner, outcome):
                log.debug("job lease ended with the run's end", extra={"job_id": job_id})
        self.runs.acted.pop(job_id, None)

    async def _run(
        self,
        incoming: Incoming,
        event: Event[JobRequestedV2],
        spec: ev.JobSpec,
        attempt: int,
        recorded: bool,
    ) -> AsyncIterator[Yielded]:
        """Run the job as ``attempt``; ``recorded``: its job.started is in the log already."""
        req = event.data
        runs = self.runs
        # Registered until its end is recorded: a redelivery here waits for that.
        run = runs.begin(req.job_id)
        started = False
        deploy: ev.DeployInfo | None = None
        placed = contextlib.AsyncExitStack()
        try:
            if isinstance(spec, ev.SshSpec) and spec.host in self.ssh:
                # Wait for one of the host's session places before the start is
                # recorded: a job waiting there has not started, and if this executor
                # dies meanwhile it runs later instead of being recorded interrupted.
                async with dockerops.heartbeat(incoming.progress, progress_interval(self._e)):
                    await placed.enter_async_context(self.ssh.place(spec.host))
            if not recorded:
                yield outcomes.started(event, attempt)
            # The commit may have waited (Postgres away): are we still to run it? Within
            # half its term of being taken the lease cannot have expired, so it is ours.
            self._refuse_if_stopping()
            taken_at = self._taken_at.pop(req.job_id, None)
            if taken_at is None or time.monotonic() - taken_at > runs.ttl / 2:
                async with runs.pool.acquire() as conn:
                    confirmed = await leases.confirm(conn, req.job_id, runs.owner, runs.ttl)
                if not confirmed:
                    raise Deferred(
                        self._held_delay(), f"job {req.job_id}: lease taken by another executor"
                    )
            started = True
            async with self._cancellable(req, run):
                if isinstance(spec, ev.SshSpec):
                    try:
                        result, error = await self._ssh(incoming, req, spec, attempt, run)
                    except SshUnreachable:
                        # Nothing ran: the attempt is handed back, and the message retried.
                        started = False
                        raise
                    except SshConnectionLost as lost:
                        # The remote command's end is unknown, like a run lost with its executor.
                        async for out in self._lost_connection(event, attempt, lost):
                            yield out
                        return
                elif isinstance(spec, ev.DockerSpec):
                    try:
                        done = await self._docker(incoming, req, spec, attempt, run)
                    except EngineUnreachable:
                        started = False
                        raise
                    result, error, deploy = done.result, done.error, done.deploy
                    if done.rolled_back is not None:
                        yield dockerrecreate.rolled_back_event(event, attempt, done)
                elif isinstance(spec, ev.ProjectSpec):
                    try:
                        done, created = await self._project(incoming, req, spec, attempt, run)
                    except EngineUnreachable:
                        started = False
                        raise
                    if created is not None:
                        yield outcomes.project_created(event, created)
                    result, error, deploy = done.result, done.error, done.deploy
                    if done.rolled_back is not None:
                        yield dockerrecreate.rolled_back_event(event, attempt, done)
                elif isinstance(spec, ev.ComposeSpec):
                    result, error = await self._compose(incoming, req, spec, attempt, run)
                else:
                    result, error = await self._shell(incoming, req, spec, attempt, run)
            if result is not None and result.stopped:
                async for out in self._stopped(event, attempt, run, result):
                    yield out
                return
            ok = result is not None and result.ok
            ran = result is not None or isinstance(spec, ev.DockerSpec)
            if not ok and retries.again(req, attempt, ran=ran):
                wait = retries.delay(req, attempt)
                yield outcomes.finished(event, attempt, result, error, deploy, retry_in=wait)
                self._ended(req.job_id)
                # The wait holds no place in flight: the message comes back after it.
                raise Deferred(wait, f"job {req.job_id} attempt {attempt} failed; it runs again")
            yield outcomes.finished(event, attempt, result, error, deploy)
            self._ended(req.job_id)
        finally:
            await placed.aclose()
            runs.finish(run)
            self._taken_at.pop(req.job_id, None)
            self._cancelled.pop(req.job_id, None)
            if not started:
                await self._release_unstarted(req.job_id)

    def _cancellable(
        self, req: JobRequestedV2, run: Run
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """While a cancel-running job runs, a newer job of its key may stop it."""
        limit = concurrency.limited(req)
        if limit is None or limit.strategy != "cancel-running":
            return contextlib.nullcontext()

        def cancel(by: str) -> None:
            log.warning("job cancelled by a newer job of its concurrency key",
                        extra={"job_id": req.job_id, "by": by})  # fmt: skip
            self._cancelled[req.job_id] = by
            run.interrupt("cancelled")

        every = min(max(self.runs.renew_every, 0.2), 2.0)
        return concurrency.watch_cancel(self.runs.pool, req.job_id, cancel, every)

    async def _stopped(
        self, event: Event[JobRequestedV2], attempt: int, run: Run, result: ShellResult
    ) -> AsyncIterator[Yielded]:
        """A run this executor ended from outside: at shutdown, or on losing its lease."""
        req = event.data
        if run.reason == "lease_lost":
            # The executor that took the lease records this run; we record nothing.
            raise Deferred(self._held_delay(), f"job {req.job_id}: lease taken by another executor")
        by = self._cancelled.get(req.job_id) if run.reason == "cancelled" else None
        # A cancelled run is over for good: the newer job of its key runs instead.
        retrying = by is None and outcomes.retries(req, attempt, self._e.max_attempts)
        done = outcomes.interrupted(
            event, attempt, "shutdown" if by is None else "cancelled", retrying=retrying,
            result=result, host=self.runs.owner.host.name, pgid=result.pgid,
            error=None if by is None else f"cancelled by {by}, a newer job of its concurrency key",
        )  # fmt: skip
        yield done
        outcomes.count_interrupted(done)
        await self._end(req.job_id, "interrupted")
        if retrying:
            # Its next run is counted by the lease (executor.max_attempts), not here.
            raise Deferred(_STOPPING_DELAY, f"job {req.job_id} stopped by shutdown; it runs again")

    async def _lost_connection(
        self, event: Event[JobRequestedV2], attempt: int, lost: SshConnectionLost
    ) -> AsyncIterator[Yielded]:
        req = event.data
        retrying = outcomes.retries(req, attempt, self._e.max_attempts)
        done = outcomes.interrupted(
            event, attempt, "connection_lost", retrying=retrying, result=lost.result,
            host=self.runs.owner.host.name,
        )  # fmt: skip
        log.warning("ssh connection lost while the job ran; recording it interrupted",
                    extra={"job_id": req.job_id, "attempt": attempt, "error": str(lost)})  # fmt: skip
        yield done
        outcomes.count_interrupted(done)
        await self._end(req.job_id, "interrupted")
        if retrying:
            raise Deferred(_STOPPING_DELAY, f"job {req.job_id}: ssh connection lost; it runs again")

    async def _ssh(
        self, incoming: Incoming, req: JobRequestedV2, spec: ev.SshSpec, attempt: int, run: Run
    ) -> tuple[ShellResult | None, str | None]:
        """Run an ssh spec; its result, or why it could never run. Raises SshUnreachable
        (nothing ran; retry) unless this was the message's last try, and
        SshConnectionLost (the command's end is unknown)."""
        e = self._e
        if spec.host not in self.ssh:
            ssh_count(spec.host, "refused")
            return None, f"no ssh host named {spec.host!r} in executor.ssh.hosts"
        # The event's facts, the rule's env, and the job's marks: nothing of our own
        # environment goes to another machine.
        env = {**req.context, **spec.env, **marks(req.job_id, attempt)}
        stdin = bytes(req.payload) if spec.payload == "stdin" else None

        async def spawned() -> None:
            run.acting = True
            self.runs.acted[req.job_id] = attempt

        try:
            result = await run_ssh(
                self.ssh, spec.host, spec.command, env=env, stdin=stdin, timeout=spec.timeout,
                kill_grace=e.kill_grace_seconds, max_output_bytes=e.max_output_bytes,
                on_progress=incoming.progress, progress_interval=progress_interval(e),
                on_spawn=spawned, stop=run.stop, placed=True,
            )  # fmt: skip
        except SshUnreachable as exc:
            ssh_count(spec.host, "unreachable")
            if incoming.tries < e.max_deliver:
                raise
            # The message's last try: the job ends here, failed, rather than dead-lettered.
            return None, f"{exc} (tried {incoming.tries} times)"
        except SshRefused as exc:
            ssh_count(spec.host, "refused")
            return None, str(exc)
        except SshConnectionLost:
            ssh_count(spec.host, "lost")
            raise
        except ValueError as exc:
            ssh_count(spec.host, "refused")
            return None, f"cannot send the command: {exc}"
        finally:
            run.acting = False
        ssh_count(spec.host, ssh_outcome(result))
        return result, None

    async def _docker(
        self, incoming: Incoming, req: JobRequestedV2, spec: ev.DockerSpec, attempt: int, run: Run
    ) -> DockerOutcome:
        """Run a docker spec. Raises EngineUnreachable (nothing was done; retry) unless
        this was the message's last try."""
        e = self._e
        engine = self.docker
        op = spec.operation
        began = time.monotonic()
        async with dockerops.heartbeat(incoming.progress, progress_interval(e)):
            try:
                try:
                    await engine.reach()
                except EngineUnreachable as exc:
                    dockerops.count("docker", op, "unreachable")
                    if incoming.tries < e.max_deliver:
                        raise
                    # The message's last try: the job ends here, failed.
                    info = ev.DeployInfo(operation=op, container=spec.container)
                    return DockerOutcome(None, f"{exc} (tried {incoming.tries} times)", info)
                run.acting = True
                self.runs.acted[req.job_id] = attempt
                out = await self._docker_operation(req, spec, attempt, run)
            finally:
                run.acting = False
                dockerops.RUN_SECONDS.labels("docker", op).observe(time.monotonic() - began)
        dockerops.count("docker", op, dockerops.outcome_name(out))
        return out

    async def _docker_operation(
        self, req: JobRequestedV2, spec: ev.DockerSpec, attempt: int, run: Run
    ) -> DockerOutcome:
        engine = self.docker
        try:
            match spec.operation:
                case "pull":
                    return await dockerops.pull(engine, spec)
                case "run":
                    env = {**req.context, **spec.env, **marks(req.job_id, attempt)}
                    labels = {dockerops.JOB_LABEL: req.job_id}
                    return await dockerops.run(
                        engine, spec, name=f"hookbus-{req.job_id}-{attempt}", env=env,
                        labels=labels, max_output_bytes=self._e.max_output_bytes, stop=run.stop,
                    )  # fmt: skip
            assert spec.container is not None
            async with engine.lock(spec.container):
                match spec.operation:
                    case "stop":
                        return await dockerops.stop(engine, spec)
                    case "restart":
                        return await dockerops.restart(engine, spec, run.stop)
                    case _:
                        return await dockerrecreate.recreate(engine, spec, run.stop)
        except Exception as exc:
            if not isinstance(exc, DockerFailure):
                log.warning("docker action failed", exc_info=True,
                            extra={"job_id": req.job_id, "operation": spec.operation})  # fmt: skip
            info = ev.DeployInfo(operation=spec.operation, container=spec.container,
                                 image_after=spec.image)  # fmt: skip
            return DockerOutcome(None, dockerops.describe(exc), info)

    async def _project(
        self, incoming: Incoming, req: JobRequestedV2, spec: ev.ProjectSpec, attempt: int, run: Run
    ) -> tuple[DockerOutcome, ev.ProjectCreated | None]:
        """Make a project of an image and deploy its first stage (inspect.py); the project
        made (None: it existed already, and its container was recreated instead)."""
        e = self._e
        engine = self.docker
        began = time.monotonic()
        async with dockerops.heartbeat(incoming.progress, progress_interval(e)):
            try:
                try:
                    await engine.reach()
                except EngineUnreachable as exc:
                    dockerops.count("docker", "project", "unreachable")
                    if incoming.tries < e.max_deliver:
                        raise
                    info = ev.DeployInfo(operation="create", container=spec.container)
                    return DockerOutcome(None, f"{exc} (tried {incoming.tries} times)", info), None
                run.acting = True
                self.runs.acted[req.job_id] = attempt
                out, created = await self._project_steps(req, spec, run)
            finally:
                run.acting = False
                dockerops.RUN_SECONDS.labels("docker", "project").observe(time.monotonic() - began)
        dockerops.count("docker", "project", dockerops.outcome_name(out))
        return out, created

    async def _project_steps(
        self, req: JobRequestedV2, spec: ev.ProjectSpec, run: Run
    ) -> tuple[DockerOutcome, ev.ProjectCreated | None]:
        engine = self.docker
        async with self.runs.pool.acquire() as conn:
            known = await inspect.existing(conn, spec.repository)
        created = None
        try:
            if known is not None:
                # A push that raced ours made the project: deploy to its stage as usual.
                stage = known.stages[0] if known.stages else ev.ProjectStage()
                container = stage.container or f"{known.project}-{stage.name}"
                redeploy = ev.DockerSpec(
                    operation="recreate", container=container, image=spec.image,
                    health=known.health, pull=inspect.pull_for(spec.repository),
                )  # fmt: skip
                async with engine.lock(container):
                    try:
                        await engine.container(container)
                    except DockerFailure:
                        # Its first deploy failed (and left nothing): this is its first.
                        out = await inspect.deploy_new(
                            engine, known, spec.image, container, run.stop, spec.timeout
                        )
                        return out, None
                    return await dockerrecreate.recreate(engine, redeploy, run.stop), None
            facts = await inspect.inspect_image(engine, spec.image, spec.timeout)
            # Made whatever its first deploy does: the next push finds it.
            created = inspect.project_of(spec, facts, req.job_id)
            container = created.stages[0].container or f"{spec.project}-{spec.stage}"
            async with engine.lock(container):
                out = await inspect.deploy_new(
                    engine, created, spec.image, container, run.stop, spec.timeout
                )
            return out, created
        except Exception as exc:
            if not isinstance(exc, DockerFailure):
                log.warning("project deploy failed", exc_info=True, extra={"job_id": req.job_id})
            info = ev.DeployInfo(
                operation="create", container=spec.container, image_after=spec.image
            )
            return DockerOutcome(None, dockerops.describe(exc), info), created

    async def _compose(
        self, incoming: Incoming, req: JobRequestedV2, spec: ev.ComposeSpec, attempt: int, run: Run
    ) -> tuple[ShellResult | None, str | None]:
        """Run Compose as a shell action would run it, with the engine's address."""
        e = self._e
        file = self.settings.resolve_path(spec.file)
        argv = compose_argv(e.docker.compose_command, spec, file)
        env = dict(spec.env)
        if self.docker.host is not None:
            # The engine's address wins over a rule's variables.
            env["DOCKER_HOST"] = self.docker.host
        shell = ev.ShellSpec(
            command=argv, env=env, timeout=spec.timeout, payload="none", cwd=str(file.parent)
        )
        began = time.monotonic()
        result, error = await self._shell(incoming, req, shell, attempt, run)
        dockerops.RUN_SECONDS.labels("compose", spec.operation).observe(time.monotonic() - began)
        outcome = "failed" if result is None else ssh_outcome(result)
        dockerops.count("compose", spec.operation, outcome)
        return result, error

    async def _release_unstarted(self, job_id: str) -> None:
        try:
            async with self.runs.pool.acquire() as conn:
                await leases.release_unstarted(conn, job_id, self.runs.owner)
        except Exception as exc:
            # Left as it is, the lease expires; the next run is then the same attempt,
            # as no action of it was started (none recorded its process).
            log.warning("could not release an unstarted job's lease", extra={"error": repr(exc)})

    async def _shell(
        self,
        incoming: Incoming,
        req: JobRequestedV2,
        spec: ev.ShellSpec,
        attempt: int,
        run: Run,
    ) -> tuple[ShellResult | None, str | None]:
        """Run a shell spec; its result, or why it could not be started."""
        settings = self.settings
        env = action_env(req, spec, self.inherited, attempt)
        cwd = str(settings.resolve_path(spec.cwd or settings.executor.workdir or "."))
        payload = bytes(req.payload)
        stdin = payload if spec.payload == "stdin" else None

        async def spawned(pgid: int) -> None:
            run.acting = True
            self.runs.acted[req.job_id] = attempt
            # Written to the lease should the action still run a moment from now.
            self.runs.spawned(run, pgid)

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
                    progress_interval=progress_interval(settings.executor),
                    on_spawn=spawned,
                    stop=run.stop,
                )
            except ShellSpawnError as exc:
                # A missing program will be missing next time too: record it, do not retry.
                return None, str(exc)
            finally:
                run.acting = False
        return result, None


def make_handler(settings: ExecutorConfig, runs: Runs, executor: Executor | None = None) -> Handler:
    """The consume loop's handler. A job already finished ends at taking its lease
    (``leases.Finished``): nothing runs again."""
    executor = executor if executor is not None else Executor(settings, runs)

    async def handle(incoming: Incoming) -> AsyncIterator[Yielded]:
        async for out in executor.handle(incoming):
            yield out

    return handle
