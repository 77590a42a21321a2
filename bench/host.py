"""The machine's own CPU times, from the first line of /proc/stat (Linux only).

On a virtual machine the host may run other guests on the cores it lends this one: that
time is *steal*. While it is high, every process here waits for a core it would otherwise
have, so times and rates measured meanwhile say more about the host than about hookbus.
The bench reports it beside its figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICK_S = 1.0 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)

NOTICEABLE_STEAL = 0.05
"""Share of the machine's time taken by the host above which the bench warns."""


@dataclass(frozen=True)
class Times:
    """Seconds of all cores since boot: running (user, nice, system, interrupts), taken by
    the host (steal), and in all (idle and waiting for I/O included)."""

    busy_s: float
    stolen_s: float
    total_s: float


def read() -> Times:
    return parse(Path("/proc/stat").read_text())


def parse(stat: str) -> Times:
    """The times on the first line (all cores) of /proc/stat's text."""
    # cpu user nice system idle iowait irq softirq steal [guest guest_nice]: guest time
    # is already counted in user and nice.
    fields = stat.split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields[:8]] + [0] * (8 - len(fields[:8]))
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return Times(
        busy_s=(user + nice + system + irq + softirq) * TICK_S,
        stolen_s=steal * TICK_S,
        total_s=sum(ticks) * TICK_S,
    )


def stolen_share(before: Times, after: Times) -> float:
    """Share of the machine's time (0-1) the host took between two readings."""
    total = after.total_s - before.total_s
    return (after.stolen_s - before.stolen_s) / total if total > 0 else 0.0


def cores(before: Times, after: Times, seconds: float) -> float:
    """Cores' worth of ``seconds`` (a difference of two readings' times) over the time
    between them."""
    total = after.total_s - before.total_s
    return seconds / total * (os.cpu_count() or 1) if total > 0 else 0.0


def note(share: float) -> str:
    """A line saying how much of the machine the host took, with a warning when it is
    enough to move the figures."""
    line = f"the host took {share:.0%} of this machine's CPU (steal)"
    if share > NOTICEABLE_STEAL:
        line += (
            ": every process waited for cores meanwhile, so times and rates here are"
            " lower than this machine gives when its host is quiet"
        )
    return line
