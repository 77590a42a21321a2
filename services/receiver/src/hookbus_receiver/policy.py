"""Per-source admission: who may call (IPs) and how often, counting requests that proved
their sender apart from those that did not."""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


# Senders come from a few addresses: each is parsed once (addresses are immutable).
@functools.lru_cache(maxsize=4096)
def _address(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack socket is still that IPv4 client.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _within(addr: IPAddress, nets: Sequence[IPNetwork]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The address of the client, or None when it cannot be known.

    X-Forwarded-For is honoured only when the peer is a trusted proxy, and then read from
    the right: each trusted proxy appended the address it saw, so the right-most address
    that is not a trusted proxy is the client. Anything left of it is the client's own
    claim and may be forged.
    """
    addr = _address(peer) if peer else None
    if addr is None or not trusted or not _within(addr, trusted) or not forwarded_for:
        return addr
    for hop in reversed(forwarded_for.split(",")):
        hop_addr = _address(hop)
        if hop_addr is None:
            return None  # a malformed hop: nothing to its left can be trusted
        if not _within(hop_addr, trusted):
            return hop_addr
        addr = hop_addr
    return addr


@functools.lru_cache(maxsize=4096)
def text(addr: IPAddress) -> str:
    """The address as text, made once per address."""
    return str(addr)


def allowed(addr: IPAddress | None, allow: Sequence[IPNetwork]) -> bool:
    return not allow or (addr is not None and _within(addr, allow))


class TokenBucket:
    """``rate`` requests a second on average, up to ``capacity`` at once; one per process."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated: float | None = None

    def take(self, now: float) -> float:
        """Take one token: 0 when allowed, else the seconds until one is available."""
        wait = self.wait(now)
        if not wait:
            self.tokens -= 1
        return wait

    def wait(self, now: float) -> float:
        """0 when a token is there to take, else the seconds until one is; takes none."""
        if self.updated is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.wait(now) == 0 and self.tokens >= self.capacity


class PerAddress:
    """One token bucket per client address, for requests that did not prove their sender:
    junk from one address never spends what another may send. At most ``max_addresses``
    are remembered; those whose bucket has refilled are forgotten first, then those that
    failed least recently (which only lets an address start afresh, never blocks
    another)."""

    def __init__(self, rate: float, capacity: float, max_addresses: int = 4096) -> None:
        self.rate = rate
        self.capacity = capacity
        self.max_addresses = max_addresses
        self._buckets: dict[IPAddress | None, TokenBucket] = {}

    def wait(self, addr: IPAddress | None, now: float) -> float:
        """0 when ``addr`` may try now, else the seconds until it may; takes nothing."""
        bucket = self._buckets.get(addr)
        return bucket.wait(now) if bucket is not None else 0.0

    def charge(self, addr: IPAddress | None, now: float) -> None:
        """Count one unproven request from ``addr``."""
        bucket = self._buckets.pop(addr, None)  # re-inserted last: the least recent go first
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._forget(now)
            bucket = TokenBucket(self.rate, self.capacity)
        self._buckets[addr] = bucket
        bucket.take(now)

    def _forget(self, now: float) -> None:
        self._buckets = {a: b for a, b in self._buckets.items() if not b.full(now)}
        excess = len(self._buckets) - self.max_addresses // 2
        if excess > 0:
            for addr in list(self._buckets)[:excess]:
                del self._buckets[addr]

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
