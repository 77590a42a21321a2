"""The dlq, deliveries and endpoints commands without I/O: what they accept, and tables."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from hookbus_cli import deliveries
from hookbus_cli.events import summary
from hookbus_cli.main import parser
from hookbus_common import events as ev
from hookbus_common.eventlog import LoggedEvent
from hookbus_common.events import RawEvent

T = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "argv",
    [
        ["dlq", "list", "--endpoint", "billing", "--since", "2h", "--json"],
        ["dlq", "show", "dlv_1"],
        ["dlq", "replay", "dlv_1", "--by", "ana", "--reason", "fixed"],
        ["dlq", "replay", "--tenant", "acme", "--since", "1d", "--dry-run"],
        ["dlq", "replay", "--all"],
        ["deliveries", "list", "--status", "retrying", "--limit", "5"],
        ["deliveries", "show", "dlv_1", "--json"],
        ["endpoints", "list"],
        ["endpoints", "disable", "billing", "--reason", "gone"],
        ["endpoints", "enable", "billing", "--recover-since", "2026-05-01T00:00:00Z"],
    ],
)
def test_the_commands_parse(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    assert callable(args.func)


def test_dlq_list_takes_dead_or_failed_only() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["dlq", "list", "--status", "succeeded"])


def _d(**fields: object) -> deliveries.Delivery:
    base: dict[str, object] = {
        "delivery_id": "dlv_1", "status": "dead", "attempts": 8, "rule": "bill",
        "tenant": "default", "endpoint": "billing", "last_status_code": 503,
        "last_error": "busy\nvery busy", "requested_at": T, "updated_at": T,
        "correlation_id": "evt_1", "request_id": "evt_2",
    }  # fmt: skip
    return deliveries.Delivery(**{**base, **fields})  # type: ignore[arg-type]


def test_the_table_is_aligned_and_says_what_was_replayed() -> None:
    text = deliveries.table(
        [_d(), _d(delivery_id="dlv_22", notification="ops", endpoint=None, replayed_as=["x"])]
    )
    head, first, second = text.splitlines()
    assert head.split() == ["DELIVERY", "STATUS", "TRIES", "LAST", "UPDATED", "TO", "RULE", "ERROR"]
    assert first.index("dead") == second.index("dead (replayed)")
    assert "notification:ops" in second
    assert first.endswith("busy very busy")  # one line per delivery


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (
            ev.DeliveryReplayed(
                replay_id="dlr_1", delivery_id="dlv_2", replay_of="dlv_1", requested_by="ana"
            ),
            "dlv_1 replayed as dlv_2 by ana",
        ),
        (
            ev.EndpointDisabled(endpoint="billing", reason="answered 410 Gone"),
            "billing: answered 410 Gone",
        ),
        (ev.EndpointEnabled(endpoint="billing", by="ana"), "billing by ana"),
    ],
)
def test_hookbus_events_summarises_replays_and_endpoint_changes(
    data: ev.EventData, line: str
) -> None:
    event = ev.make_event(data, source="/hookbus/test")
    raw = msgspec.json.decode(ev.encode(event), type=RawEvent)
    assert summary(LoggedEvent(seq=1, bus_subject="x", event=raw)) == line
