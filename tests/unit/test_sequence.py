"""Rules whose actions run in sequence, without NATS or Postgres: the handler requests
the first action, the next on each success, and ends the sequence at a failure."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.consumer import Incoming
from hookbus_common.errors import ConfigError
from hookbus_router import config as router
from hookbus_router.routing import make_handler
from hookbus_router.waits import MemoryStore

RULES = """
[[rules]]
name = "release"
sequence = true
actions = [
  { kind = "shell", command = ["./build.sh", "{{ payload.ref }}"] },
  { kind = "shell", command = ["./test.sh", "{{ event.id }}"] },
  { kind = "shell", command = ["./ship.sh"] },
]
"""


def load(tmp_path: Path, text: str = RULES) -> router.RouterConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return router.load(path, {})


def webhook() -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source="github",
        kind="github",
        event_type="push",
        payload=msgspec.Raw(b'{"ref": "refs/heads/main"}'),
    )
    return ev.make_event(data, source="/hookbus/receiver/github")


def handle(handler, event: ev.Event) -> list[ev.Event]:
    async def collect() -> list[ev.Event]:
        incoming = Incoming(event=event, subject="s", deliveries=1, _msg=None)  # type: ignore[arg-type]
        return [e async for out in handler(incoming) for e in out]

    return asyncio.run(collect())


def outcome(request: ev.Event, cls: type = ev.JobSucceeded, **kw) -> ev.Event:
    req = request.data
    data = cls(job_id=req.job_id, kind=req.kind, rule=req.rule, **kw)
    return ev.make_event(data, source="/hookbus/executor", cause=request)


class Harness:
    def __init__(self, tmp_path: Path, text: str = RULES) -> None:
        self.config = load(tmp_path, text)
        self.store = MemoryStore()
        self.handler = make_handler(self.config.rules, store=self.store)

    def __call__(self, event: ev.Event) -> list[ev.Event]:
        self.store.known[event.id] = event
        out = handle(self.handler, event)
        for e in out:
            self.store.known[e.id] = e
        return out


def requests(events: list[ev.Event]) -> list[ev.Event]:
    return [e for e in events if isinstance(e.data, ev.JobRequestedV2)]


def test_a_sequence_requests_its_first_action_only(tmp_path):
    run = Harness(tmp_path)
    out = run(webhook())

    [req] = requests(out)
    assert req.data.spec.command == ["./build.sh", "refs/heads/main"]
    assert req.data.sequence == ev.SequenceStep(
        rule="release", index=0, of=3, config_version=out[0].data.config_version
    )


def test_each_success_requests_the_next_with_the_ids_of_a_rule_run_at_once(tmp_path):
    run = Harness(tmp_path)
    hook = webhook()
    plain = load(tmp_path, RULES.replace("sequence = true\n", ""))
    at_once = requests(handle(make_handler(plain.rules), hook))

    [first] = requests(run(hook))
    [second] = requests(run(outcome(first)))
    [third] = requests(run(outcome(second)))
    ended = run(outcome(third))

    assert [r.id for r in (first, second, third)] == [r.id for r in at_once]
    assert [r.data.job_id for r in (first, second, third)] == [r.data.job_id for r in at_once]
    assert second.data.spec.command == ["./test.sh", hook.id]
    assert second.causationid != hook.id
    assert second.correlationid == hook.correlationid
    assert [r.data.sequence.index for r in (first, second, third)] == [0, 1, 2]
    [end] = ended
    assert end.data == ev.RuleSequenceEnded(
        rule="release",
        webhook_id=hook.id,
        outcome="completed",
        index=2,
        of=3,
        job_id=third.data.job_id,
    )


def test_a_failure_stops_the_sequence_and_says_why(tmp_path):
    run = Harness(tmp_path)
    [first] = requests(run(webhook()))
    [second] = requests(run(outcome(first)))
    failed = outcome(second, ev.JobFailed, exit_code=3)

    out = run(failed)

    assert requests(out) == []
    [end] = out
    assert isinstance(end.data, ev.RuleSequenceEnded)
    assert (end.data.outcome, end.data.index, end.data.of) == ("stopped", 1, 3)
    assert end.data.reason == "action exited with code 3"
    assert end.causationid == failed.id
    # A redelivered outcome derives the same record.
    assert [e.id for e in run(failed)] == [end.id]


def test_an_interruption_that_is_retried_waits_for_the_next_attempt(tmp_path):
    run = Harness(tmp_path)
    [first] = requests(run(webhook()))

    assert run(outcome(first, ev.JobInterrupted, retrying=True)) == []
    [end] = run(outcome(first, ev.JobInterrupted, reason="executor_lost"))
    assert end.data.outcome == "stopped"
    assert "interrupted (executor_lost)" in (end.data.reason or "")


def test_a_skipped_job_stops_the_sequence(tmp_path):
    run = Harness(tmp_path)
    [first] = requests(run(webhook()))

    [end] = run(outcome(first, ev.JobSkipped, superseded_by="job_newer"))

    assert (end.data.outcome, end.data.index) == ("stopped", 0)
    assert end.data.reason == "action shell was skipped (superseded)"


def test_a_failure_that_is_retried_waits_for_the_last_attempt(tmp_path):
    run = Harness(tmp_path)
    [first] = requests(run(webhook()))

    assert run(outcome(first, ev.JobFailed, exit_code=1, retrying=True)) == []
    [second] = requests(run(outcome(first)))
    assert second.data.sequence.index == 1


def test_outcomes_of_jobs_in_no_sequence_cause_nothing(tmp_path):
    run = Harness(tmp_path, RULES.replace("sequence = true\n", ""))
    reqs = requests(run(webhook()))

    assert len(reqs) == 3
    assert all(r.data.sequence is None for r in reqs)
    assert run(outcome(reqs[0])) == []
    assert handle(make_handler(run.config.rules), outcome(reqs[0])) == []


def test_a_sequence_of_a_webhook_action_is_refused(tmp_path):
    text = RULES.replace(
        '{ kind = "shell", command = ["./ship.sh"] }', '{ kind = "webhook", url = "https://x" }'
    )
    with pytest.raises(ConfigError, match=r'rules\[0\] "release": actions\[2\]: .* job actions'):
        load(tmp_path, text)
