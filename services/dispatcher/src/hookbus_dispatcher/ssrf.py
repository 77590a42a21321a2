"""Where deliveries may go: the address check, and the connector that enforces it.

A URL is someone else's input (a rule's, an endpoint's), and its host name is resolved by
DNS, which someone else controls. So the check is made on every address the name resolves
to, at connect time, and the connection goes to the address that was checked: a name that
resolves to a public address when checked and to 127.0.0.1 a moment later (DNS
rebinding) never gets a connection to 127.0.0.1. TLS and the ``Host`` header still use the
name from the URL (aiohttp passes it as the server name when it connects to the address).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import aiohttp
import certifi
from aiohttp.abc import ResolveResult
from prometheus_client import Counter

from .httpclient import Client

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSED: Final = Counter(
    "hookbus_delivery_destinations_refused_total",
    "Deliveries refused because their destination resolved to a non-public address",
    ["reason"],
)


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[Network, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in pairs)


# Cloud metadata services: credentials live there. `allow_private` does not open these;
# only an explicit entry in `dispatcher.allow_networks` does.
METADATA: Final = _nets(
    ("169.254.169.254/32", "metadata"),  # AWS, GCP, Azure, OpenStack, …
    ("169.254.170.2/32", "metadata"),  # AWS ECS task credentials
    ("100.100.100.200/32", "metadata"),  # Alibaba Cloud
    ("fd00:ec2::254/128", "metadata"),  # AWS over IPv6
)

# IANA's special-purpose registries (IPv4 and IPv6), by what they are. Written out rather
# than read from ``ipaddress``'s ``is_global``, which differs between Python versions and
# calls multicast global.
SPECIAL: Final = _nets(
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "reserved"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),
    ("198.51.100.0/24", "reserved"),
    ("203.0.113.0/24", "reserved"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # includes 255.255.255.255
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "reserved"),  # IPv4-compatible (deprecated)
    ("64:ff9b:1::/48", "private"),  # local-use NAT64
    ("100::/64", "reserved"),  # discard-only
    ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo included
    ("2001:db8::/32", "reserved"),
    ("3fff::/20", "reserved"),
    ("5f00::/16", "reserved"),
    ("fc00::/7", "private"),  # unique local
    ("fe80::/10", "link-local"),
    ("fec0::/10", "private"),  # site-local (deprecated)
    ("ff00::/8", "multicast"),
)

# IPv6 forms that carry an IPv4 address, which is what the packets reach in the end.
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, 6to4, or well-known NAT64."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def refusal(
    addr: Address, *, allow_private: bool = False, allow_networks: Sequence[Network] = ()
) -> str | None:
    """Why a delivery must not connect to ``addr`` (``"loopback"``, ``"metadata"``, …),
    or ``None`` when it may.

    An address inside one of ``allow_networks`` may always be reached. Otherwise
    ``allow_private`` lets a delivery reach special-purpose addresses (private, loopback,
    …), except cloud metadata services. An IPv6 address that carries an IPv4 one
    (IPv4-mapped, 6to4, NAT64) is judged by the IPv4 address as well.
    """
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        addr = ipaddress.IPv6Address(str(addr).split("%", 1)[0])
    if any(addr.version == net.version and addr in net for net in allow_networks):
        return None
    for net, reason in METADATA:
        if addr.version == net.version and addr in net:
            return reason
    if isinstance(addr, ipaddress.IPv6Address):
        inner = embedded_ipv4(addr)
        if inner is not None:
            why = refusal(inner, allow_private=allow_private, allow_networks=allow_networks)
            if why is not None:
                return why
    if allow_private:
        return None
    for net, reason in SPECIAL:
        if addr.version == net.version and addr in net:
            return reason
    return None


class DestinationRefused(Exception):
    """The destination resolves to an address deliveries may not reach: final, never retried.

    Not a :class:`~.httpclient.SendError`: nothing was sent, and no later attempt would be
    allowed.
    """

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(
            f"destination refused: {host} resolves to {address} ({reason}); "
            "set allow_private on the endpoint or list the network in "
            "dispatcher.allow_networks to allow it"
        )
        self.host = host
        self.address = address
        self.reason = reason


class Guard:
    """The address policy of one client: which addresses its connections may reach."""

    def __init__(
        self, *, allow_private: bool = False, allow_networks: Sequence[Network] = ()
    ) -> None:
        self.allow_private = allow_private
        self.allow_networks = tuple(allow_networks)

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """Raise :class:`DestinationRefused` if any of ``host``'s addresses is refused."""
        for text in addresses:
            addr = ipaddress.ip_address(text.split("%", 1)[0])
            why = refusal(
                addr, allow_private=self.allow_private, allow_networks=self.allow_networks
            )
            if why is not None:
                REFUSED.labels(why).inc()
                raise DestinationRefused(host, str(addr), why)


DNS_CACHE_SECONDS: Final = 10
"""How long a name's checked addresses are reused (aiohttp's DNS cache). Safe against DNS
rebinding: what is cached is what was checked, and connections go to those addresses."""


class GuardedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, refusing a connection when any address its host resolves to
    is refused, before connecting. ``_resolve_host`` is where aiohttp turns a URL's host
    (a name, or an address written in the URL) into the addresses it then connects to,
    and only to those: checking its answer checks exactly what is connected to."""

    def __init__(self, guard: Guard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guard = guard

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        found = await super()._resolve_host(host, port, traces=traces)
        # Every address, not just the one used first: the others are what a retry, or
        # the next connection, would reach.
        self.guard.check(host, [r["host"] for r in found])
        return found


def guarded_client(
    *,
    allow_private: bool = False,
    allow_networks: Sequence[Network] = (),
    timeout: float = 15.0,
) -> Client:
    """The dispatcher's HTTP client: redirects not followed, no proxy from the environment
    (a proxy would be what the guard checks, not the destination), no cookies kept, every
    connection made through a :class:`GuardedConnector`; ``timeout`` is a request's when
    it gives none."""
    guard = Guard(allow_private=allow_private, allow_networks=allow_networks)

    def connector() -> aiohttp.BaseConnector:
        return GuardedConnector(
            guard,
            limit=100,
            keepalive_timeout=5.0,
            ttl_dns_cache=DNS_CACHE_SECONDS,
            # Mozilla's CA certificates (certifi's), whatever SSL_CERT_FILE says.
            ssl=ssl.create_default_context(cafile=certifi.where()),
        )

    return Client(connector, timeout)


@asynccontextmanager
async def open_clients(
    allow_networks: Sequence[Network],
    timeout: float,  # noqa: ASYNC109 (a request's, when it gives none)
) -> AsyncIterator[tuple[Client, Client]]:
    """The dispatcher's two clients: the guarded one, and one for endpoints that
    ``allow_private``. Two pools, so a connection made under one policy never serves the
    other's requests."""
    async with (
        guarded_client(allow_networks=allow_networks, timeout=timeout) as guarded,
        guarded_client(
            allow_private=True, allow_networks=allow_networks, timeout=timeout
        ) as private,
    ):
        yield guarded, private
