"""Closed-loop saturation with wrk and bench/signed.lua (signed, distinct deliveries)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("signed.lua")

INSTALL_HINT = (
    "wrk is not installed. On Debian/Ubuntu: apt-get install -y wrk "
    "(or run with --loadgen python to use the slower built-in asyncio generator)"
)


@dataclass(frozen=True)
class WrkResult:
    duration_s: float
    requests: int  # responses received
    sent: int  # requests written (sent - requests were in flight when wrk stopped)
    status_202: int
    status_200: int
    status_other: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.status_202 / self.duration_s if self.duration_s else 0.0


def available() -> str | None:
    return shutil.which("wrk")


def version() -> str:
    exe = available()
    if exe is None:
        return "missing"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def run(
    url: str,
    data_file: Path,
    *,
    run_id: str,
    duration: float,
    connections: int,
    threads: int,
    max_requests: int,
) -> WrkResult:
    """Run wrk against ``url`` (loopback only), bounded by time and by request count."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the load generator targets only 127.0.0.1, not {url}")
    exe = available()
    if exe is None:
        raise RuntimeError(INSTALL_HINT)
    per_thread = max(1, max_requests // threads)
    argv = [
        exe, "-t", str(threads), "-c", str(connections), "-d", f"{duration:.0f}s",
        "--timeout", "5s", "-s", str(SCRIPT), url,
        "--", str(data_file), run_id, str(per_thread),
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}"
        )
    d = json.loads(line.removeprefix("BENCH_JSON "))
    return WrkResult(
        duration_s=d["duration_us"] / 1e6,
        requests=d["requests"],
        sent=d["sent"],
        status_202=d["status_202"],
        status_200=d["status_200"],
        status_other=d["status_other"],
        socket_errors=d["connect_errors"] + d["read_errors"] + d["write_errors"] + d["timeouts"],
        p50_ms=d["p50_us"] / 1000,
        p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        p999_ms=d["p999_us"] / 1000,
        max_ms=d["max_us"] / 1000,
    )
