"""A replay started through the operator API, at scale, against real Postgres and NATS:
1,000 recorded webhooks are re-driven exactly once each, though the API's replay task is
stopped mid-way (the API shuts down) and the replay is resumed afterwards."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from hookbus_api import replaystore, tokens
from hookbus_cli import replay
from hookbus_cli.main import parser
from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings

from .api_support import api_config, serve_api, webhook
from .test_consumer import until

pytestmark = pytest.mark.integration

TOTAL = 1000
# Events a second: about five batches of 40 a second, so the replay takes seconds and a
# stop lands mid-way.
RATE = 200.0


async def _record(rt: Runtime) -> list[str]:
    hooks = [webhook("scale", n) for n in range(TOTAL)]
    for i in range(0, TOTAL, 100):
        await rt.outbox.commit(hooks[i : i + 100])
    return [h.id for h in hooks]


async def _replayed(rt: Runtime, replay_id: str) -> list[str]:
    """``replay_of`` of every webhook.replayed this replay recorded."""
    started = ev.derived_id(replay_id, "started")
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT data FROM events WHERE type = $1 AND causation_id = $2",
            ev.WebhookReplayed.TYPE,
            started,
        )
    return [
        msgspec.json.decode(r["data"].encode(), type=ev.WebhookReplayed).replay_of for r in rows
    ]


async def _job(rt: Runtime, replay_id: str) -> Any:
    async with rt.pool.acquire() as conn:
        return await replaystore.get(conn, replay_id)


async def test_a_replay_started_through_the_api_redrives_each_event_once_across_a_stop(
    settings: Settings, rt: Runtime, tmp_path: Path
) -> None:
    originals = await _record(rt)
    config = api_config(settings, tmp_path)
    async with rt.pool.acquire() as conn:
        _, key = await tokens.create(conn, settings.prefix, name="ops", scope="operate", by="t")

    async with serve_api(config) as base:
        async with httpx.AsyncClient(
            base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30
        ) as c:
            r = await c.post(
                "/api/replays",
                json={"source": "scale", "mode": "redrive", "rate": RATE, "reason": "scale"},
            )
        assert r.status_code == 202, r.text
        assert r.json()["selected"] == TOTAL
        replay_id = r.json()["replay"]["replay_id"]

        async def under_way() -> bool:
            return (await _job(rt, replay_id)).done >= 3 * int(RATE / 5)

        await until(under_way, timeout=60)
    # The API stopped: its replay task finished the batch in hand and left the job.
    stopped = await _job(rt, replay_id)
    assert stopped.status == "interrupted"
    assert 0 < stopped.done < TOTAL
    so_far = await _replayed(rt, replay_id)
    assert len(so_far) == stopped.done
    assert len(set(so_far)) == len(so_far)

    # Resumed as an operator does: ``hookbus replay --resume ID``.
    args = parser().parse_args(["replay", "--resume", replay_id, "--by", "ops"])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = await replay.resume(settings, args)
    assert code == 0
    assert f"resumed after {stopped.done} of {TOTAL}" in out.getvalue()

    finished = await _job(rt, replay_id)
    assert (finished.status, finished.done) == ("finished", TOTAL)
    replayed = await _replayed(rt, replay_id)
    # Every original exactly once: none skipped at the stop, none done twice after it.
    counts = Counter(replayed)
    assert set(counts) == set(originals)
    assert max(counts.values()) == 1
    assert len(replayed) == TOTAL
