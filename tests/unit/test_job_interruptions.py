"""Interrupted jobs outside the executor: how the log reads them, the settings that bound a
stop, and how long ``hookbus up`` waits for one."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from hookbus_cli.events import summary
from hookbus_cli.up import stop_wait
from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_common.eventlog import LoggedEvent
from hookbus_common.events import RawEvent
from hookbus_executor import config as executor
from hookbus_executor.config import ExecutorSettings


def logged(data: ev.EventData) -> LoggedEvent:
    event = ev.make_event(data, source="/hookbus/test")
    raw = msgspec.json.decode(ev.encode(event), type=RawEvent)
    return LoggedEvent(seq=1, bus_subject=event.bus_subject("hookbus"), event=raw)


@pytest.mark.parametrize(
    ("retrying", "line"),
    [
        (False, "job_1 attempt 2 interrupted: executor_lost"),
        (True, "job_1 attempt 2 interrupted: executor_lost; runs again"),
    ],
)
def test_an_interruption_reads_as_which_attempt_why_and_what_follows(retrying, line):
    data = ev.JobInterrupted(
        job_id="job_1", kind="shell", rule="r", attempt=2, reason="executor_lost",
        retrying=retrying,
    )  # fmt: skip
    assert summary(logged(data)) == line


def load(tmp_path: Path, executor_toml: str) -> executor.ExecutorConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(f"[executor]\n{executor_toml}\n")
    return executor.load(path, {})


def test_the_defaults_leave_a_stop_time_to_end_and_record_its_jobs(tmp_path):
    e = load(tmp_path, "").executor
    assert (e.shutdown_grace_seconds, e.lease_seconds, e.max_attempts) == (30.0, 30.0, 3)
    # The consume loop waits for running jobs through their grace and their end.
    assert executor.drain_timeout(e) > e.shutdown_grace_seconds + e.kill_grace_seconds
    # Running jobs report progress well within the ack wait.
    assert executor.progress_interval(e) <= e.ack_wait_seconds / 3


def test_a_grace_longer_than_the_ack_wait_is_fine_and_the_stop_waits_it_out(tmp_path):
    e = load(tmp_path, "shutdown_grace_seconds = 300\nack_wait_seconds = 60").executor
    assert e.shutdown_grace_seconds == 300
    assert executor.drain_timeout(e) >= 300 + e.kill_grace_seconds


def test_an_ack_wait_too_short_for_progress_reports_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "ack_wait_seconds = 1")
    assert "executor.ack_wait_seconds" in str(info.value)


def test_hookbus_up_waits_out_the_executors_grace_before_killing_anything():
    default = ExecutorSettings()
    longer = ExecutorSettings(shutdown_grace_seconds=120, ack_wait_seconds=150)
    assert stop_wait(default) > default.shutdown_grace_seconds + default.kill_grace_seconds
    assert stop_wait(longer) > longer.shutdown_grace_seconds + longer.kill_grace_seconds
