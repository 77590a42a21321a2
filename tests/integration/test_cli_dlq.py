"""``hookbus deliveries``, ``hookbus dlq`` and ``hookbus endpoints`` as people run them (a
process of their own) against a real Postgres holding deliveries made by the real
dispatcher handler to an HTTP sink on loopback; a replay is then delivered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.service import Runtime

from .test_cli import clean_env, hookbus
from .test_dispatcher import Sink, _status
from .test_notify import _config, _deliver, _types

pytestmark = pytest.mark.integration


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


def _toml(sink: Sink) -> str:
    # One attempt only: a failed one is dead at once.
    return f"""
[endpoints.billing]
url = "{sink.url}"
allow_private = true
retry_schedule = []
secrets = [{{ env = "BILLING_WHSEC" }}]

[endpoints.crm]
url = "https://crm.example.com/in"
"""


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _req(delivery_id: str, endpoint: str = "billing") -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=delivery_id, rule="bill", webhook_id="evt_w", url="",
            endpoint=endpoint, event_type="push", body=msgspec.Raw(b'{"n": 1}'),
        ),
        source="/test",
    )  # fmt: skip


def _env(rt: Runtime) -> dict[str, str]:
    s = rt.settings
    return clean_env(
        HOOKBUS_DATABASE__URL=s.database.url,
        HOOKBUS_DATABASE__SCHEMA=s.database.schema,
        HOOKBUS_PREFIX=s.prefix,
    )


def _run(rt: Runtime, tmp_path: Path, *argv: str) -> str:
    out = hookbus("-c", str(tmp_path / "hookbus.toml"), *argv, env=_env(rt), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_list_show_and_replay_a_dead_delivery(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    config = _config(tmp_path, _toml(sink), BILLING_WHSEC=SECRET)
    sink.reply_body = b"upstream down"
    sink.answer(503)
    out, _ = await _deliver(rt, config, _req("dlv_dead"))
    assert _types(out) == ["DeliveryAttempted", "DeliveryDead"]
    sink.answer(200)
    await _deliver(rt, config, _req("dlv_ok"))

    listed = _run(rt, tmp_path, "deliveries", "list")
    assert listed.splitlines()[0].split()[:4] == ["DELIVERY", "STATUS", "TRIES", "LAST"]
    assert "dlv_dead  dead" in listed
    assert "dlv_ok    succeeded" in listed
    only = [
        msgspec.json.decode(line)
        for line in _run(rt, tmp_path, "deliveries", "list", "--status", "dead", "--json")
        .strip()
        .splitlines()
    ]
    assert [d["delivery_id"] for d in only] == ["dlv_dead"]
    assert only[0]["endpoint"] == "billing"

    shown = _run(rt, tmp_path, "deliveries", "show", "dlv_dead")
    assert "status:      dead" in shown
    assert "to:          billing" in shown
    assert "#1 " in shown
    assert " 503 " in shown
    assert "response: upstream down" in shown
    as_json = msgspec.json.decode(_run(rt, tmp_path, "dlq", "show", "dlv_dead", "--json"))
    assert [h["outcome"] for h in as_json["history"]] == ["attempted", "dead"]
    assert as_json["history"][0]["status_code"] == 503

    dlq = _run(rt, tmp_path, "dlq", "list")
    assert "dlv_dead" in dlq
    assert "dlv_ok" not in dlq

    dry = _run(rt, tmp_path, "dlq", "replay", "--endpoint", "billing", "--dry-run")
    assert dry.splitlines() == ["1 delivery to replay", "dry run: nothing replayed"]
    assert await rt.pool.fetchval("SELECT count(*) FROM deliveries") == 2

    replayed = _run(rt, tmp_path, "dlq", "replay", "dlv_dead", "--by", "ana", "--json")
    (line,) = replayed.strip().splitlines()
    new_id = msgspec.json.decode(line)["delivery_id"]
    assert msgspec.json.decode(line)["replay_of"] == "dlv_dead"
    assert await _status(rt, new_id) == ("pending", 0, None)
    audit = await rt.pool.fetchrow(
        "SELECT data::text AS data, bus_subject FROM events"
        " WHERE type = 'io.hookbus.delivery.replayed.v1'"
    )
    data = msgspec.json.decode(audit["data"])
    assert (data["requested_by"], data["replay_of"], data["delivery_id"]) == (
        "ana", "dlv_dead", new_id,
    )  # fmt: skip
    # Already replayed: a bulk replay leaves it out.
    again = _run(rt, tmp_path, "dlq", "replay", "--all")
    assert again.splitlines()[0] == "0 deliveries to replay"
    assert "(replayed)" in _run(rt, tmp_path, "dlq", "list")

    # The replay is delivered, signed with the original message id.
    row = await rt.pool.fetchrow(
        "SELECT id, source, type, time, correlation_id, data::text AS data FROM events"
        " WHERE type = 'io.hookbus.delivery.requested.v1' AND data->>'delivery_id' = $1",
        new_id,
    )
    req: ev.Event[ev.DeliveryRequested] = ev.Event(
        id=row["id"], source=row["source"], type=row["type"], time=row["time"],
        correlationid=row["correlation_id"],
        data=msgspec.json.decode(row["data"], type=ev.DeliveryRequested),
    )  # fmt: skip
    out, _ = await _deliver(rt, config, req, commit_request=False)
    assert _types(out) == ["DeliveryAttempted", "DeliverySucceeded"]
    got = sink.received[-1]
    assert got.headers["webhook-id"] == "dlv_dead"
    assert got.headers["x-hookbus-delivery"] == new_id
    assert got.body == b'{"n": 1}'


async def test_disable_and_enable_an_endpoint_recovering_what_died(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    config = _config(tmp_path, _toml(sink), BILLING_WHSEC=SECRET)
    listed = _run(rt, tmp_path, "endpoints", "list")
    assert listed.splitlines()[1].split()[:3] == ["billing", "enabled", "default"]
    assert "crm" in listed

    disabled = _run(rt, tmp_path, "endpoints", "disable", "billing", "--reason", "maintenance")
    assert disabled.strip() == "endpoint billing disabled"
    shown = _run(rt, tmp_path, "endpoints", "show", "billing")
    assert "state:       disabled" in shown
    assert "reason:      maintenance" in shown

    out, _ = await _deliver(rt, config, _req("dlv_1"))
    assert _types(out) == ["DeliveryDead"]
    assert sink.received == []

    enabled = _run(rt, tmp_path, "endpoints", "enable", "billing", "--recover-since", "1h")
    assert enabled.splitlines() == ["endpoint billing enabled", "1 dead delivery requested again"]
    as_json = msgspec.json.decode(_run(rt, tmp_path, "endpoints", "show", "billing", "--json"))
    assert as_json["state"] == "enabled"
    kinds = await rt.pool.fetch(
        "SELECT type FROM events WHERE type LIKE 'io.hookbus.endpoint.%' ORDER BY seq"
    )
    assert [k["type"] for k in kinds] == [
        "io.hookbus.endpoint.disabled.v1",
        "io.hookbus.endpoint.enabled.v1",
    ]
    pending = await rt.pool.fetchval("SELECT count(*) FROM deliveries WHERE status = 'pending'")
    assert pending == 1

    unknown = hookbus(
        "-c", str(tmp_path / "hookbus.toml"), "endpoints", "disable", "nope",
        env=_env(rt), cwd=tmp_path,
    )  # fmt: skip
    assert unknown.returncode == 1
    assert "no endpoint named 'nope'" in unknown.stderr


def test_replay_needs_an_id_or_a_selection(rt: Runtime, tmp_path: Path) -> None:
    (tmp_path / "hookbus.toml").write_text("")
    out = hookbus("-c", str(tmp_path / "hookbus.toml"), "dlq", "replay", env=_env(rt), cwd=tmp_path)
    assert out.returncode == 2
    assert "give a delivery ID, or select with --endpoint" in out.stderr
