"""Which addresses a delivery may connect to (no traffic: the check alone, and a client's
policy; the connector that applies it is tested with real connections in
tests/integration/test_dispatcher_httpclient.py)."""

from __future__ import annotations

import ipaddress

import pytest

from hookbus_dispatcher.ssrf import (
    REFUSED,
    Address,
    DestinationRefused,
    Guard,
    embedded_ipv4,
    refusal,
)


def ip(text: str) -> Address:
    return ipaddress.ip_address(text)


NETS = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.1.0.0/16")]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.255", "cgnat"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "reserved"),
        ("198.18.0.1", "reserved"),
        ("2001:db8::1", "reserved"),
        ("2001::1", "reserved"),  # Teredo
        ("::127.0.0.1", "reserved"),  # IPv4-compatible
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        # IPv6 forms that reach an IPv4 address are judged by it.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
        ("64:ff9b:1::1", "private"),  # local-use NAT64
    ],
)
def test_special_purpose_addresses_are_refused_with_what_they_are(
    address: str, reason: str
) -> None:
    assert refusal(ip(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",  # just past 172.16.0.0/12
        "100.128.0.1",  # just past CGNAT
        "2606:4700:4700::1111",
        "2a00:1450:4001:82b::200e",
        "::ffff:8.8.8.8",
        "2002:0808:0808::1",  # 6to4 of 8.8.8.8
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ip(address)) is None


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.0.0.1", "192.168.0.1", "::1", "fd12::1", "::ffff:10.0.0.1"]
)
def test_allow_private_opens_private_and_loopback_addresses(address: str) -> None:
    assert refusal(ip(address), allow_private=True) is None


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe"]
)
def test_allow_private_never_opens_a_metadata_service(address: str) -> None:
    assert refusal(ip(address), allow_private=True) == "metadata"


def test_an_allowed_network_opens_exactly_its_addresses() -> None:
    assert refusal(ip("127.0.0.1"), allow_networks=NETS) is None
    assert refusal(ip("10.1.200.3"), allow_networks=NETS) is None
    assert refusal(ip("::ffff:127.0.0.1"), allow_networks=NETS) is None
    assert refusal(ip("10.2.0.1"), allow_networks=NETS) == "private"
    assert refusal(ip("::1"), allow_networks=NETS) == "loopback"


def test_a_metadata_address_opens_only_when_its_network_is_listed() -> None:
    listed = [ipaddress.ip_network("169.254.169.254/32")]
    assert refusal(ip("169.254.169.254"), allow_networks=listed) is None
    assert refusal(ip("169.254.169.254"), allow_networks=NETS) == "metadata"


def test_embedded_ipv4() -> None:
    assert embedded_ipv4(ip("::ffff:1.2.3.4")) == ip("1.2.3.4")  # type: ignore[arg-type]
    assert embedded_ipv4(ip("2002:102:304::")) == ip("1.2.3.4")  # type: ignore[arg-type]
    assert embedded_ipv4(ip("64:ff9b::102:304")) == ip("1.2.3.4")  # type: ignore[arg-type]
    assert embedded_ipv4(ip("2606:4700::1")) is None  # type: ignore[arg-type]


# ------------------------------------------------------- a client's policy


def test_one_refused_address_among_public_ones_refuses_the_name() -> None:
    guard = Guard()
    before = REFUSED.labels("private")._value.get()
    with pytest.raises(DestinationRefused) as info:
        guard.check("example.test", ["93.184.215.14", "10.0.0.7"])
    assert info.value.reason == "private"
    assert info.value.address == "10.0.0.7"
    assert "example.test resolves to 10.0.0.7 (private)" in str(info.value)
    assert REFUSED.labels("private")._value.get() == before + 1


def test_a_scoped_ipv6_address_is_judged_without_its_scope() -> None:
    with pytest.raises(DestinationRefused) as info:
        Guard().check("intranet.test", ["fe80::1%eth0"])
    assert info.value.reason == "link-local"


def test_public_addresses_pass_the_guard() -> None:
    Guard().check("example.test", ["93.184.215.14", "2606:4700::6810:84e5"])


def test_allow_private_lets_a_client_reach_a_private_address_but_no_metadata_service() -> None:
    guard = Guard(allow_private=True)
    guard.check("intranet.test", ["10.0.0.7", "127.0.0.1"])
    with pytest.raises(DestinationRefused):
        guard.check("intranet.test", ["169.254.169.254"])
