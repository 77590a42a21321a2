"""A service's garbage collection once its start-up is done: what exists is frozen, and
what start-up left as garbage is collected, not frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from hookbus_common import gcsettle


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """The test process's own collector as it was, afterwards."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settling_freezes_what_exists() -> None:
    kept = [object() for _ in range(10)]  # lives on, as start-up's objects do
    gcsettle.settle()
    assert gc.get_freeze_count() > len(kept)


def test_garbage_left_by_start_up_is_collected_not_frozen() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    cycle = Cycle()
    ref = weakref.ref(cycle)
    del cycle  # unreachable now, kept alive only by its own reference
    assert ref() is not None
    gcsettle.settle()
    assert ref() is None  # collected; frozen, it would still be there
