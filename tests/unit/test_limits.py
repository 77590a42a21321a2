"""Limits: rates as written in the config, the GCRA bucket on a fake clock (never more
than rate * N + burst in N seconds), and config errors naming the key."""

from __future__ import annotations

import heapq
import math
import random
from pathlib import Path

import pytest

from hookbus_common.errors import ConfigError
from hookbus_dispatcher import config
from hookbus_dispatcher.limits import Rate, gcra, parse_rate


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("50/s", 50.0), ("300/min", 5.0), ("3600/h", 1.0), ("0.5/s", 0.5), (" 10 / minute ", 1 / 6)],
)
def test_rates(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["50", "50/d", "fast", "-1/s", "0/s", "/s"])
def test_not_rates(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|more than zero"):
        parse_rate(text)


def test_default_burst_is_a_second_worth() -> None:
    assert Rate.of("50/s", None) == Rate(50.0, 50)
    assert Rate.of("10/min", None) == Rate(1 / 6, 1)
    assert Rate.of("50/s", 5) == Rate(50.0, 5)
    assert Rate.of(None, 5) is None


def test_a_burst_then_the_steady_rate() -> None:
    rate = Rate(10.0, 3)
    tat = None
    now = 100.0
    admitted = []
    for _ in range(5):
        tat2, wait = gcra(tat, now, rate)
        if wait == 0:
            tat = tat2
        admitted.append(wait)
    assert admitted[:3] == [0.0, 0.0, 0.0]
    assert admitted[3] == pytest.approx(0.1)  # the 4th fits one interval later
    # Waiting as told admits it.
    _tat, wait = gcra(tat, now + admitted[3], rate)
    assert wait == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_never_more_than_rate_times_n_plus_burst_in_any_window(seed: int) -> None:
    rnd = random.Random(seed)
    rate = Rate(20.0, 7)
    tat: float | None = None
    now = 0.0
    admitted: list[float] = []
    # Requests arriving at random, often much faster than the rate; each denied one
    # comes back when told (as a wait on the schedule does), some a little later.
    pending: list[float] = sorted(rnd.uniform(0, 10) for _ in range(500))
    while pending:
        now = heapq.heappop(pending)
        new, wait = gcra(tat, now, rate)
        if wait == 0:
            tat = new
            admitted.append(now)
        else:
            heapq.heappush(pending, now + wait + rnd.uniform(0, 0.05))
    assert len(admitted) == 500
    span = admitted[-1] - admitted[0]
    # 500 requests at 20/s take ~25 s: the limit made them wait.
    assert span > (500 - rate.burst) / rate.per_second - 1
    for window in (0.5, 1.0, 3.0):
        j = 0
        for i, start in enumerate(admitted):
            while j < len(admitted) and admitted[j] < start + window:
                j += 1
            assert j - i <= math.floor(rate.per_second * window + 1e-9) + rate.burst


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return path


def test_config_limits(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[dispatcher]
read_ahead = 500
[dispatcher.tenants.acme]
rate = "100/s"
burst = 20
weight = 2
[endpoints.billing]
url = "https://billing.example.com/in"
rate = "50/s"
burst = 100
max_in_flight = 10
""",
    )
    cfg = config.load(path, env={})
    assert cfg.dispatcher.read_ahead == 500
    assert cfg.dispatcher.tenants["acme"].limit() == Rate(100.0, 20)
    assert cfg.dispatcher.tenants["acme"].weight == 2
    assert cfg.endpoints["billing"].limit() == Rate(50.0, 100)
    assert cfg.endpoints["billing"].max_in_flight == 10
    assert cfg.dispatcher.destination_cap() == 8  # an eighth of max_in_flight (64)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[endpoints.b]\nurl = "https://x.example/"\nrate = "lots"', "endpoints.b.rate: 'lots'"),
        ('[endpoints.b]\nurl = "https://x.example/"\nburst = 3', "endpoints.b.burst: applies"),
        ('[endpoints.b]\nurl = "https://x.example/"\nmax_in_flight = 0', "max_in_flight"),
        ('[dispatcher.tenants.acme]\nrate = "5/d"', "dispatcher.tenants.acme.rate: '5/d'"),
        ('[dispatcher.tenants.acme]\noverflow = "drop"', "overflow"),
    ],
)
def test_bad_limits_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("'", ".")):
        config.load(_write(tmp_path, text), env={})
