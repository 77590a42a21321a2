"""The peer phase's rounds: sides alternate which goes first, and a step between rounds
runs after each round of every side (the floor and the wake-up price, beside them)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.peer import interleaved


@dataclass
class _Side:
    name: str


async def test_sides_alternate_and_the_step_between_follows_each_round() -> None:
    seen: list[str] = []

    async def run(side: _Side) -> str:
        seen.append(side.name)
        return f"{side.name}{len(seen)}"

    async def between() -> None:
        seen.append("|")

    out = await interleaved([_Side("a"), _Side("b")], 3, run, between)  # type: ignore[list-item]
    assert seen == ["a", "b", "|", "b", "a", "|", "a", "b", "|"]
    assert out == {"a": ["a1", "a5", "a7"], "b": ["b2", "b4", "b8"]}
    seen.clear()
    await interleaved([_Side("a"), _Side("b")], 2, run)  # type: ignore[list-item]
    assert seen == ["a", "b", "b", "a"]
