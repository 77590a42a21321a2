"""Where the machine's CPU went during a phase: per process group, from /proc (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import host


def _procs() -> dict[int, tuple[str, int, float]]:
    """pid -> (comm, ppid, cpu seconds used so far)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(d.name)] = (comm, int(fields[1]), (int(fields[11]) + int(fields[12])) * host.TICK_S)
    return out


@dataclass
class Snapshot:
    procs: dict[int, tuple[str, int, float]]
    machine: host.Times


def snapshot() -> Snapshot:
    return Snapshot(_procs(), host.read())


def usage(
    before: Snapshot, after: Snapshot, roles: dict[str, set[int]], *, solo: dict[str, int]
) -> dict[str, float]:
    """CPU used between two snapshots, in cores (1.0 = one core busy the whole time).

    ``roles`` names root pids; their children count with them; ``solo`` pids count alone
    (the bench process, which is the parent of everything). Processes named postgres,
    nats-server and wrk are grouped by name; everything else is "other" (on a shared
    machine, other people's work). "stolen by the host" is the time the machine's host
    took from its cores (not in "machine_busy").
    """
    a, b = before.machine, after.machine
    wall = (b.total_s - a.total_s) / max(1, os.cpu_count() or 1)
    if wall <= 0:
        return {}
    owner: dict[int, str] = {}
    for role, pids in roles.items():
        for pid in pids:
            owner[pid] = role
    for pid, (_comm, ppid, _) in after.procs.items():
        if ppid in owner and pid not in owner:
            owner[pid] = owner[ppid]
    for role, pid in solo.items():
        owner[pid] = role
    used: dict[str, float] = {}
    for pid, (comm, _ppid, t1) in after.procs.items():
        t0 = before.procs.get(pid, (comm, 0, 0.0))[2]
        delta = t1 - t0
        if delta <= 0:
            continue
        by_name = comm if comm in ("postgres", "nats-server", "wrk") else "other"
        role = owner.get(pid, by_name)
        used[role] = used.get(role, 0.0) + delta / wall
    busy = host.cores(a, b, b.busy_s - a.busy_s)
    # Processes that ended before the second snapshot (wrk, actions) show only in the machine's total.
    used["exited (wrk, actions)"] = max(0.0, busy - sum(used.values()))
    used["machine_busy"] = busy
    used["stolen by the host"] = host.cores(a, b, b.stolen_s - a.stolen_s)
    return {k: round(v, 3) for k, v in sorted(used.items())}
