"""readmodels.PROJECTED must name exactly the types that _apply writes for: a batch of
types outside it is committed without projection, so a missing entry loses updates."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from hookbus_common import readmodels
from hookbus_common.events import DATA_TYPES

from .test_events import SAMPLES


class _RecordingConn:
    def __init__(self) -> None:
        self.statements: list[str] = []

    async def execute(self, sql: str, *args: Any) -> str:
        self.statements.append(sql)
        return "OK"


@pytest.mark.parametrize("type_name", sorted(DATA_TYPES))
def test_projected_types_are_exactly_those_that_change_a_read_model(type_name: str) -> None:
    data = SAMPLES[type_name]
    conn = _RecordingConn()
    asyncio.run(readmodels._apply(conn, 1, data, "evt_c", datetime.now(UTC)))  # type: ignore[arg-type]
    assert readmodels.changes_read_models(data) == bool(conn.statements)
