"""The CLI's view of routing decisions: ``hookbus events --chain`` lines for each rule's
decision, and ``hookbus rules test``'s comparison and times (without a database)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from hookbus_cli.events import decisions, summary
from hookbus_cli.rules import decide_event, parse_time
from hookbus_common import events as ev
from hookbus_common.eventlog import LoggedEvent
from hookbus_common.events import RawEvent
from hookbus_router.config import Rule, ShellAction
from hookbus_router.rules import RuleSet


def logged(data: ev.EventData) -> LoggedEvent:
    event = ev.make_event(data, source="/hookbus/test")
    raw = msgspec.json.decode(ev.encode(event), type=RawEvent)
    return LoggedEvent(seq=1, bus_subject=event.bus_subject("hookbus"), event=raw)


ROUTED = ev.WebhookRouted(
    source="github",
    event_type="push",
    webhook_id="evt_1",
    matched=["deploy"],
    config_version="0123456789ab",
    evaluations=[
        ev.RuleEvaluation(rule="deploy", matched=True, reason="matched"),
        ev.RuleEvaluation(
            rule="release",
            matched=False,
            reason="when.all[1]: payload.ref glob did not hold",
            failed="when.all[1]",
            path="payload.ref",
            operator="glob",
            saw='"refs/heads/main"',
        ),
        ev.RuleEvaluation(rule="old", matched=False, reason="branch: 'dev' does not match 'main'"),
    ],
    skipped=[
        ev.ActionSkipped(
            rule="deploy", action=1, field="actions[1].url", reason="undefined: no 'room'"
        )
    ],
)


def test_the_chain_shows_each_rules_decision_and_skipped_actions():
    assert decisions(logged(ROUTED)) == [
        "+ deploy: matched",
        '- release: when.all[1]: payload.ref glob; saw "refs/heads/main"',
        "- old: branch: 'dev' does not match 'main'",
        "! deploy: actions[1] not run: actions[1].url: undefined: no 'room'",
    ]


def test_the_routing_summary_names_the_rules_version():
    assert summary(logged(ROUTED)) == "matched: deploy (rules 0123456789ab)"


def test_other_events_have_no_decisions():
    hook = ev.WebhookReceived(source="github", kind="github", event_type="push")

    assert decisions(logged(hook)) == []


def test_a_comparison_names_the_rules_decided_differently():
    hook = ev.make_event(
        ev.WebhookReceived(source="github", kind="github", event_type="push", branch="dev"),
        source="/hookbus/receiver",
    )
    shell = [ShellAction(command=["x"])]
    new = RuleSet.build([Rule(name="a", actions=shell), Rule(name="b", actions=shell)])
    old = RuleSet.build(
        [Rule(name="a", branch="main", actions=shell), Rule(name="c", actions=shell)]
    )

    tested = decide_event(new, hook, old)

    assert tested.changed == ["a", "b", "c"]
    assert decide_event(new, hook, new).changed == []


NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        ("1d12h", datetime(2026, 11, 21, 0, 0, tzinfo=UTC)),
        ("2026-11-22T07:00:00Z", datetime(2026, 11, 22, 7, 0, tzinfo=UTC)),
        ("2026-11-22", datetime(2026, 11, 22, tzinfo=UTC)),
    ],
)
def test_parse_time(text, expected):
    assert parse_time(text, NOW) == expected


def test_a_bad_time_says_what_to_give():
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday", NOW)


def test_config_check_shows_a_bad_condition_naming_the_rule_and_the_part(tmp_path, monkeypatch):
    from hookbus_cli.main import main

    (tmp_path / "hookbus.toml").write_text(
        '[[rules]]\nname = "deploy-prod"\n'
        'when = { any = [{ path = "payload.ref", equals = "x" }, { path = "payload.a", contain = 1 }] }\n'
        'actions = [{ kind = "shell", command = ["true"] }]\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HOOKBUS_CONFIG", raising=False)

    with pytest.raises(SystemExit) as info:
        main(["config", "check"])

    assert str(info.value) == (
        'hookbus: config error: hookbus.toml: rules[0] "deploy-prod": when.any[1]: unknown'
        ' operator "contain" (did you mean "contains"?)'
    )
