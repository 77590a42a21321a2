"""Per-source admission before any body is read: who may call (IPs) and how often."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


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
        if self.updated is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
