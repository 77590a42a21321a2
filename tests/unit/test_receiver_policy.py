"""Admission policy: the client address behind proxies, allow-lists, the token bucket."""

from __future__ import annotations

import ipaddress

import pytest

from hookbus_receiver.policy import (
    PerAddress,
    TokenBucket,
    allowed,
    client_address,
    networks,
    retry_after,
)

TRUSTED = networks(["10.0.0.0/8", "127.0.0.1/32"])


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        ("198.51.100.1", "203.0.113.5", (), "198.51.100.1"),  # no trusted proxies: ignored
        ("198.51.100.1", "203.0.113.5", TRUSTED, "198.51.100.1"),  # peer not a trusted proxy
        ("10.0.0.2", "203.0.113.5", TRUSTED, "203.0.113.5"),
        ("10.0.0.2", "1.1.1.1, 203.0.113.5", TRUSTED, "203.0.113.5"),  # right-most untrusted
        ("10.0.0.2", "203.0.113.5, 10.9.9.9, 127.0.0.1", TRUSTED, "203.0.113.5"),
        ("10.0.0.2", "10.1.1.1", TRUSTED, "10.1.1.1"),  # only proxies: the left-most of them
        ("10.0.0.2", "junk, 203.0.113.5", TRUSTED, "203.0.113.5"),  # junk left of it is moot
        ("10.0.0.2", "203.0.113.5, junk", TRUSTED, None),
        ("10.0.0.2", None, TRUSTED, "10.0.0.2"),
        ("::ffff:10.0.0.2", " 2001:db8::1 ", TRUSTED, "2001:db8::1"),
        (None, "203.0.113.5", TRUSTED, None),
        ("not-an-ip", None, (), None),
    ],
)
def test_client_address(peer, xff, trusted, expected):
    got = client_address(peer, xff, trusted)

    assert (str(got) if got is not None else None) == expected


def test_allow_list():
    allow = networks(["203.0.113.0/24", "2001:db8::/32"])

    assert allowed(ipaddress.ip_address("203.0.113.9"), allow)
    assert allowed(ipaddress.ip_address("2001:db8::5"), allow)
    assert not allowed(ipaddress.ip_address("198.51.100.1"), allow)
    assert not allowed(None, allow)
    assert allowed(None, ())  # no list: everyone


def test_token_bucket_allows_a_burst_then_the_rate():
    bucket = TokenBucket(rate=2, capacity=3)

    assert [bucket.take(100.0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.5) == 0  # half a second refilled one token
    assert bucket.take(100.5) > 0
    assert bucket.take(1000.0) == 0  # a long pause refills to capacity, not beyond
    assert [bucket.take(1000.0) for _ in range(3)][-1] > 0


@pytest.mark.parametrize(("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (9.5, "10")])
def test_retry_after_is_whole_seconds(seconds, header):
    assert retry_after(seconds) == header


def test_waiting_looks_without_taking():
    bucket = TokenBucket(rate=1, capacity=1)

    assert bucket.wait(10.0) == 0
    assert bucket.wait(10.0) == 0
    assert bucket.take(10.0) == 0
    assert bucket.wait(10.0) == pytest.approx(1.0)
    assert bucket.full(11.0)


def test_unverified_requests_are_limited_per_address():
    a, b = ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("203.0.113.9")
    limiter = PerAddress(rate=1, capacity=2)

    assert limiter.wait(a, 0.0) == 0  # an address never seen may try
    limiter.charge(a, 0.0)
    limiter.charge(a, 0.0)
    assert limiter.wait(a, 0.0) == pytest.approx(1.0)
    assert limiter.wait(b, 0.0) == 0  # another address is not affected
    assert limiter.wait(None, 0.0) == 0
    assert limiter.wait(a, 1.0) == 0  # refilled at the rate


def test_addresses_remembered_are_bounded_and_busy_ones_kept_longest():
    limiter = PerAddress(rate=1, capacity=1, max_addresses=100)
    busy = ipaddress.ip_address("192.0.2.1")
    limiter.charge(busy, 0.0)
    for n in range(1000):  # a spray of addresses, one request each, long ago
        limiter.charge(ipaddress.ip_address(f"10.0.{n // 256}.{n % 256}"), 0.0)
        limiter.charge(busy, 0.0)

    assert len(limiter) <= 100
    assert limiter.wait(busy, 0.0) > 0  # failing all along: remembered all along
    for n in range(100):  # much later: everyone has refilled and makes room
        limiter.charge(ipaddress.ip_address(f"10.9.0.{n}"), 500.0)
    assert len(limiter) <= 100
    assert limiter.wait(busy, 500.0) == 0
