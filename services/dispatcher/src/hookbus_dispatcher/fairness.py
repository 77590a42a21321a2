"""Fair scheduling of deliveries: per-tenant queues served by deficit round robin, with a
cap on what one endpoint may have in flight.

The dispatcher reads ahead of what it is sending (up to a buffer of fetched, unacked
messages) and keeps what it read in one queue per tenant, and within a tenant one queue
per destination (an endpoint, a notification channel, or a URL's host). A free sending
slot goes to the next tenant in turn (deficit round robin, each tenant's share weighted
by its ``weight``); within the tenant, to the next destination in turn that has fewer
than its cap in flight. So a tenant that floods thousands of messages gets one turn like
any other, and a slow destination holds at most its cap of the slots, never all of them.

This module is the pure part (no I/O, no clock): :class:`FairQueue`. The consume loop
that feeds it is ``fairconsumer``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Tenant(Generic[T]):
    name: str
    weight: float
    deficit: float = 0.0
    # Destination → its waiting items, oldest first; `turns` is the order destinations
    # with waiting items are served in.
    queues: dict[str, deque[T]] = field(default_factory=dict)
    turns: deque[str] = field(default_factory=deque)
    size: int = 0


class FairQueue(Generic[T]):
    """Items waiting to be handled, by tenant and destination; :meth:`take` says which
    goes next.

    ``cap_for(destination)`` is how many items of a destination may be in hand at once
    (taken and not yet :meth:`done`); ``weight_for(tenant)`` is the tenant's share (1: one
    item per round). Each item costs one unit of a tenant's deficit.
    """

    def __init__(
        self,
        *,
        cap_for: Callable[[str], int],
        weight_for: Callable[[str], float] = lambda _t: 1.0,
    ) -> None:
        self._cap_for = cap_for
        self._weight_for = weight_for
        self._tenants: dict[str, _Tenant[T]] = {}
        self._active: deque[str] = deque()  # tenants with waiting items, in turn order
        self._in_hand: dict[str, int] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def in_hand(self, destination: str) -> int:
        return self._in_hand.get(destination, 0)

    def put(self, tenant: str, destination: str, item: T) -> None:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant(tenant, max(self._weight_for(tenant), 0.01))
        if t.size == 0:
            self._active.append(tenant)
        q = t.queues.get(destination)
        if q is None:
            q = t.queues[destination] = deque()
        if not q:
            t.turns.append(destination)
        q.append(item)
        t.size += 1
        self._size += 1

    def _eligible(self, t: _Tenant[T]) -> str | None:
        """The tenant's next destination in turn with room; rotates past full ones."""
        for _ in range(len(t.turns)):
            dest = t.turns[0]
            if self._in_hand.get(dest, 0) < self._cap_for(dest):
                return dest
            t.turns.rotate(-1)
        return None

    def take(self) -> tuple[str, str, T] | None:
        """The next item to handle, as ``(tenant, destination, item)``; ``None`` when
        nothing waits or everything waiting is for destinations at their cap."""
        for _ in range(len(self._active)):
            name = self._active[0]
            t = self._tenants[name]
            dest = self._eligible(t)
            if dest is None:
                # Blocked on its destinations' caps: its turn passes, and it saves no
                # credit meanwhile (as deficit round robin does for an idle flow).
                t.deficit = 0.0
                self._active.rotate(-1)
                continue
            if t.deficit < 1.0:
                t.deficit += t.weight
            if t.deficit < 1.0:
                # A weight below one: it gets a turn every few rounds.
                self._active.rotate(-1)
                continue
            q = t.queues[dest]
            item = q.popleft()
            t.deficit -= 1.0
            t.size -= 1
            self._size -= 1
            t.turns.rotate(-1)  # the next of its destinations goes next time
            if not q:
                t.turns.remove(dest)
                del t.queues[dest]
            self._in_hand[dest] = self._in_hand.get(dest, 0) + 1
            if t.size == 0:
                t.deficit = 0.0
                self._active.popleft()
                del self._tenants[name]
            elif t.deficit < 1.0:
                self._active.rotate(-1)
            return name, dest, item
        return None

    def done(self, destination: str) -> None:
        """An item taken for ``destination`` is finished: its place is free again."""
        left = self._in_hand.get(destination, 0) - 1
        if left > 0:
            self._in_hand[destination] = left
        else:
            self._in_hand.pop(destination, None)

    def __iter__(self) -> Iterator[T]:
        """Every waiting item (left in place)."""
        for t in self._tenants.values():
            for q in t.queues.values():
                yield from q

    def drain(self) -> Iterator[T]:
        """Every waiting item, removed (at a stop: given back)."""
        yield from list(self)
        self._tenants.clear()
        self._active.clear()
        self._size = 0

    def backlog(self) -> Mapping[tuple[str, str], int]:
        """Waiting items by (tenant, destination)."""
        return {
            (t.name, dest): len(q) for t in self._tenants.values() for dest, q in t.queues.items()
        }

    def longest(self) -> tuple[str, str] | None:
        """The (tenant, destination) with the most items waiting."""
        best: tuple[str, str] | None = None
        most = 0
        for t in self._tenants.values():
            for dest, q in t.queues.items():
                if len(q) > most:
                    best, most = (t.name, dest), len(q)
        return best

    def pop_newest(self, tenant: str, destination: str) -> T:
        """Take back the newest item waiting for ``destination`` (the buffer is full)."""
        t = self._tenants[tenant]
        q = t.queues[destination]
        item = q.pop()
        t.size -= 1
        self._size -= 1
        if not q:
            t.turns.remove(destination)
            del t.queues[destination]
        if t.size == 0:
            self._active.remove(tenant)
            del self._tenants[tenant]
        return item


class Pace:
    """How many deliveries finished here per second over the last ``window`` seconds:
    what a replica keeps read ahead while it shares a backlog is a few seconds of its own
    pace. Pure (the clock is passed in)."""

    def __init__(self, *, window: float = 5.0) -> None:
        self.window = window
        self._done: deque[float] = deque()

    def finished(self, now: float) -> None:
        self._done.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._done and self._done[0] < now - self.window:
            self._done.popleft()

    def per_second(self, now: float) -> float:
        self._trim(now)
        return len(self._done) / self.window
