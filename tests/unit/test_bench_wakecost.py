"""What a wake-up costs (bench/wakecost.py): the reader measured for real, and the peer
table's rows that price the Python services' wake-ups with it."""

from __future__ import annotations

from bench import wakecost
from bench.peer import wake_rows


def _hookbus() -> dict[str, object]:
    return {
        "wakeups_per_webhook_by_process": {
            "receiver": 3.0, "router": 3.0, "executor": 5.0, "dispatcher": 0.0,
            "nats-server": 26.0, "postgres": 16.0,
        },
        "cpu_us_per_webhook_by_process": {
            "receiver": 2000.0, "router": 2000.0, "executor": 3500.0, "dispatcher": 500.0,
            "nats-server": 1700.0, "postgres": 3000.0,
        },
    }  # fmt: skip


def test_the_python_services_wake_ups_are_priced_at_the_bare_readers_cost() -> None:
    each, total = wake_rows({"rate": 50.0, "count": 400, "cpu_us_per_wakeup": 250.0}, _hookbus())
    assert each.value == 250.0
    assert "woken 50 times a second" in each.figure
    # 3 + 3 + 5 + 0 wake-ups of the Python services (not nats-server's or Postgres's) at
    # 250 µs: 2,750 µs of their 8,000.
    assert "11.0 wake-ups" in total.figure
    assert total.value == "2,750 µs (34 % of their 8,000 µs)"


def test_without_a_measurement_there_are_no_rows() -> None:
    assert wake_rows(None, _hookbus()) == []


def test_per_message_is_the_cpu_spread_over_the_messages() -> None:
    assert wakecost.per_message_us(0.05, 200) == 250.0
    assert wakecost.per_message_us(0.0, 0) == 0.0


async def test_the_reader_measures_a_cost_for_each_wake_up() -> None:
    # A real child process on a real socket pair: some CPU per message, and the child gone.
    cost = await wakecost.measure(rate=200.0, count=40)
    assert cost > 0.0
