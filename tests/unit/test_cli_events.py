"""``hookbus events``: one-line summaries of every event type, and JSON lines."""

from __future__ import annotations

import msgspec
import pytest

from hookbus_cli.events import json_line, summary
from hookbus_common import events as ev
from hookbus_common.eventlog import LoggedEvent
from hookbus_common.events import RawEvent


def logged(data: ev.EventData, *, seq: int = 1) -> LoggedEvent:
    """A row of the log as ``hookbus events`` reads it: the data still as JSON bytes."""
    event = ev.make_event(data, source="/hookbus/test", tenant="acme")
    raw = msgspec.json.decode(ev.encode(event), type=RawEvent)
    return LoggedEvent(seq=seq, bus_subject=event.bus_subject("hookbus"), event=raw)


# --------------------------------------------------------------------------- summary


def test_webhook_received_names_source_event_repository_and_branch():
    data = ev.WebhookReceived(
        source="github", kind="github", event_type="push", repository="acme/app", branch="main"
    )

    assert summary(logged(data)) == "github push acme/app@main"


def test_webhook_received_for_a_tag_shows_the_tag():
    data = ev.WebhookReceived(
        source="github", kind="github", event_type="push", repository="acme/app", tag="v1.2"
    )

    assert summary(logged(data)) == "github push acme/app@v1.2"


def test_webhook_routed_lists_the_matched_rules_or_says_nothing():
    hit = ev.WebhookRouted(
        source="gh", event_type="push", webhook_id="evt_1", matched=["deploy", "notify"]
    )
    miss = ev.WebhookRouted(source="gh", event_type="push", webhook_id="evt_1")

    assert summary(logged(hit)) == "matched: deploy, notify"
    assert summary(logged(miss)) == "matched: nothing"


def test_job_requested_and_started():
    requested = ev.JobRequested(job_id="job_1", kind="shell", rule="deploy", webhook_id="evt_1")
    started = ev.JobStarted(job_id="job_1", kind="shell", rule="deploy", attempt=2)

    assert summary(logged(requested)) == "job_1 shell (rule deploy)"
    assert summary(logged(started)) == "job_1 attempt 2"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            ev.JobSucceeded(
                job_id="job_1", kind="shell", rule="r", exit_code=0, duration_ms=1234.4
            ),
            "job_1 exit 0 in 1234 ms",
        ),
        (
            ev.JobFailed(job_id="job_1", kind="shell", rule="r", exit_code=3, duration_ms=8.0),
            "job_1 exit 3 in 8 ms",
        ),
        (
            ev.JobFailed(
                job_id="job_1", kind="shell", rule="r", timed_out=True, signal=15, duration_ms=5e3
            ),
            "job_1 timed out in 5000 ms",
        ),
        (
            ev.JobFailed(job_id="job_1", kind="shell", rule="r", error="no such file: ./x"),
            "job_1 no such file: ./x in 0 ms",
        ),
    ],
)
def test_job_outcome_says_how_it_ended_and_how_long_it_took(data, expected):
    assert summary(logged(data)) == expected


def test_a_job_killed_by_a_signal_says_so():
    data = ev.JobFailed(job_id="job_1", kind="shell", rule="r", signal=9, duration_ms=40.0)

    line = summary(logged(data))

    assert "signal 9" in line
    assert "None" not in line


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            ev.DeliverySucceeded(delivery_id="dlv_1", url="https://e.example/h", status_code=204),
            "dlv_1 https://e.example/h 204",
        ),
        (
            ev.DeliveryDead(delivery_id="dlv_1", url="https://e.example/h", error="ConnectError"),
            "dlv_1 https://e.example/h ConnectError",
        ),
        (
            ev.DeliveryRequested(
                delivery_id="dlv_1", rule="r", webhook_id="w", url="https://e.example/h"
            ),
            "dlv_1 https://e.example/h",
        ),
    ],
)
def test_delivery_events_show_id_url_and_status(data, expected):
    assert summary(logged(data)) == expected


def test_dead_letter_names_the_service_and_the_error():
    data = ev.MessageDeadLettered(
        service="router",
        bus_subject="hookbus.webhook.received.gh.push",
        stream_sequence=7,
        deliveries=10,
        error="PermanentError: cannot route",
        message="{}",
    )

    assert summary(logged(data)) == "router: PermanentError: cannot route"


def test_an_unknown_type_has_an_empty_summary():
    row = LoggedEvent(
        seq=1,
        bus_subject="x",
        event=RawEvent(
            id="evt_1",
            source="/elsewhere",
            type="com.example.thing.happened.v1",
            time=ev.make_event(ev.JobStarted(job_id="j", kind="k", rule="r"), source="/s").time,
            correlationid="evt_1",
            data=msgspec.Raw(b'{"a": 1}'),
        ),
    )

    assert summary(row) == ""


def test_summaries_are_one_line():
    data = ev.JobFailed(job_id="job_1", kind="shell", rule="r", exit_code=1, output="a\nb\nc\n")

    assert "\n" not in summary(logged(data))


# ------------------------------------------------------ versions and replays


HOOK = ev.WebhookReceived(
    source="github", kind="github", event_type="push", repository="acme/app", branch="main"
)


def test_a_v2_job_request_names_the_kind_of_its_spec():
    data = ev.JobRequestedV2(
        job_id="job_1", rule="deploy", webhook_id="evt_1", spec=ev.ShellSpec(command=["./d.sh"])
    )

    assert summary(logged(data)) == "job_1 shell (rule deploy)"


def test_a_v1_job_request_from_an_old_log_reads_as_before():
    data = ev.JobRequested(
        job_id="job_1", kind="shell", rule="deploy", webhook_id="evt_1",
        shell=ev.ShellSpec(command=["./d.sh"]),
    )  # fmt: skip

    assert summary(logged(data)) == "job_1 shell (rule deploy)"


def test_a_replay_says_what_it_replays_who_asked_and_why():
    data = ev.WebhookReplayed(
        replay_of="evt_0", webhook=HOOK, requested_by="alice", reason="host was down"
    )

    assert summary(logged(data)) == (
        "replay of evt_0 by alice: host was down (github push acme/app@main)"
    )


def test_a_replay_without_who_or_why_leaves_them_out():
    data = ev.WebhookReplayed(replay_of="evt_0", webhook=HOOK)

    assert summary(logged(data)) == "replay of evt_0 (github push acme/app@main)"


def test_the_routing_record_of_a_replay_says_so():
    data = ev.WebhookRouted(
        source="github", event_type="push", webhook_id="evt_r", matched=["deploy"],
        replay_of="evt_0",
    )  # fmt: skip

    assert summary(logged(data)) == "matched: deploy (replay of evt_0)"


# ------------------------------------------------------------------------- JSON lines


def test_json_output_is_one_line_per_event_even_for_a_pretty_printed_payload():
    pretty = b'{\n  "ref": "refs/heads/main",\n  "n": [1,\n 2]\n}\n'
    data = ev.WebhookReceived(
        source="github", kind="github", event_type="push", payload=msgspec.Raw(pretty)
    )
    line = json_line(logged(data))

    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    decoded = msgspec.json.decode(line)
    assert decoded["data"]["payload"] == {"ref": "refs/heads/main", "n": [1, 2]}
    assert decoded["specversion"] == "1.0"


def test_partner_events_have_a_summary():
    created = ev.PartnerCreated(partner_id="ptn_1", name="Acme", token_id="tok_1")
    suspended = ev.PartnerStatusChanged(partner_id="ptn_1", status="SUSPENDED")
    deleted = ev.PartnerDeleted(partner_id="ptn_1")

    assert summary(logged(created)) == "ptn_1 Acme"
    assert summary(logged(suspended)) == "ptn_1 SUSPENDED"
    assert summary(logged(deleted)) == "ptn_1"
