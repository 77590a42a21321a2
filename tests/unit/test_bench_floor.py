"""The peer table's floor rows: what they compare, and the room the 3x target leaves."""

from __future__ import annotations

from typing import Any

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
