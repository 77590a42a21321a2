"""Garbage collection for a long-running service, set once its start-up is done.

Every full collection walks every object the process holds, most of them made at start-up
(modules, classes, settings) and alive until it ends: on a dispatcher draining a backlog
that meant pauses of 50-60 ms about once a second that collected nothing. So once start-up
is done, what exists is frozen (``gc.freeze``): no collection walks it again. Garbage made
later, reference cycles included, is collected as before.
"""

from __future__ import annotations

import gc

from . import looplag


def settle() -> None:
    """Collect what start-up left as garbage, then freeze everything that is left. That
    collection is the process's own choice, before it takes any work: not a pause to
    report (it used to log a "long garbage collection" warning at every start)."""
    with looplag.deliberate():
        gc.collect()
    gc.freeze()
