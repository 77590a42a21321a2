"""Multi-event rules without Postgres: the config, the wait's transitions (the same logic
as the arrival statement) and the handler over an in-memory store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from hookbus_cli.events import decisions, summary
from hookbus_common import events as ev
from hookbus_common.consumer import Incoming
from hookbus_common.errors import ConfigError
from hookbus_common.eventlog import LoggedEvent
from hookbus_common.events import RawEvent
from hookbus_router import config as router
from hookbus_router import waits
from hookbus_router.routing import make_handler, route
from hookbus_router.rules import RuleSet
from hookbus_router.waits import Arrival, MemoryStore, parse_window, transition

T0 = datetime(2026, 1, 1, tzinfo=UTC)

SOURCES = (
    '[sources.github]\nkind = "github"\nsecrets = [{ value = "s" }]\n'
    '[sources.ci]\nkind = "generic"\nsecrets = [{ value = "s" }]\n'
)

RULE = """
[[rules]]
name = "deploy-green"
key = "{{ event.commit }}"
window = "1h"
actions = [{ kind = "shell", command = ["./deploy.sh", "{{ events[0].payload.check_suite.conclusion }}",
             "{{ events[1].payload.pushed }}", "{{ event.type }}"] }]
[[rules.events]]
source = "github"
event = "check_suite"
when = { path = "payload.check_suite.conclusion", equals = "success" }
[[rules.events]]
source = "image-push"
"""


def load(tmp_path: Path, rules: str) -> router.RouterConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(SOURCES + rules)
    return router.load(path, {})


def check_suite(commit: str = "abc", conclusion: str = "success", **kw) -> ev.Event:
    body = {"check_suite": {"conclusion": conclusion}}
    data = ev.WebhookReceived(
        source="github",
        kind="github",
        event_type="check_suite",
        commit=commit,
        payload=msgspec.Raw(msgspec.json.encode(body)),
    )
    return ev.make_event(data, source="/hookbus/receiver/github", **kw)


def image_push(commit: str = "abc", **kw) -> ev.Event:
    data = ev.WebhookReceived(
        source="image-push",
        kind="image",
        event_type="push",
        commit=commit,
        payload=msgspec.Raw(b'{"pushed": "ghcr.io/acme/app:abc"}'),
    )
    return ev.make_event(data, source="/hookbus/receiver/image-push", **kw)


# ---------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("1.5h", 5400), (45, 45)],
)
def test_windows_are_durations(text, seconds):
    assert parse_window(text, "w") == seconds


@pytest.mark.parametrize("bad", ["1 week", "h", "-1h", "0s", 0, True])
def test_a_window_that_is_no_duration_is_refused(bad):
    with pytest.raises(ConfigError, match=r"^w: "):
        parse_window(bad, "w")


def test_a_multi_event_rule_loads_with_its_parts(tmp_path):
    config = load(tmp_path, RULE)
    compiled = RuleSet.build(config.rules).rules[0]

    assert compiled.multi is not None
    assert len(compiled.multi.parts) == 2
    assert compiled.multi.window == 3600


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('window = "1h"\n', ""), r'rules\[0\] "deploy-green": window: .* needs a window'),
        (('key = "{{ event.commit }}"\n', ""), r'"deploy-green": key: .* needs a key'),
        (('window = "1h"\n', 'window = "soon"\n'), r"window: 'soon' is not a duration"),
        (('[[rules.events]]\nsource = "image-push"\n', ""), r"needs two or more"),
        (('window = "1h"\n', 'window = "1h"\nsource = "github"\n'), r"source: .* in each"),
        (('source = "image-push"', 'source = "nope"'), r"events\[1\]\.source: no source"),
        (('equals = "success"', 'equal = "success"'), r"events\[0\]\.when: unknown operator"),
        (('key = "{{ event.commit }}"', 'key = "{{ event.commit "'), r"key: template error"),
    ],
)
def test_a_bad_multi_event_rule_is_refused_naming_the_key(tmp_path, change, message):
    old, new = change
    assert old in RULE
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, RULE.replace(old, new))


def test_a_key_without_events_is_refused(tmp_path):
    text = '[[rules]]\nname = "r"\nkey = "x"\nactions = [{ kind = "shell", command = ["x"] }]\n'
    with pytest.raises(ConfigError, match=r'rules\[0\] "r": key: only a rule over several'):
        load(tmp_path, text)


# -------------------------------------------------------------------- transitions


def arrival(event_id: str, part: int, now: datetime = T0, of: int = 2) -> Arrival:
    return Arrival(rule="r", key="k", part=part, of=of, event_id=event_id, now=now, window=3600.0)


def run(arrivals: list[Arrival]) -> list[str]:
    row = None
    verdicts = []
    for a in arrivals:
        new, verdict = transition(row, a)
        row = new or row
        verdicts.append(verdict)
    return verdicts


def test_two_events_in_either_order_fire_once_on_the_second():
    assert run([arrival("a", 0), arrival("b", 1)]) == ["waiting", "fired"]
    assert run([arrival("b", 1), arrival("a", 0)]) == ["waiting", "fired"]


def test_one_event_alone_or_two_of_one_part_never_fire():
    assert run([arrival("a", 0)]) == ["waiting"]
    assert run([arrival("a", 0), arrival("a2", 0), arrival("a3", 0)]) == ["waiting"] * 3


def test_a_redelivery_changes_nothing_and_only_the_completing_event_fires_again():
    # The first part's redelivery is a duplicate; the completing event's fires again
    # (with the same derived ids, which the log refuses as duplicates).
    assert run([arrival("a", 0), arrival("a", 0), arrival("b", 1), arrival("a", 0)]) == [
        "waiting",
        "duplicate",
        "fired",
        "duplicate",
    ]
    assert run([arrival("a", 0), arrival("b", 1), arrival("b", 1)]) == ["waiting", "fired", "fired"]


def test_a_firing_names_its_events_in_part_order_and_keeps_the_first_of_a_part():
    row, _ = transition(None, arrival("b", 1))
    row, _ = transition(row, arrival("b2", 1))
    row, verdict = transition(row, arrival("a", 0))

    assert verdict == "fired"
    assert row is not None
    assert not row.open
    assert waits.Outcome(verdict, row).events == ["a", "b"]
    assert row.fired_by == "a"


def test_a_passed_window_is_expired_before_the_next_event_opens_a_new_wait():
    row, _ = transition(None, arrival("a", 0))
    late = T0 + timedelta(hours=1)

    assert transition(row, arrival("b", 1, now=late)) == (None, "expired")
    assert transition(row, arrival("b", 1, now=late - timedelta(seconds=1)))[1] == "fired"


def test_after_a_firing_the_next_events_wait_again():
    assert run([arrival("a", 0), arrival("b", 1), arrival("c", 0), arrival("d", 1)]) == [
        "waiting",
        "fired",
        "waiting",
        "fired",
    ]


def test_three_parts_fire_on_the_last_whatever_the_order():
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        got = run([arrival(f"e{p}", p, of=3) for p in order])
        assert got == ["waiting", "waiting", "fired"]


def test_the_verdict_of_a_returned_row_agrees_with_the_transition():
    row, _ = transition(None, arrival("a", 0))
    assert row is not None
    assert waits.verdict_of(row, "a", applied=True) == "waiting"
    assert waits.verdict_of(row, "a", applied=False) == "duplicate"
    assert waits.verdict_of(row, "z", applied=False) == "expired"
    fired, _ = transition(row, arrival("b", 1))
    assert fired is not None
    assert waits.verdict_of(fired, "b", applied=True) == "fired"
    assert waits.verdict_of(fired, "b", applied=False) == "fired"


def test_an_expiry_record_names_what_arrived_and_what_is_missing():
    row, _ = transition(None, arrival("a", 0))
    assert row is not None
    first = waits.expired_event(row)
    again = waits.expired_event(row)

    assert first.id == again.id
    assert first.data.arrived == {"0": "a"}
    assert first.data.missing == [1]
    assert first.causationid == "a"


# ---------------------------------------------------------------------- the handler


def handle(handler, event: ev.Event) -> list[ev.Event]:
    async def collect() -> list[ev.Event]:
        incoming = Incoming(event=event, subject="s", deliveries=1, _msg=None)  # type: ignore[arg-type]
        return [e async for out in handler(incoming) for e in out]

    return asyncio.run(collect())


def routed_of(events: list[ev.Event]) -> ev.WebhookRouted:
    data = events[0].data
    assert isinstance(data, ev.WebhookRouted)
    return data


@pytest.mark.parametrize("order", ["ci-first", "push-first"])
def test_the_handler_fires_once_both_events_arrived_in_either_order(tmp_path, order):
    config = load(tmp_path, RULE)
    ci, push = check_suite(), image_push()
    store = MemoryStore({ci.id: ci, push.id: push})
    handler = make_handler(config.rules, store=store, clock=lambda: T0)
    first, second = (ci, push) if order == "ci-first" else (push, ci)

    out1 = handle(handler, first)
    out2 = handle(handler, second)

    assert len(out1) == 1  # the record only: the event waits
    assert routed_of(out1).matched == []
    assert routed_of(out1).evaluations[0].reason.startswith("waiting: events[")
    assert routed_of(out2).matched == ["deploy-green"]
    assert routed_of(out2).joined == [
        ev.JoinedEvents(rule="deploy-green", key="abc", events=[ci.id, push.id])
    ]
    [job] = out2[1:]
    assert isinstance(job.data, ev.JobRequestedV2)
    # The last event is `event`/`payload`; all of them are under `events`.
    assert job.data.spec.command == [
        "./deploy.sh",
        "success",
        "ghcr.io/acme/app:abc",
        second.data.event_type,
    ]
    assert job.data.webhook_id == second.id
    assert job.causationid == second.id
    # Redelivered, the completing event derives the same ids (the log refuses them).
    assert [e.id for e in handle(handler, second)] == [e.id for e in out2]
    assert handle(handler, first)[0].data.matched == []


def test_events_of_other_keys_or_failed_conditions_do_not_join(tmp_path):
    config = load(tmp_path, RULE)
    handler = make_handler(config.rules, store=MemoryStore(), clock=lambda: T0)

    assert handle(handler, check_suite("abc", "failure")) == []
    out = handle(handler, image_push("abc"))
    assert routed_of(out).joined == []
    assert len(out) == 1
    out = handle(handler, check_suite("def"))
    assert routed_of(out).joined == []
    assert len(out) == 1


def test_an_event_of_no_part_records_nothing(tmp_path):
    config = load(tmp_path, RULE)
    handler = make_handler(config.rules, store=MemoryStore(), clock=lambda: T0)
    other = ev.make_event(
        ev.WebhookReceived(source="github", kind="github", event_type="push"), source="/t"
    )

    assert handle(handler, other) == []


def test_without_a_store_a_rules_test_shows_which_part_an_event_is(tmp_path):
    config = load(tmp_path, RULE)
    [result] = routed_of(route(config.rules, image_push())).evaluations

    assert not result.matched
    assert result.reason == "events[1] of 2 matched: waits for the others with key 'abc'"
    [result] = routed_of(route(config.rules, check_suite(conclusion="failure"))).evaluations
    assert result.reason.startswith("no event of the rule matched: events[0]: ")
    assert result.failed == "events[0].when"


# --------------------------------------------------------------- hookbus events lines


def logged(data: ev.EventData) -> LoggedEvent:
    event = ev.make_event(data, source="/hookbus/test")
    raw = msgspec.json.decode(ev.encode(event), type=RawEvent)
    return LoggedEvent(seq=1, bus_subject=event.bus_subject("hookbus"), event=raw)


def test_hookbus_events_says_what_expired_and_what_a_firing_joined():
    expired = ev.RuleWaitExpired(rule="deploy-green", key="abc", arrived={"0": "e0"}, missing=[1])
    routed = ev.WebhookRouted(
        source="image-push",
        event_type="push",
        webhook_id="e1",
        matched=["deploy-green"],
        joined=[ev.JoinedEvents(rule="deploy-green", key="abc", events=["e0", "e1"])],
    )

    assert summary(logged(expired)) == "deploy-green key 'abc': window passed; missing events[1]"
    assert decisions(logged(routed)) == ["= deploy-green: key 'abc' joined e0, e1"]
    ended = ev.RuleSequenceEnded(
        rule="release", webhook_id="e", outcome="stopped", index=1, of=3, reason="exit 3"
    )
    assert summary(logged(ended)) == "release stopped at action 2 of 3: exit 3"
