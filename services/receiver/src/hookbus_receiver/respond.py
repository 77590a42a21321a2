"""Synchronous answers: a source with ``respond_wait`` holds its 202 until the first job
the webhook caused ends, and answers with that job's outcome instead.

The webhook is committed first, as always (invariant 1): waiting only changes what the
answer says. The job's end comes from the bus (``waiters``); the receiver never reads the
router's rules, so it waits for whichever job of the chain ends first.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

import msgspec
from prometheus_client import Counter
from starlette.responses import JSONResponse, Response

from .waiters import Ended, Full, Waiters

log = logging.getLogger(__name__)

ANSWERS: Final = Counter(
    "hookbus_receiver_sync_answers_total",
    "Webhooks of sources with respond_wait by how they were answered: the job's outcome"
    " (succeeded, failed, interrupted, skipped), timed_out, or full (too many waiting)",
    ["source", "outcome"],
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Longer than this and the sender's own HTTP timeout will have given up.
MAX_WAIT: Final = 600.0


def wait_seconds(value: str | float) -> float | str:
    """``respond_wait`` in seconds, or what is wrong with it."""
    if isinstance(value, bool):
        return f"{value!r} is not a duration"
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value)
        if m is None:
            return f'{value!r} is not a duration (like "10s", "500ms", "2m")'
        seconds = float(m.group(1)) * _UNIT[m.group(2) or "s"]
    if not 0 < seconds <= MAX_WAIT:
        return f"{value!r} must be more than 0 and at most {MAX_WAIT:g} seconds"
    return seconds


def _bounded(text: str, limit: int) -> tuple[str, bool]:
    data = text.encode()
    if len(data) <= limit:
        return text, False
    return data[:limit].decode(errors="ignore"), True


def outcome_body(event_id: str, end: Ended, max_output: int) -> dict[str, Any]:
    d = end.data
    status = end.type.removeprefix("io.hookbus.job.").rsplit(".", 1)[0]
    output, cut = _bounded(d.output, max_output)
    body: dict[str, Any] = {
        "id": event_id,
        "job_id": d.job_id,
        "rule": d.rule,
        "status": status,
        "ok": status == "succeeded",
        "exit_code": d.exit_code,
        "attempt": d.attempt,
        "duration_ms": d.duration_ms,
        "output": output,
        "truncated": d.truncated or cut,
    }
    if d.error is not None:
        body["error"] = d.error
    if d.timed_out:
        body["timed_out"] = True
    return body


class Responder:
    """Turns a committed webhook's 202 into the answer of its first job, when its source
    waits for one."""

    def __init__(self, waiters: Waiters, max_output: int) -> None:
        self.waiters = waiters
        self.max_output = max_output

    async def answer(self, source: str, accepted: Response, wait: float) -> Response:
        if accepted.status_code != 202:
            return accepted  # a duplicate, or a refusal: answered as always
        event_id = msgspec.json.decode(bytes(accepted.body))["id"]
        try:
            end = await self.waiters.wait(event_id, wait)
        except Full:
            ANSWERS.labels(source, "full").inc()
            log.warning("too many requests waiting for their jobs; answering 202",
                        extra={"source": source, "waiting": self.waiters.count})  # fmt: skip
            return JSONResponse(
                {"id": event_id, "waited": False, "reason": "too many requests are waiting"},
                status_code=202,
            )
        if end is None:
            ANSWERS.labels(source, "timed_out").inc()
            return JSONResponse(
                {"id": event_id, "waited": True, "reason": f"no job ended within {wait:g}s"},
                status_code=202,
            )
        body = outcome_body(event_id, end, self.max_output)
        ANSWERS.labels(source, body["status"]).inc()
        # The job's failure is the answer's content, not the receiver's: a 200 with ok false.
        return JSONResponse(body, status_code=200)
