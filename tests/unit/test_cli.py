"""The ``hookbus`` command: one-line event summaries and the argument parser."""

from __future__ import annotations

import msgspec
import pytest

from hookbus_cli.config import service_settings
from hookbus_cli.configcheck import cmd_config_check
from hookbus_cli.events import cmd_events, json_line, summary
from hookbus_cli.main import parser
from hookbus_cli.serve import SERVICES, cmd_serve
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


# ---------------------------------------------------------------------------- parser


def test_up_is_accepted_with_a_default_nats_port():
    args = parser().parse_args(["up"])

    assert args.command == "up"
    assert isinstance(args.nats_port, int)
    assert callable(args.func)


def test_up_takes_a_nats_port():
    assert parser().parse_args(["up", "--nats-port", "4333"]).nats_port == 4333


@pytest.mark.parametrize("service", SERVICES)
def test_serve_accepts_each_service(service):
    args = parser().parse_args(["serve", service])

    assert args.service == service
    assert args.func is cmd_serve


def test_every_service_can_be_served():
    assert set(SERVICES) == {"receiver", "router", "executor", "dispatcher"}


def test_serve_refuses_an_unknown_service(capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["serve", "nosuch"])

    assert info.value.code == 2
    assert "nosuch" in capsys.readouterr().err


def test_events_chain_takes_an_id():
    args = parser().parse_args(["events", "--chain", "evt_123"])

    assert args.chain == "evt_123"
    assert args.func is cmd_events
    assert args.json is False


def test_events_without_chain_lists_recent():
    args = parser().parse_args(["events", "--limit", "5", "--type", "io.hookbus.job.", "--json"])

    assert args.chain is None
    assert args.limit == 5
    assert args.type == "io.hookbus.job."
    assert args.json is True


def test_migrate_is_accepted():
    args = parser().parse_args(["migrate"])

    assert args.command == "migrate"
    assert callable(args.func)


def test_config_check_is_accepted():
    args = parser().parse_args(["config", "check"])

    assert args.func is cmd_config_check


def test_global_config_option_comes_before_the_command():
    args = parser().parse_args(["--config", "/etc/hookbus.toml", "config", "check"])

    assert args.config == "/etc/hookbus.toml"


@pytest.mark.parametrize("argv", [[], ["config"], ["serve"], ["nosuch"]])
def test_incomplete_or_unknown_commands_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)

    assert info.value.code == 2
    assert capsys.readouterr().err


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


# ------------------------------------------------------- options before or after the command


@pytest.mark.parametrize(
    "argv",
    [
        ["--data-dir", "state", "up"],
        ["up", "--data-dir", "state"],
        ["up", "--data-dir=state", "--nats-port", "4333"],
    ],
)
def test_data_dir_is_accepted_before_or_after_the_command(argv):
    args = parser().parse_args(argv)

    assert args.command == "up"
    assert args.data_dir == "state"


def test_data_dir_defaults_to_dot_hookbus_wherever_it_could_have_been_given():
    assert parser().parse_args(["up"]).data_dir == ".hookbus"
    assert parser().parse_args(["events"]).data_dir == ".hookbus"


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "check", "--config", "/etc/hookbus.toml"],
        ["events", "-c", "/etc/hookbus.toml", "--limit", "3"],
        ["partners", "list", "--config", "/etc/hookbus.toml"],
        ["serve", "router", "--config", "/etc/hookbus.toml"],
    ],
)
def test_config_is_accepted_after_the_command_too(argv):
    assert parser().parse_args(argv).config == "/etc/hookbus.toml"


def test_an_option_given_before_the_command_is_kept_when_not_repeated_after_it():
    args = parser().parse_args(["--config", "a.toml", "--data-dir", "d", "events", "--limit", "3"])

    assert (args.config, args.data_dir) == ("a.toml", "d")


def test_the_option_after_the_command_wins_over_the_one_before():
    args = parser().parse_args(["--data-dir", "outer", "up", "--data-dir", "inner"])

    assert args.data_dir == "inner"


def test_serve_checks_only_the_served_services_own_config(tmp_path, monkeypatch, capsys):
    """`hookbus serve router` starts without the receiver's secret variables, as
    `hookbus-router` does; `hookbus serve receiver` stops naming the missing one."""
    config = tmp_path / "hookbus.toml"
    config.write_text(
        '[sources.gh]\nkind = "github"\nsecrets = [{ env = "HOOKBUS_TEST_UNSET_SECRET" }]\n'
    )
    monkeypatch.delenv("HOOKBUS_TEST_UNSET_SECRET", raising=False)
    args = parser().parse_args(["--config", str(config), "serve", "router"])

    assert service_settings(args, "router").prefix == "hookbus"
    with pytest.raises(SystemExit) as info:
        service_settings(args, "receiver")
    assert "HOOKBUS_TEST_UNSET_SECRET" in str(info.value.code)
    assert "sources.gh" in str(info.value.code)
