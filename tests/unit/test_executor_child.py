"""Actions' processes are waited for through a pidfd on the running loop (shell.Child),
on asyncio's loop and on uvloop alike, and by polling where the kernel has no pidfds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from hookbus_executor import shell
from hookbus_executor.shell import Child, run_shell


def _on(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], main: Coroutine[Any, Any, Any]
) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_an_action_runs_and_its_end_is_seen_on_either_loop(loop_factory) -> None:
    async def main() -> tuple[shell.ShellResult, shell.ShellResult]:
        ok = await run_shell(["/bin/sh", "-c", "echo hi; exit 3"], env={}, timeout=10)
        killed = await run_shell(["/bin/sh", "-c", "kill -TERM $$"], env={}, timeout=10)
        return ok, killed

    ok, killed = _on(loop_factory, main())
    assert (ok.exit_code, ok.output) == (3, "hi\n")
    assert (killed.exit_code, killed.signal) == (None, signal.SIGTERM)


@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "polling"])
async def test_a_child_is_reaped_once_it_exits_and_its_fd_closed(use_pidfd: bool) -> None:
    popen = subprocess.Popen(["/bin/sh", "-c", "sleep 0.2; exit 7"])
    child = Child(popen, use_pidfd=use_pidfd)
    assert (child._fd is not None) == use_pidfd
    assert await asyncio.wait_for(child.exited, 10) == 7
    assert child.returncode == popen.returncode == 7
    assert child._fd is None  # nothing left watching
    assert child._poll is None
    with pytest.raises(ChildProcessError):
        os.waitpid(popen.pid, os.WNOHANG)  # reaped: no zombie left behind


async def test_a_child_given_up_on_stops_being_watched() -> None:
    popen = subprocess.Popen(["sleep", "30"])
    child = Child(popen)
    try:
        child.close()
        assert child._fd is None
        assert not child.exited.done()
    finally:
        popen.kill()
        popen.wait()
