"""``hookbus replay`` without servers: times and globs as people write them, the SQL the
selection becomes, the pacing of batches, progress output, and the command's options."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from hookbus_cli import replay, replayrun, replayselect
from hookbus_cli.main import parser
from hookbus_cli.replay import cmd_replay
from hookbus_cli.replayrun import Pacer, Progress, batch_size
from hookbus_cli.replayselect import batch_query, count_query, like, parse_time, type_glob
from hookbus_cli.replaystore import ReplayJob
from hookbus_common import events as ev
from hookbus_common.eventlog import LoggedEvent
from hookbus_common.events import RawEvent, ReplaySelection

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)

# ------------------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1.5h", timedelta(minutes=90)),
        (" 2h ", timedelta(hours=2)),
    ],
)
def test_a_relative_time_is_that_long_before_now(text, ago):
    assert parse_time(text, NOW) == NOW - ago


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("2026-11-22T07:51:06Z", datetime(2026, 11, 22, 7, 51, 6, tzinfo=UTC)),
        ("2026-11-22T09:51:06+02:00", datetime(2026, 11, 22, 7, 51, 6, tzinfo=UTC)),
        # No offset: UTC, as `hookbus events` shows times.
        ("2026-11-22T07:51:06", datetime(2026, 11, 22, 7, 51, 6, tzinfo=UTC)),
        ("2026-11-22 07:51", datetime(2026, 11, 22, 7, 51, tzinfo=UTC)),
        ("2026-11-22", datetime(2026, 11, 22, tzinfo=UTC)),
    ],
)
def test_an_iso_time_or_date_is_read_in_utc(text, when):
    got = parse_time(text, NOW)

    assert got == when
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["", "yesterday", "2h ago", "h", "12", "-2h", "2026-13-01", "2x"])
def test_anything_else_is_refused_with_what_to_write(text):
    with pytest.raises(ValueError, match="is not a time: give an ISO 8601 time"):
        parse_time(text, NOW)


def test_a_selection_refuses_an_until_that_is_not_after_its_since():
    with pytest.raises(ValueError, match=r"--until .* is not after --since"):
        replayselect.selection(now=NOW, since="1h", until="2h")


def test_a_selection_from_options_keeps_what_was_given():
    sel = replayselect.selection(
        now=NOW, since="2h", source="github", type="job.*", failed_jobs=True, tenant=""
    )

    assert sel == ReplaySelection(
        since=NOW - timedelta(hours=2), source="github", type="job.*", failed_jobs=True
    )


# ------------------------------------------------------------------------- globs


@pytest.mark.parametrize(
    ("pattern", "full"),
    [
        ("job.*", "io.hookbus.job.*"),
        ("job.failed", "io.hookbus.job.failed.v*"),
        ("job.requested.v2", "io.hookbus.job.requested.v2"),
        ("io.hookbus.webhook.*", "io.hookbus.webhook.*"),
        ("io.example.thing", "io.example.thing.v*"),
        ("*", "io.hookbus.*"),
    ],
)
def test_a_type_pattern_is_made_whole(pattern, full):
    assert type_glob(pattern) == full


@pytest.mark.parametrize(
    ("glob", "pattern"),
    [
        ("io.hookbus.job.*", "io.hookbus.job.%"),
        ("push?", "push_"),
        ("pull_request", "pull\\_request"),
        ("100%", "100\\%"),
        ("a\\b", "a\\\\b"),
    ],
)
def test_a_glob_becomes_a_like_pattern_with_sqls_wildcards_escaped(glob, pattern):
    assert like(glob) == pattern


# ---------------------------------------------------------------------- the SQL


def test_everything_is_every_event_up_to_the_snapshot():
    sql, args = count_query(ReplaySelection(), "republish", upto=90)

    assert sql == "SELECT count(*) FROM events WHERE seq <= $1"
    assert args == [90]


def test_a_redrive_takes_webhooks_as_received_only():
    sql, args = count_query(ReplaySelection(), "redrive", upto=90)

    assert sql == "SELECT count(*) FROM events WHERE seq <= $1 AND type = $2"
    assert args == [90, ev.WebhookReceived.TYPE]


def test_each_option_adds_one_condition_with_its_value_as_a_parameter():
    since = datetime(2026, 11, 22, 7, tzinfo=UTC)
    until = datetime(2026, 11, 22, 8, tzinfo=UTC)
    sel = ReplaySelection(
        since=since, until=until, type="job.*", tenant="acme", correlation="evt_1"
    )

    sql, args = count_query(sel, "republish", upto=5)

    assert sql == (
        "SELECT count(*) FROM events WHERE seq <= $1 AND type LIKE $2 AND time >= $3"
        " AND time < $4 AND tenant = $5 AND correlation_id = $6"
    )
    assert args == [5, "io.hookbus.job.%", since, until, "acme", "evt_1"]


def test_source_and_event_select_chains_by_the_webhook_that_started_them():
    sql, args = count_query(ReplaySelection(source="github", event="pull_*"), "republish", upto=5)

    assert sql == (
        "SELECT count(*) FROM events WHERE seq <= $1 AND EXISTS (SELECT 1 FROM events r"
        " WHERE r.type IN ($2, $3)"
        " AND coalesce(r.data->'webhook'->>'source', r.data->>'source') = $4"
        " AND coalesce(r.data->'webhook'->>'event_type', r.data->>'event_type') LIKE $5"
        " AND r.id = events.correlation_id)"
    )
    assert args == [5, ev.WebhookReceived.TYPE, ev.WebhookReplayed.TYPE, "github", "pull\\_%"]


def test_outcomes_select_chains_holding_either_a_failed_job_or_a_dead_delivery():
    sel = ReplaySelection(failed_jobs=True, dead_deliveries=True)

    sql, args = count_query(sel, "redrive", upto=5)

    assert sql.endswith(
        "EXISTS (SELECT 1 FROM events o WHERE o.correlation_id = events.correlation_id AND"
        " ((o.type = $3 OR (o.type = $4 AND NOT coalesce((o.data->>'retrying')::boolean, false)))"
        " OR (o.type = $5)))"
    )
    assert args == [
        5, ev.WebhookReceived.TYPE, ev.JobFailed.TYPE, ev.JobInterrupted.TYPE, ev.DeliveryDead.TYPE
    ]  # fmt: skip


def test_only_dead_deliveries():
    sql, args = count_query(ReplaySelection(dead_deliveries=True), "republish", upto=5)

    assert sql.endswith("o.correlation_id = events.correlation_id AND ((o.type = $2)))")
    assert args == [5, ev.DeliveryDead.TYPE]


def test_a_batch_goes_on_after_the_cursor_in_log_order():
    sql, args = batch_query(ReplaySelection(tenant="acme"), "redrive", after=10, upto=99, limit=7)

    assert sql.startswith("SELECT seq, id, type, source, subject, bus_subject, tenant,")
    assert sql.endswith(
        "FROM events WHERE seq > $1 AND seq <= $2 AND type = $3 AND tenant = $4"
        " ORDER BY seq LIMIT $5"
    )
    assert args == [10, 99, ev.WebhookReceived.TYPE, "acme", 7]


def test_no_value_is_ever_written_into_the_sql():
    sel = ReplaySelection(source="x'; DROP TABLE events; --", tenant="t'", event="e'", type="y'")

    sql, _ = batch_query(sel, "redrive", after=0, upto=1, limit=1)

    assert "'" not in sql.replace("'webhook'", "").replace("'source'", "").replace(
        "'event_type'", ""
    ).replace("'retrying'", "")


def test_describe_says_what_a_selection_holds():
    sel = ReplaySelection(
        since=datetime(2026, 11, 22, 7, tzinfo=UTC), source="github", failed_jobs=True,
        dead_deliveries=True,
    )  # fmt: skip

    assert replayselect.describe(sel) == (
        "since 2026-11-22T07:00:00+00:00, source github, with failed jobs or dead deliveries"
    )
    assert replayselect.describe(ReplaySelection()) == "everything"


# ------------------------------------------------------------------------ pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_batches_are_spaced_by_their_share_of_the_rate():
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)

    for _ in range(4):
        await pacer.take(5)

    # 5 events at 10/s take half a second: the first batch goes at once.
    assert clock.slept == pytest.approx([0.5, 0.5, 0.5])
    assert clock.now == pytest.approx(1001.5)


async def test_slow_work_earns_no_burst_afterwards():
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)

    await pacer.take(5)
    clock.now += 30  # the batch took long to record
    await pacer.take(5)
    await pacer.take(5)

    assert clock.slept == pytest.approx([0.5])


async def test_work_time_counts_toward_the_wait():
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)

    await pacer.take(10)
    clock.now += 0.75
    await pacer.take(10)

    assert clock.slept == pytest.approx([0.25])


def test_a_rate_must_be_above_zero():
    with pytest.raises(ValueError, match="above 0"):
        Pacer(0)


@pytest.mark.parametrize(("rate", "size"), [(0.1, 1), (5, 1), (50, 10), (250, 50), (10_000, 100)])
def test_batches_are_about_a_fifth_of_a_second_of_events(rate, size):
    assert batch_size(rate) == size


# ---------------------------------------------------------------------- progress


def test_on_a_terminal_the_bar_is_redrawn_in_place():
    out = io.StringIO()
    progress = Progress(40, label="rpl_1", stream=out, tty=True)

    progress.update(10)
    progress.update(40)
    progress.close()

    assert out.getvalue() == (
        "\r[#######-----------------------] rpl_1: 10/40 (25%)"
        "\r[##############################] rpl_1: 40/40 (100%)\n"
    )


def test_elsewhere_a_count_line_now_and_then_and_one_at_the_end():
    out = io.StringIO()
    clock = FakeClock()
    progress = Progress(100, done=20, label="rpl_1", stream=out, tty=False, clock=clock, every=5)

    progress.update(30)
    clock.now += 1
    progress.update(40)  # too soon for another line
    clock.now += 5
    progress.update(50)
    progress.update(60)
    progress.close()

    assert out.getvalue().splitlines() == [
        "rpl_1: 30/100 (30%)",
        "rpl_1: 50/100 (50%)",
        "rpl_1: 60/100 (60%)",
    ]


def test_the_end_line_is_not_written_twice():
    out = io.StringIO()
    progress = Progress(10, label="r", stream=out, tty=False, clock=FakeClock())

    progress.update(10)
    progress.close()

    assert out.getvalue() == "r: 10/10 (100%)\n"


# ---------------------------------------------------------------- replay events


def _job(**kw) -> ReplayJob:
    fields = dict(
        replay_id="rpl_1", mode="redrive", selection=ReplaySelection(), requested_by="alice",
        reason="host was down", status="running", max_seq=10, cursor_seq=0, selected=1,
        done=0, rate=50.0,
    )  # fmt: skip
    return ReplayJob(**{**fields, **kw})  # type: ignore[arg-type]


def _row(event: ev.Event) -> LoggedEvent:
    raw = msgspec.json.decode(ev.encode(event), type=RawEvent)
    return LoggedEvent(seq=7, bus_subject=event.bus_subject("hookbus"), event=raw)


def _webhook() -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source="github", kind="github", event_type="push",
        payload=msgspec.Raw(b'{"ref":  "refs/heads/main"}'), branch="main",
    )  # fmt: skip
    return ev.make_event(data, source="/hookbus/receiver/github", tenant="acme", subject="a/b")


def test_a_replay_event_carries_the_webhook_as_recorded_in_a_chain_of_its_own():
    hook = _webhook()

    replay = replayrun.replay_event(_job(), _row(hook))

    assert replay.data == ev.WebhookReplayed(
        replay_of=hook.id, webhook=hook.data, requested_by="alice", reason="host was down"
    )
    assert bytes(replay.data.webhook.payload) == b'{"ref":  "refs/heads/main"}'
    assert replay.correlationid == replay.id != hook.id
    assert replay.causationid == replayrun.started_id("rpl_1")
    assert (replay.tenant, replay.subject) == ("acme", "a/b")


def test_replay_ids_are_fresh_per_replay_job_and_stable_within_one():
    row = _row(_webhook())

    first = replayrun.replay_event(_job(), row).id
    again = replayrun.replay_event(_job(), row).id
    other = replayrun.replay_event(_job(replay_id="rpl_2"), row).id

    assert first == again != other
    assert replayrun.republish_id(_job(), row) != row.event.id
    assert replayrun.republish_id(_job(), row) == replayrun.republish_id(_job(), row)
    assert replayrun.republish_id(_job(replay_id="rpl_2"), row) != replayrun.republish_id(
        _job(), row
    )


# ----------------------------------------------------------------------- options


def test_replay_options_parse():
    args = parser().parse_args(
        ["replay", "--since", "2h", "--source", "github", "--failed-jobs", "--republish",
         "--rate", "5", "--by", "alice", "--dry-run"]
    )  # fmt: skip

    assert args.func is cmd_replay
    assert (args.since, args.source, args.failed_jobs, args.mode) == (
        "2h", "github", True, "republish"
    )  # fmt: skip
    assert (args.rate, args.by, args.dry_run, args.resume, args.list) == (
        5.0, "alice", True, None, False
    )  # fmt: skip


def test_redrive_is_the_default():
    assert parser().parse_args(["replay"]).mode is None  # the command reads None as redrive


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "--redrive", "--republish"],
        ["replay", "--resume", "rpl_1", "--list"],
        ["replay", "--rate", "0"],
        ["replay", "--rate", "fast"],
    ],
)
def test_conflicting_or_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2


def test_a_bad_time_is_refused_before_anything_is_reached(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("HOOKBUS_CONFIG", "HOOKBUS_DATABASE__URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    args = parser().parse_args(["replay", "--since", "last tuesday"])

    assert cmd_replay(args) == 2
    assert capsys.readouterr().err.startswith("hookbus: 'last tuesday' is not a time")


def test_resume_refuses_a_selection_of_its_own(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args = parser().parse_args(["replay", "--resume", "rpl_1", "--source", "github"])

    assert cmd_replay(args) == 2
    assert "drop --source" in capsys.readouterr().err


def test_times_keep_their_offset_through_the_selection_json():
    sel = ReplaySelection(since=datetime(2026, 1, 1, 9, tzinfo=timezone(timedelta(hours=2))))

    back = msgspec.json.decode(msgspec.json.encode(sel), type=ReplaySelection)

    assert back.since == sel.since


def test_the_count_says_what_it_counts():
    assert replay._selected(1, "redrive") == "1 webhook to redrive"
    assert replay._selected(12, "redrive") == "12 webhooks to redrive"
    assert replay._selected(0, "republish") == "0 events to republish"
