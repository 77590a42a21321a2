"""``hookbus tail`` without servers: which events it shows, how each line reads, and where
its consumer starts."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from nats.js.api import DeliverPolicy

from hookbus_cli.main import parser
from hookbus_cli.tail import Filter, cmd_tail, consumer_config, line
from hookbus_common import events as ev
from hookbus_common.events import RawEvent


def _raw(event: ev.Event) -> RawEvent:
    return msgspec.json.decode(ev.encode(event), type=RawEvent)


def _webhook(source: str = "github", tenant: str = "acme") -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source=source, kind="github", event_type="push", repository="acme/app", branch="main"
    )
    return ev.make_event(data, source=f"/hookbus/receiver/{source}", tenant=tenant)


def _job_of(cause: ev.Event) -> ev.Event[ev.JobStarted]:
    return ev.make_event(
        ev.JobStarted(job_id="job_1", kind="shell", rule="r"), source="/x", cause=cause
    )


def test_no_filter_shows_everything():
    keep = Filter()

    assert keep(_raw(_webhook()))
    assert keep(_raw(_job_of(_webhook())))


def test_type_is_a_glob_of_the_event_type_as_people_write_it():
    hook = _webhook()

    assert Filter(type="job.*")(_raw(_job_of(hook)))
    assert not Filter(type="job.*")(_raw(hook))
    assert Filter(type="webhook.received")(_raw(hook))
    assert not Filter(type="job.succeeded")(_raw(_job_of(hook)))


def test_tenant_is_exact():
    assert Filter(tenant="acme")(_raw(_webhook(tenant="acme")))
    assert not Filter(tenant="acme")(_raw(_webhook(tenant="globex")))


def test_source_keeps_its_webhooks_and_the_events_of_their_chains():
    keep = Filter(source="github")
    ours, theirs = _webhook("github"), _webhook("gitlab")

    shown = [keep(_raw(e)) for e in (ours, theirs, _job_of(ours), _job_of(theirs))]

    assert shown == [True, False, True, False]


def test_source_follows_a_replays_chain_by_the_webhook_it_replays():
    keep = Filter(source="github")
    hook = _webhook("github")
    replay = ev.make_event(
        ev.WebhookReplayed(replay_of=hook.id, webhook=hook.data), source="/hookbus/cli/replay"
    )

    assert keep(_raw(replay))
    assert keep(_raw(_job_of(replay)))


def test_source_does_not_show_a_chain_whose_webhook_it_never_saw():
    assert not Filter(source="github")(_raw(_job_of(_webhook("github"))))


def test_a_line_reads_like_hookbus_events_and_marks_a_replay():
    hook = ev.make_event(
        ev.WebhookReceived(source="github", kind="github", event_type="push",
                           repository="acme/app", branch="main"),
        source="/hookbus/receiver/github", id="evt_1",
    )  # fmt: skip
    hook = msgspec.structs.replace(hook, time=datetime(2026, 11, 22, 7, 51, 6, 245000, tzinfo=UTC))
    raw = _raw(hook)

    assert line(42, "hookbus.webhook.received.github.push", raw) == (
        "     42 07:51:06.245 webhook.received.v1          evt_1  github push acme/app@main"
    )
    assert line(43, "s", raw, replay="rpl_9").endswith("acme/app@main  [replay rpl_9]")


def test_the_consumer_starts_at_new_messages_by_default():
    assert consumer_config(None, None).deliver_policy == DeliverPolicy.NEW


def test_the_consumer_can_start_at_a_sequence_or_a_time():
    when = datetime(2026, 11, 22, 7, tzinfo=UTC)

    by_seq = consumer_config(None, 17)
    by_time = consumer_config(when, None)

    assert (by_seq.deliver_policy, by_seq.opt_start_seq) == (DeliverPolicy.BY_START_SEQUENCE, 17)
    assert (by_time.deliver_policy, by_time.opt_start_time) == (DeliverPolicy.BY_START_TIME, when)


def test_tail_options_parse():
    args = parser().parse_args(
        ["tail", "--type", "job.*", "--source", "github", "--tenant", "acme", "--json",
         "--from-seq", "5", "--limit", "3", "--subject", "hookbus.job.>"]
    )  # fmt: skip

    assert args.func is cmd_tail
    assert (args.type, args.source, args.tenant, args.json) == ("job.*", "github", "acme", True)
    assert (args.from_seq, args.limit, args.subject) == (5, 3, "hookbus.job.>")


@pytest.mark.parametrize(
    "argv",
    [
        ["tail", "--since", "2h", "--from-seq", "3"],
        ["tail", "--from-seq", "0"],
        ["tail", "--limit", "0"],
    ],
)
def test_conflicting_or_bad_starts_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2


def test_a_bad_since_is_refused_before_nats_is_reached(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    assert cmd_tail(parser().parse_args(["tail", "--since", "soon"])) == 2
    assert capsys.readouterr().err.startswith("hookbus: --since: 'soon' is not a time")
