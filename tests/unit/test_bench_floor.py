"""The peer table's floor rows: what they compare, and the room the 3x target leaves."""

from __future__ import annotations

from typing import Any

import pytest
from bench import floor
from bench.peer import floor_rows


def _floor(cpu_us: float, p50_ms: float) -> dict[str, Any]:
    def one(rate: float) -> dict[str, Any]:
        return {
            "rate": rate,
            "commits": 4,
            "publishes": 5,
            "takes": 2,
            "cpu_us_per_webhook": cpu_us,
            "cpu_us_per_webhook_by_process": {"nats-server": cpu_us - 900, "postgres": 900.0},
            "to_job_started": {"p50_ms": p50_ms},
        }

    return {"cpu": one(50.0), "latency": one(100.0)}


def test_the_floor_is_read_against_adnanhs_whole_cost() -> None:
    rows = floor_rows(_floor(2200.0, 4.0), cpu_hb=11000.0, cpu_ad=1000.0, started_p50_ad=2.5)
    floor, by_process, above, latency = rows
    assert floor.value == 2200.0
    assert floor.ceiling == 1000.0
    assert floor.ratio == 2.2
    assert "4 commits, 5 publishes, 2 takes at 50/s" in floor.figure
    assert by_process.value == "nats 1300 · pg 900 µs"
    # hookbus's 11,000 µs are 8,800 above the floor; 3 x 1,000 - 2,200 leaves 800.
    assert above.value == 8800.0
    assert above.ceiling == 800.0
    assert latency.value == 4.0
    assert latency.ceiling == 2.5
    assert "100/s" in latency.figure


def test_a_floor_above_the_target_leaves_no_room() -> None:
    rows = floor_rows(_floor(3500.0, 6.0), cpu_hb=11000.0, cpu_ad=1000.0, started_p50_ad=2.5)
    # 3 x 1,000 - 3,500: nothing left, and no ratio against a negative room.
    assert rows[2].value == 7500.0
    assert rows[2].ceiling is None
    assert rows[2].ratio is None
    assert "the floor alone is above the 3x target" in rows[2].figure


def test_runs_without_a_floor_print_no_floor_rows() -> None:
    assert floor_rows(None, cpu_hb=11000.0, cpu_ad=1000.0, started_p50_ad=2.5) == []


def test_rounds_of_the_floor_combine_weighted_by_their_webhooks() -> None:
    def round_of(webhooks: int, nats_us: float, pg_us: float) -> dict[str, Any]:
        return {
            "webhooks": webhooks, "rate": 50.0, "commits": 4.0, "publishes": 5.0, "takes": 2.0,
            "wall_s": webhooks / 50, "cpu_us_per_webhook": nats_us + pg_us,
            "cpu_us_per_webhook_by_process": {"nats-server": nats_us, "postgres": pg_us},
            "to_job_started": {"p50_ms": 3.0},
        }  # fmt: skip

    # A slow minute and a fast one: 250 webhooks at 3,000 µs and 250 at 1,000 µs.
    both = floor.combine([round_of(250, 1800.0, 1200.0), round_of(250, 600.0, 400.0)])
    assert both["webhooks"] == 500
    assert both["rounds"] == 2
    assert both["cpu_us_per_webhook"] == 2000.0
    assert both["cpu_us_per_webhook_by_process"] == {"nats-server": 1200.0, "postgres": 800.0}
    assert (both["commits"], both["publishes"], both["takes"]) == (4.0, 5.0, 2.0)
    assert both["wall_s"] == 10.0
    # Weighted by webhooks, not a mean of rounds: 100 at 3,000 and 300 at 1,000 µs.
    uneven = floor.combine([round_of(100, 1800.0, 1200.0), round_of(300, 600.0, 400.0)])
    assert uneven["cpu_us_per_webhook"] == 1500.0
    with pytest.raises(ValueError, match="no rounds"):
        floor.combine([])
