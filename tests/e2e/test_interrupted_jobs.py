"""Invariant 4 for jobs, with the services as processes: an executor killed (or stopped)
while a shell action runs leaves no action running unnoticed, and a job whose end is
unknown is recorded as interrupted once and not run again (unless its rule says retry)."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import nats
import pytest

from hookbus_executor import procs

from ..conftest import Servers
from .conftest import System
from .test_slice import SECRET, chain, headers, push, short_types, wait_for

pytestmark = pytest.mark.e2e


def _config(script: Path, on_interrupt: str) -> str:
    return f"""
[sources.github]
kind = "github"
secrets = [{{ value = "{SECRET}" }}]

[[rules]]
name = "deploy"
source = "github"
event = "push"
actions = [{{ kind = "shell", command = ["{script}"], timeout = 600, on_interrupt = "{on_interrupt}" }}]
"""


@pytest.fixture
def action(tmp_path: Path) -> tuple[Path, Path]:
    """An action that notes its start, sleeps (long on its first attempt), notes its end."""
    marker = tmp_path / "marker"
    script = tmp_path / "deploy.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "start $$ attempt $HOOKBUS_JOB_ATTEMPT" >> {marker}\n'
        'if [ "$HOOKBUS_JOB_ATTEMPT" = 1 ]; then sleep 300; else sleep 0.1; fi\n'
        f'echo "end $$" >> {marker}\n'
    )
    script.chmod(0o755)
    return script, marker


def _system(
    make_system: Callable[..., System], servers: Servers, script: Path, on_interrupt: str
) -> System:
    system = make_system(_config(script, on_interrupt), servers)
    system.env.update({
        # The killed executor's message comes back to the restarted one soon.
        "HOOKBUS_EXECUTOR__ACK_WAIT_SECONDS": "8",
        "HOOKBUS_EXECUTOR__SHUTDOWN_GRACE_SECONDS": "1",
        "HOOKBUS_EXECUTOR__KILL_GRACE_SECONDS": "1",
        "HOOKBUS_EXECUTOR__LEASE_SECONDS": "3",
    })  # fmt: skip
    system.start()
    return system


def _started(system: System, marker: Path) -> tuple[str, int]:
    """Send the push; its id, and the pid of the action's first run once it runs."""
    body = push()
    r = httpx.post(f"{system.url}/hooks/github", content=body, headers=headers(body, "int-1"))
    assert r.status_code == 202, r.text
    wait_for(lambda: marker.exists() and "start" in marker.read_text(), "the action", system)
    found = re.match(r"start (\d+) attempt 1\n", marker.read_text())
    assert found, marker.read_text()
    return r.json()["id"], int(found.group(1))


def _settled(system: System) -> bool:
    """Whether the executor's consumer has every message acked: the redelivered request
    was handled by the restarted executor."""

    async def run() -> bool:
        nc = await nats.connect(system.env["HOOKBUS_NATS__URL"])
        try:
            prefix = system.env["HOOKBUS_PREFIX"]
            info = await nc.jetstream().consumer_info(prefix.upper(), f"{prefix}-executor")
        finally:
            await nc.close()
        return info.num_ack_pending == 0 and info.num_pending == 0

    return asyncio.run(run())


def _interruptions(system: System, hook_id: str) -> list[dict[str, object]]:
    rows = chain(system, hook_id)
    return [
        msgspec.json.decode(r.event.data)
        for r in rows
        if r.event.type == "io.hookbus.job.interrupted.v1"
    ]


def test_a_sigkilled_executor_s_action_is_ended_on_restart_and_recorded_interrupted_once(
    servers: Servers, make_system: Callable[..., System], action: tuple[Path, Path]
) -> None:
    script, marker = action
    system = _system(make_system, servers, script, "record")
    hook_id, pid = _started(system, marker)

    system.kill("executor")
    # The action lives on without its executor: nothing else would ever end or record it.
    assert procs.alive(pid, None)

    system.start("executor")
    wait_for(lambda: not procs.alive(pid, None), "the orphaned action to be ended", system)
    wait_for(
        lambda: bool(_interruptions(system, hook_id)), "the interruption to be recorded", system
    )
    # The request's message comes back to the new executor, which must not run it again.
    wait_for(lambda: _settled(system), "the request's message to be acked", system, timeout=60)

    types = short_types(chain(system, hook_id))
    assert types == [
        "webhook.received", "webhook.routed", "job.requested", "job.started", "job.interrupted",
    ]  # fmt: skip
    (done,) = _interruptions(system, hook_id)
    assert (done["reason"], done["attempt"], done["retrying"]) == ("orphaned", 1, False)
    assert done["pgid"] == pid
    # One start, no end: it ran once and was ended, never run again.
    assert marker.read_text() == f"start {pid} attempt 1\n"
    out = system.cli("events", "--chain", hook_id)
    assert out.returncode == 0, out.stderr
    assert "job.interrupted" in out.stdout
    assert "attempt 1 interrupted: orphaned" in out.stdout


def test_a_rule_that_retries_runs_the_job_again_after_the_executor_was_killed(
    servers: Servers, make_system: Callable[..., System], action: tuple[Path, Path]
) -> None:
    script, marker = action
    system = _system(make_system, servers, script, "retry")
    hook_id, pid = _started(system, marker)

    system.kill("executor")
    system.start("executor")
    wait_for(lambda: "job.succeeded" in short_types(chain(system, hook_id)), "attempt 2", system)

    assert not procs.alive(pid, None)
    assert short_types(chain(system, hook_id))[3:] == [
        "job.started", "job.interrupted", "job.started", "job.succeeded",
    ]  # fmt: skip
    (lost,) = _interruptions(system, hook_id)
    assert (lost["attempt"], lost["retrying"]) == (1, True)
    lines = marker.read_text().splitlines()
    # The first run was ended (no end line of its own); the second ran to its end, alone.
    assert lines[0] == f"start {pid} attempt 1"
    assert re.fullmatch(r"start (\d+) attempt 2", lines[1])
    assert lines[2:] == [f"end {lines[1].split()[1]}"]


def test_a_stopped_executor_ends_its_running_action_and_records_it_interrupted(
    servers: Servers, make_system: Callable[..., System], action: tuple[Path, Path]
) -> None:
    script, marker = action
    system = _system(make_system, servers, script, "record")
    hook_id, pid = _started(system, marker)

    executor = system.procs.pop("executor")
    executor.send_signal(signal.SIGTERM)
    # It waits its grace (1 s) for the job, then ends it, records it, and exits.
    assert executor.wait(30) == 0, system.log("executor")
    assert not procs.alive(pid, None)

    (done,) = _interruptions(system, hook_id)
    assert (done["reason"], done["attempt"], done["retrying"]) == ("shutdown", 1, False)
    assert marker.read_text() == f"start {pid} attempt 1\n"
    # Started again, the executor has nothing left to do for it.
    system.start("executor")
    wait_for(lambda: _settled(system), "the request's message to be acked", system, timeout=60)
    assert marker.read_text() == f"start {pid} attempt 1\n"
    assert len(_interruptions(system, hook_id)) == 1
