"""The executor's start-up waits for its actions through a pidfd where the kernel has one."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from typing import Any

import pytest

from hookbus_executor import __main__ as executor_main
from hookbus_executor.shell import run_shell

pytestmark = pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="3.12 chooses the pidfd watcher by itself"
)


async def _watcher_during_run(monkeypatch: pytest.MonkeyPatch) -> asyncio.AbstractChildWatcher:
    """The child watcher in place while the executor runs (its consume loop stubbed)."""
    seen: list[asyncio.AbstractChildWatcher] = []

    async def fake_run(settings: Any) -> None:
        seen.append(asyncio.get_child_watcher())
        # An action runs and is waited for through that watcher.
        result = await run_shell(["/bin/sh", "-c", "exit 3"], env={}, timeout=10)
        assert result.exit_code == 3

    monkeypatch.setattr(executor_main, "_run", fake_run)
    await executor_main.run(object())  # type: ignore[arg-type]
    return seen[0]


@pytest.mark.skipif(not executor_main.pidfd_available(), reason="no pidfd_open here")
async def test_start_up_selects_the_pidfd_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    watcher = await _watcher_during_run(monkeypatch)
    assert isinstance(watcher, asyncio.PidfdChildWatcher)
    # Closed and replaced once the executor's loop is done with it.
    assert not watcher.is_active()
    assert asyncio.get_child_watcher() is not watcher


async def test_start_up_keeps_the_default_without_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    assert not executor_main.pidfd_available()
    watcher = await _watcher_during_run(monkeypatch)
    assert isinstance(watcher, asyncio.ThreadedChildWatcher)


async def test_start_up_keeps_the_default_without_pidfd_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(os, "pidfd_open")
    watcher = await _watcher_during_run(monkeypatch)
    assert isinstance(watcher, asyncio.ThreadedChildWatcher)
