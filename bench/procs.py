"""CPU and memory of named groups of processes, from /proc (Linux only), precise enough for
figures of a few hundred microseconds per webhook.

A group is a root process and, optionally, its live descendants (Postgres's backends under
the postmaster, uvicorn workers under the receiver). A group can leave its children out:
the executor's children and adnanh/webhook's children are the actions they run, and the
action's own CPU is not what the comparison is about, so those groups count the root
process alone and report the CPU of the children they reaped apart (``children_s``).

Precision: ``/proc/<pid>/stat`` gives a thread group's CPU (exited threads included) in
clock ticks (10 ms), too coarse for a webhook server that uses 50 ms in a 5 s round. So
each process's CPU is the sum of its live threads' ``schedstat`` run time (nanoseconds);
when that disagrees with the tick count by more than two ticks (threads that ended within
the window took CPU with them), the tick count is used instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import host
from .host import TICK_S

_TOLERANCE_S = 2 * TICK_S


@dataclass(frozen=True)
class Group:
    """``name``: the process ``root`` and, with ``descendants``, every live descendant.

    ``reaped``: add the CPU of children the root reaped within the window (its
    cutime/cstime), for groups whose children are part of them (Postgres backends that
    exit); for groups whose children are actions (``descendants=False``) the reaped CPU is
    reported apart, never added.
    """

    name: str
    root: int
    descendants: bool = True
    reaped: bool = True


@dataclass(frozen=True)
class Proc:
    ppid: int
    start: int  # start time in ticks after boot: with the pid, one process for good
    ticks_s: float  # utime + stime of the whole thread group, exited threads included
    children_s: float  # cutime + cstime: children it has reaped
    runtime_s: float | None  # sum of live threads' schedstat run time (members only)
    wakes: int = 0  # live threads' voluntary context switches: times they slept and woke


@dataclass
class Snapshot:
    at: float  # time.perf_counter()
    procs: dict[int, Proc]
    members: dict[str, set[int]]
    machine: host.Times


def _stat(pid: int) -> tuple[int, int, float, float] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid 4, utime 14, stime 15, cutime 16, cstime 17, start 22
    return (
        int(fields[1]),
        int(fields[19]),
        (int(fields[11]) + int(fields[12])) * TICK_S,
        (int(fields[13]) + int(fields[14])) * TICK_S,
    )


def threads(pid: int) -> tuple[float | None, int]:
    """The process's live threads' schedstat run time in seconds (None if it is gone), and
    the times they went to sleep and so woke again (``voluntary_ctxt_switches``): each
    wake-up of an idle process, each wait for a socket or a child. Wake-ups are counted by
    the kernel, so they do not move with the machine's speed as CPU time does."""
    runtime = 0
    wakes = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None, 0
    for tid in tasks:
        try:
            runtime += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    wakes += int(line.split()[1])
                    break
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between listing and reading
    return runtime / 1e9, wakes


def _ppids() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        out[int(name)] = int(raw[raw.rindex(")") + 2 :].split()[1])
    return out


def members(groups: Iterable[Group], ppids: dict[int, int] | None = None) -> dict[str, set[int]]:
    """Each group's pids now: the root, and its live descendants where the group has them."""
    ppids = _ppids() if ppids is None else ppids
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, set[int]] = {}
    for g in groups:
        pids = {g.root} if g.root in ppids else set()
        if g.descendants:
            todo = list(children.get(g.root, []))
            while todo:
                p = todo.pop()
                if p not in pids:
                    pids.add(p)
                    todo.extend(children.get(p, []))
        out[g.name] = pids
    return out


def snapshot(groups: Iterable[Group]) -> Snapshot:
    groups = list(groups)
    machine = host.read()
    mem = members(groups)
    procs = {}
    for pid in set().union(*mem.values()) if mem else set():
        st = _stat(pid)
        if st is None:
            continue
        ppid, start, ticks, children = st
        procs[pid] = Proc(ppid, start, ticks, children, *threads(pid))
    return Snapshot(time.perf_counter(), procs, mem, machine)


def _delta(a: Proc | None, b: Proc) -> tuple[float, bool]:
    """CPU seconds one process used between two snapshots (all of it if it is new), and
    whether the tick count had to stand in for the precise figure."""
    if a is None or a.start != b.start:
        a = Proc(b.ppid, b.start, 0.0, 0.0, 0.0)
    ticks = b.ticks_s - a.ticks_s
    if a.runtime_s is None or b.runtime_s is None:
        return max(0.0, ticks), True
    precise = b.runtime_s - a.runtime_s
    if abs(ticks - precise) > _TOLERANCE_S:
        return max(0.0, ticks), True
    return max(0.0, precise), False


@dataclass
class Usage:
    """CPU seconds per group between two snapshots, over ``wall_s`` seconds."""

    wall_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    children_s: dict[str, float] = field(default_factory=dict)  # reaped, not in cpu_s
    machine_busy_cores: float = 0.0
    machine_stolen_cores: float = 0.0  # taken by the host (not in machine_busy_cores)
    coarse: int = 0  # process deltas taken from ticks (threads ended in the window)
    precise: int = 0  # process deltas taken from schedstat
    wakes: dict[str, int] = field(default_factory=dict)  # voluntary switches, live threads

    def total(self, names: Iterable[str] | None = None) -> float:
        names = self.cpu_s.keys() if names is None else names
        return sum(self.cpu_s.get(n, 0.0) for n in names)

    def __add__(self, other: Usage) -> Usage:
        out = Usage(self.wall_s + other.wall_s)
        out.coarse = self.coarse + other.coarse
        out.precise = self.precise + other.precise
        for src in (self, other):
            for k, v in src.cpu_s.items():
                out.cpu_s[k] = out.cpu_s.get(k, 0.0) + v
            for k, v in src.children_s.items():
                out.children_s[k] = out.children_s.get(k, 0.0) + v
            for k, n in src.wakes.items():
                out.wakes[k] = out.wakes.get(k, 0) + n
        # Busy and stolen cores, weighted by the time each part covered.
        if out.wall_s:

            def weighted(mine: float, theirs: float) -> float:
                return (mine * self.wall_s + theirs * other.wall_s) / out.wall_s

            out.machine_busy_cores = weighted(self.machine_busy_cores, other.machine_busy_cores)
            out.machine_stolen_cores = weighted(
                self.machine_stolen_cores, other.machine_stolen_cores
            )
        return out


def usage(before: Snapshot, after: Snapshot, groups: Iterable[Group]) -> Usage:
    out = Usage(after.at - before.at)
    m0, m1 = before.machine, after.machine
    out.machine_busy_cores = host.cores(m0, m1, m1.busy_s - m0.busy_s)
    out.machine_stolen_cores = host.cores(m0, m1, m1.stolen_s - m0.stolen_s)
    for g in groups:
        pids = after.members.get(g.name, set())
        cpu = 0.0
        wakes = 0
        for p in pids:
            if p in after.procs:
                used, coarse = _delta(before.procs.get(p), after.procs[p])
                cpu += used
                out.coarse += coarse
                out.precise += not coarse
                was, now = before.procs.get(p), after.procs[p]
                same = was is not None and was.start == now.start
                wakes += max(0, now.wakes - (was.wakes if same and was else 0))
        out.wakes[g.name] = wakes
        a, b = before.procs.get(g.root), after.procs.get(g.root)
        reaped = 0.0
        if a is not None and b is not None and a.start == b.start:
            reaped = b.children_s - a.children_s
            if g.reaped:
                # Children that ended inside the window: what they used before it began
                # is in the root's reaped total too, and is not this window's.
                gone = before.members.get(g.name, set()) - pids
                reaped -= sum(
                    before.procs[p].ticks_s
                    for p in gone
                    if p in before.procs and before.procs[p].ppid == g.root
                )
                cpu += max(0.0, reaped)
        out.cpu_s[g.name] = cpu
        if not g.reaped:
            out.children_s[g.name] = max(0.0, reaped)
    return out


def pss_kib(pid: int) -> int | None:
    """Proportional set size: shared pages divided among the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def memory(groups: Iterable[Group]) -> dict[str, dict[str, float]]:
    """PSS per group in MiB, and how many processes it summed."""
    groups = list(groups)
    out = {}
    for name, pids in members(groups).items():
        sizes = [s for s in (pss_kib(p) for p in pids) if s is not None]
        out[name] = {"pss_mib": round(sum(sizes) / 1024, 1), "processes": len(sizes)}
    return out
