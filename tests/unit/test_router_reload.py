"""Reloading the rules: a file written while a reload reads the files is not lost; a
change is seen by file-system notifications (a rename, a write in place, a ConfigMap's
link swap) without polling, and by polling where they cannot be had."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from hookbus_router import config as router
from hookbus_router.config import RouterConfig
from hookbus_router.reload import LiveRules

SOURCES = '[sources.github]\nkind = "github"\nsecrets = [{ value = "s" }]\n'
RULE = '[[rules]]\nname = "{name}"\nactions = [{{ kind = "shell", command = ["x"] }}]\n'


def _write(path: Path, name: str, later_s: int) -> None:
    """Write the rules with a modification time ``later_s`` seconds on, so each write is
    a change whatever the clock's granularity."""
    st = path.stat() if path.exists() else None
    path.write_text(SOURCES + RULE.format(name=name))
    if st is not None:
        at = st.st_mtime_ns + later_s * 1_000_000_000
        os.utime(path, ns=(at, at))


def _names(live: LiveRules) -> list[str]:
    return [r.rule.name for r in live().rules]


def test_a_write_landing_while_a_reload_reads_the_files_is_reloaded_at_the_next_poll(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hookbus.toml"
    _write(path, "one", 0)
    writes = ["three"]

    def load(p: str | None) -> RouterConfig:
        config = router.load(p, {})
        # An editor (or a ConfigMap update) writes again just after the file was read,
        # before the reload has finished.
        if writes:
            _write(path, writes.pop(), 1)
        return config

    live = LiveRules(router.load(path, {}), load)
    _write(path, "two", 1)
    assert live.changed()
    assert live.reload("file changed") == "applied"
    assert _names(live) == ["two"]

    # The second write is a change still to load, not taken for the one just read.
    assert live.changed()
    assert live.reload("file changed") == "applied"
    assert _names(live) == ["three"]
    assert not live.changed()


def test_a_reload_that_read_the_files_as_they_are_sees_no_change_after(tmp_path: Path) -> None:
    path = tmp_path / "hookbus.toml"
    _write(path, "one", 0)
    live = LiveRules(router.load(path, {}), lambda p: router.load(p, {}))
    _write(path, "two", 1)

    assert live.reload("SIGHUP") == "applied"
    assert not live.changed()  # not loaded twice


# ------------------------------------------------------------ watching the files


def _load(p: str | None) -> RouterConfig:
    return router.load(p, {})


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``check`` holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def watching(live: LiveRules, **intervals: float) -> AsyncIterator[None]:
    """``live.watch`` running, its watches set (or given up) before the body."""
    stop = asyncio.Event()
    task = asyncio.create_task(live.watch(stop, **intervals))
    try:
        await until(lambda: live.notifying is not None)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


# Polls too slow to see anything within a test: only a notification can.
NO_POLL = {"interval": 600.0, "safety": 600.0}


async def test_a_file_replaced_by_a_rename_or_written_in_place_is_applied_on_notice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hookbus.toml"
    _write(path, "one", 0)
    live = LiveRules(router.load(path, {}), _load)

    async with watching(live, **NO_POLL):
        assert live.notifying is True
        # An editor's save: a new file renamed over the old.
        new = tmp_path / ".hookbus.toml.swp"
        new.write_text(SOURCES + RULE.format(name="two"))
        os.replace(new, path)
        await until(lambda: _names(live) == ["two"])

        _write(path, "three", 1)  # the same file written again
        await until(lambda: _names(live) == ["three"])


async def test_a_configmap_update_swapping_its_data_link_is_applied_on_notice(
    tmp_path: Path,
) -> None:
    def version(name: str) -> None:
        (tmp_path / f"..{name}").mkdir()
        (tmp_path / f"..{name}" / "hookbus.toml").write_text(SOURCES + RULE.format(name=name))

    def swap(name: str) -> None:
        """What the kubelet does: the new version beside the old, a link to it renamed
        over ``..data`` at once, then the old version removed."""
        old = os.readlink(tmp_path / "..data")
        version(name)
        (tmp_path / "..data_tmp").symlink_to(f"..{name}")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        shutil.rmtree(tmp_path / old)

    version("v1")
    (tmp_path / "..data").symlink_to("..v1")
    path = tmp_path / "hookbus.toml"
    path.symlink_to("..data/hookbus.toml")
    live = LiveRules(router.load(path, {}), _load)
    assert _names(live) == ["v1"]

    async with watching(live, **NO_POLL):
        assert live.notifying is True
        swap("v2")
        await until(lambda: _names(live) == ["v2"])
        swap("v3")  # the next update too, the files now behind another link
        await until(lambda: _names(live) == ["v3"])


async def test_without_notifications_a_change_is_applied_by_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "asyncinotify", None)  # as where it is not installed
    caplog.set_level(logging.INFO, logger="hookbus_router.reload")
    path = tmp_path / "hookbus.toml"
    _write(path, "one", 0)
    live = LiveRules(router.load(path, {}), _load)

    async with watching(live, interval=0.05, safety=600.0):
        assert live.notifying is False
        new = tmp_path / ".hookbus.toml.swp"
        new.write_text(SOURCES + RULE.format(name="two"))
        os.replace(new, path)
        await until(lambda: _names(live) == ["two"])
        _write(path, "three", 1)
        await until(lambda: _names(live) == ["three"])

    # Said once, with the reason, not at every poll.
    said = [r for r in caplog.records if "cannot be watched" in r.getMessage()]
    assert len(said) == 1
    assert "no file-system notifications" in said[0].reason


async def test_a_directory_that_cannot_be_watched_is_polled_until_it_can(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.toml").write_text(RULE.format(name="one"))
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "hookbus.toml"
    path.write_text(SOURCES + f'[router]\nrules_file = "{rules / "rules.toml"}"\n')
    live = LiveRules(router.load(path, {}), _load)

    async with watching(live, interval=0.05, safety=600.0):
        assert live.notifying is True
        shutil.rmtree(rules)  # the rules' directory goes: nothing to watch there
        await until(lambda: live.notifying is False)
        assert _names(live) == ["one"]  # refused without its rules file

        # It comes back whole, rules inside: nothing watched tells, the poll does.
        staged = tmp_path / "staged"
        staged.mkdir()
        (staged / "rules.toml").write_text(RULE.format(name="two"))
        staged.rename(rules)
        await until(lambda: _names(live) == ["two"])
        await until(lambda: live.notifying is True)

        # Watched again: the poll stops and a notification tells of the next change.
        (rules / "rules.toml").write_text(RULE.format(name="three"))
        await until(lambda: _names(live) == ["three"])


async def test_an_idle_watch_checks_nothing_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "hookbus.toml"
    _write(path, "one", 0)
    live = LiveRules(router.load(path, {}), _load)
    checks = 0
    check = live.changed

    def counted() -> bool:
        nonlocal checks
        checks += 1
        return check()

    async with watching(live, interval=0.05, safety=10.0):
        assert live.notifying is True
        monkeypatch.setattr(live, "changed", counted)
        await asyncio.sleep(2.5)
        assert checks == 0  # no poll: 50 of them had the files been polled

        _write(path, "two", 1)
        await until(lambda: _names(live) == ["two"])
        assert checks >= 1
