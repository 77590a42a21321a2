"""Dead letters replayed through the operator API, against real Postgres, NATS, the
dispatcher's real handler and an HTTP sink on loopback: a dead delivery replayed once
reaches the sink again with the original webhook-id, recorded as `hookbus dlq replay`
records it but naming the token; a bulk replay counts on a dry run, then replays, and
sends nothing twice; a read token gets 403 and nothing is recorded. Every 200 answer is
checked against the OpenAPI document."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings

from .api_support import api_config
from .test_api import Api, _is_problem, served
from .test_api_endpoints import _dispatcher, _events, _post, _published, _req, _toml
from .test_dispatcher import Sink
from .test_notify import _deliver, _types

pytestmark = pytest.mark.integration


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


@pytest.fixture
async def api(settings: Settings, rt: Runtime, tmp_path: Path, sink: Sink) -> AsyncIterator[Api]:
    async with served(rt, api_config(settings, tmp_path, _toml(sink))) as served_api:
        yield served_api


async def _request_of(rt: Runtime, delivery_id: str) -> ev.Event[Any]:
    """The delivery.requested event of ``delivery_id``, as the log holds it."""
    row = await rt.pool.fetchrow(
        "SELECT id, source, type, time, correlation_id, causation_id, tenant, subject,"
        " data::text AS data FROM events WHERE type = $1 AND data->>'delivery_id' = $2",
        ev.DeliveryRequested.TYPE,
        delivery_id,
    )
    assert row is not None, f"no request of {delivery_id}"
    return ev.Event(
        id=row["id"], source=row["source"], type=row["type"], time=row["time"],
        data=ev.decode_data(row["type"], row["data"].encode()),
        correlationid=row["correlation_id"], causationid=row["causation_id"],
        tenant=row["tenant"], subject=row["subject"],
    )  # fmt: skip


async def test_a_dead_delivery_replayed_once_reaches_the_sink_with_its_webhook_id(
    api: Api, sink: Sink, tmp_path: Path
) -> None:
    rt = api.rt
    dconfig = _dispatcher(tmp_path, sink)
    sink.answer(400)
    out, _ = await _deliver(rt, dconfig, _req("dlv_1"))
    assert _types(out) == ["DeliveryAttempted", "DeliveryFailed"]
    first = sink.received[0]

    # A read token may not; nothing is recorded for it.
    r = await _post(api, "/api/dlq/dlv_1/replay", "read", {})
    _is_problem(r, 403, "forbidden")
    assert await _events(rt, ev.DeliveryReplayed.TYPE) == []

    r = await _post(api, "/api/dlq/dlv_1/replay", "operate", {"reason": "fixed the receiver"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["selected"] == 1
    assert answer["dry_run"] is False
    ((replay_of, new_id),) = [(x["replay_of"], x["delivery_id"]) for x in answer["replayed"]]
    assert replay_of == "dlv_1"
    assert new_id.startswith("dlv_")
    assert new_id != "dlv_1"
    (replayed,) = await _events(rt, ev.DeliveryReplayed.TYPE)
    assert replayed.source == "/hookbus/api"
    assert replayed.subject == new_id
    assert replayed.data.delivery_id == new_id
    assert replayed.data.replay_of == "dlv_1"
    assert replayed.data.endpoint == "billing"
    assert replayed.data.requested_by == "api:operate-bot"
    assert replayed.data.reason == "fixed the receiver"

    # Published (now, or by the relay), and the dispatcher sends it: same webhook-id.
    request = await _request_of(rt, new_id)
    assert request.data.replay_of == "dlv_1"
    published = await _published(rt, request.bus_subject(rt.settings.prefix))
    assert published.id == request.id
    sink.answer(200)
    out, _ = await _deliver(rt, dconfig, request, commit_request=False)
    assert _types(out) == ["DeliveryAttempted", "DeliverySucceeded"]
    assert len(sink.received) == 2
    again = sink.received[-1]
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert again.body == first.body
    shown = await api.get(f"/api/deliveries/{new_id}")
    assert shown["delivery"]["status"] == "succeeded"

    # What did not end dead or failed is not replayed; what does not exist is not found.
    async with api.client("operate") as c:
        _is_problem(await c.post(f"/api/dlq/{new_id}/replay", json={}), 409, "conflict")
        _is_problem(await c.post("/api/dlq/dlv_nope/replay", json={}), 404, "not_found")
        _is_problem(await c.post("/api/dlq/dlv_1/replay", json={"reason": 5}), 400, "invalid")
    assert len(await _events(rt, ev.DeliveryReplayed.TYPE)) == 1


async def test_bulk_replay_counts_on_a_dry_run_then_replays_each_once(
    api: Api, sink: Sink, tmp_path: Path
) -> None:
    rt = api.rt
    dconfig = _dispatcher(tmp_path, sink)
    sink.answer(400, 400, 200)
    for n in (1, 2, 3):
        await _deliver(rt, dconfig, _req(f"dlv_{n}"))
    assert [len(await _events(rt, t)) for t in (ev.DeliveryFailed.TYPE,)] == [2]

    # A read token may not even count.
    r = await _post(api, "/api/dlq/replay", "read", {"all": True, "dry_run": True})
    _is_problem(r, 403, "forbidden")
    async with api.client("operate") as c:
        for bad in ({}, {"all": True, "tenant": "acme"}, {"since": "whenever"}, {"all": 1}):
            _is_problem(await c.post("/api/dlq/replay", json=bad), 400, "invalid")

    r = await _post(api, "/api/dlq/replay", "operate", {"endpoint": "billing", "dry_run": True})
    assert r.status_code == 200, r.text
    assert r.json() == {"selected": 2, "dry_run": True, "replayed": []}
    r = await _post(api, "/api/dlq/replay", "operate", {"tenant": "other", "dry_run": True})
    assert r.json()["selected"] == 0
    assert await _events(rt, ev.DeliveryReplayed.TYPE) == []

    r = await _post(api, "/api/dlq/replay", "operate", {"all": True})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["selected"] == 2
    assert sorted(x["replay_of"] for x in answer["replayed"]) == ["dlv_1", "dlv_2"]
    logged = await _events(rt, ev.DeliveryReplayed.TYPE)
    assert sorted(e.data.replay_of for e in logged) == ["dlv_1", "dlv_2"]
    assert {e.data.requested_by for e in logged} == {"api:operate-bot"}
    assert {e.data.delivery_id for e in logged} == {x["delivery_id"] for x in answer["replayed"]}

    # Replayed already: a second run selects nothing and records nothing.
    r = await _post(api, "/api/dlq/replay", "operate", {"all": True})
    assert r.json() == {"selected": 0, "dry_run": False, "replayed": []}
    assert len(await _events(rt, ev.DeliveryReplayed.TYPE)) == 2
