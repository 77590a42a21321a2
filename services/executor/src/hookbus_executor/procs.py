"""Processes of this host, seen through /proc: who we are, whether a recorded process is
still the one recorded, and ending a process group we did not start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator

import msgspec

log = logging.getLogger(__name__)

_PROC = "/proc"
_POLL = 0.02
# A process that survives SIGKILL this long is stuck in the kernel; we stop waiting.
_REAP_TIMEOUT = 5.0


class Host(msgspec.Struct, frozen=True):
    """Where pids mean something: one boot of one machine, one pid namespace.

    Two containers on one machine share the boot id but not the pid namespace, so a pid
    recorded in one is never looked up in the other.
    """

    id: str
    name: str


def this_host() -> Host:
    try:
        with open(f"{_PROC}/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "unknown-boot"
    try:
        pidns = os.readlink(f"{_PROC}/self/ns/pid")
    except OSError:
        pidns = "unknown-pidns"
    return Host(id=f"{boot}/{pidns}", name=socket.gethostname())


class Stat(msgspec.Struct, frozen=True):
    state: str
    pgrp: int
    started: int
    """Start time after boot, in clock ticks: with the pid, names one process for good."""


def stat(pid: int) -> Stat | None:
    """The process's state, group and start time; None if there is no such process."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold anything, ")" included.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return Stat(state=fields[0].decode(), pgrp=int(fields[2]), started=int(fields[19]))


def start_time(pid: int) -> int | None:
    st = stat(pid)
    return None if st is None else st.started


def alive(pid: int, started: int | None) -> bool:
    """Whether ``pid`` still names the process that had start time ``started`` (a zombie
    counts as gone: it has ended and only waits to be reaped)."""
    st = stat(pid)
    if st is None or st.state in ("Z", "X"):
        return False
    return started is None or st.started == started


def _pids() -> Iterator[int]:
    with contextlib.suppress(OSError):
        for name in os.listdir(_PROC):
            if name.isdigit():
                yield int(name)


def group_members(pgid: int, started: int | None) -> list[int]:
    """The live processes of group ``pgid``, if it is still the group whose leader had
    start time ``started``.

    While the leader lives, its start time tells. A group outlives its leader, and the
    kernel does not give its id to a new process while the group exists; members started
    before the recorded leader cannot belong to it, so they are never counted.
    """
    leader = stat(pgid)
    leader_alive = leader is not None and leader.state not in ("Z", "X")
    if leader_alive and started is not None and leader is not None and leader.started != started:
        return []  # the id now names another process: not ours
    members = []
    for pid in _pids():
        st = stat(pid)
        if st is None or st.pgrp != pgid or st.state in ("Z", "X"):
            continue
        if started is not None and st.started < started:
            continue
        members.append(pid)
    return members


def groups_with_env(marks: dict[str, str]) -> set[int]:
    """Process groups of processes whose environment holds every ``NAME=value`` of
    ``marks``: how a run's processes are found when its process group was never recorded
    (the executor died between starting the action and writing it down)."""
    wanted = [f"{k}={v}".encode() for k, v in marks.items()]
    found: set[int] = set()
    for pid in _pids():
        try:
            with open(f"{_PROC}/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if all(w in env for w in wanted):
            st = stat(pid)
            if st is not None and st.state not in ("Z", "X"):
                found.add(st.pgrp)
    return found


def _signal(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def end_group(pgid: int, started: int | None, grace: float) -> bool:
    """End a process group we did not start (its parent, a dead executor, is gone):
    SIGTERM, up to ``grace`` seconds, then SIGKILL; waits until no member is left.

    Returns whether anything of the group was running. Nothing is signalled unless the
    group is still the one recorded (``group_members``), so a reused id is left alone.
    """
    if not group_members(pgid, started):
        return False
    log.warning("ending process group %d left by a stopped executor", pgid)
    _signal(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    # Not our children: no exit to wait on, hence the polling.
    while group_members(pgid, started) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(_POLL)
    if group_members(pgid, started):
        _signal(pgid, signal.SIGKILL)
        deadline = time.monotonic() + _REAP_TIMEOUT
        while group_members(pgid, started) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
    return True
