"""One table (figure, value, ceiling, ratio, target, met?) and the JSON written beside it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Row:
    figure: str
    value: float | str | None
    unit: str = ""
    ceiling: float | None = None
    ceiling_of: str = ""  # what the ceiling is
    target: str = ""
    met: bool | None = None
    # The ratio as a multiple (1.8x) whatever the unit; by default throughputs are shown
    # as a share of their ceiling and latencies and CPU as a multiple of their floor.
    multiple: bool = False
    section: str = ""  # "peer": value is hookbus's, ceiling adnanh/webhook's

    @property
    def ratio(self) -> float | None:
        if not isinstance(self.value, int | float) or not self.ceiling:
            return None
        if math.isnan(self.value) or math.isinf(self.value):
            return None
        return self.value / self.ceiling

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


def _num(v: float | str | None, unit: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "∞"
    if unit == "µs":
        return f"{v:.0f} µs"
    if unit == "ms":
        if v < 10:
            return f"{v:.2f} ms"
        return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"
    if abs(v) >= 100:
        return f"{v:,.0f} {unit}".strip()
    return f"{v:.2f} {unit}".strip()


def _ratio(r: Row) -> str:
    ratio = r.ratio
    if ratio is None:
        return ""
    # A throughput is a share of its ceiling; a latency is a multiple of its floor.
    if r.multiple or r.unit in ("ms", "µs"):
        return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"
    return f"{ratio * 100:.0f} %"


HEADERS = ("figure", "value", "ceiling", "ratio", "target", "met?")
PEER_HEADERS = ("figure", "hookbus", "adnanh/webhook", "hookbus ÷ adnanh", "target", "met?")


def render(rows: list[Row], headers: tuple[str, ...] = HEADERS) -> str:
    cells = [headers]
    for r in rows:
        ceiling = _num(r.ceiling, r.unit) if r.ceiling is not None else ""
        if r.ceiling_of and ceiling:
            ceiling = f"{ceiling} ({r.ceiling_of})"
        met = "" if r.met is None else ("yes" if r.met else "NO")
        cells.append((r.figure, _num(r.value, r.unit), ceiling, _ratio(r), r.target, met))
    widths = [max(len(c[i]) for c in cells) for i in range(6)]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(c[i].ljust(widths[i]) for i in range(6)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(rows: list[Row], headers: tuple[str, ...] = HEADERS) -> str:
    out = ["| " + " | ".join(headers) + " |", "|---|---|---|---|---|---|"]
    for r in rows:
        ceiling = _num(r.ceiling, r.unit) if r.ceiling is not None else ""
        if r.ceiling_of and ceiling:
            ceiling = f"{ceiling} ({r.ceiling_of})"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        out.append(
            f"| {r.figure} | {_num(r.value, r.unit)} | {ceiling} | {_ratio(r)} | {r.target} | {met} |"
        )
    return "\n".join(out)
