"""``hookbus events`` summaries of job requests of either version and of replays."""

from __future__ import annotations

import msgspec

from hookbus_cli.events import summary
from hookbus_common import events as ev
from hookbus_common.eventlog import LoggedEvent
from hookbus_common.events import RawEvent


def logged(data: ev.EventData) -> LoggedEvent:
    """A row of the log as ``hookbus events`` reads it: the data still as JSON bytes."""
    event = ev.make_event(data, source="/hookbus/test")
    raw = msgspec.json.decode(ev.encode(event), type=RawEvent)
    return LoggedEvent(seq=1, bus_subject=event.bus_subject("hookbus"), event=raw)


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
