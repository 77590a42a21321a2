"""Synchronous answers: the source's respond_wait setting, and what an answer says."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_receiver import config
from hookbus_receiver.respond import outcome_body, wait_seconds
from hookbus_receiver.waiters import Ended, ending

SOURCE = '[sources.deploy]\nkind = "none"\nunsigned = true\n'


def load(tmp_path: Path, text: str) -> config.ReceiverConfig:
    (tmp_path / "hookbus.toml").write_text(text)
    return config.load(tmp_path / "hookbus.toml", {})


@pytest.mark.parametrize(
    ("value", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), (3, 3.0), (0.25, 0.25)]
)
def test_respond_wait_takes_durations(value, seconds):
    assert wait_seconds(value) == seconds


def test_a_source_with_respond_wait_loads_and_others_do_not_wait(tmp_path):
    cfg = load(
        tmp_path, SOURCE + 'respond_wait = "10s"\n[sources.other]\nkind = "none"\nunsigned = true\n'
    )
    assert cfg.sources["deploy"].respond_wait == "10s"
    assert cfg.sources["other"].respond_wait is None
    assert cfg.receiver.respond_max_waiting == 1000


@pytest.mark.parametrize(
    ("value", "words"),
    [('"soon"', "is not a duration"), ('"0s"', "more than 0"), ('"11m"', "at most 600")],
)
def test_a_bad_respond_wait_is_a_config_error_naming_the_key(tmp_path, value, words):
    with pytest.raises(ConfigError, match=r"sources\.deploy\.respond_wait") as info:
        load(tmp_path, SOURCE + f"respond_wait = {value}\n")
    assert words in str(info.value)


def _failed(**kw) -> ev.JobFailed:
    return ev.JobFailed(job_id="job_1", kind="shell", rule="deploy", exit_code=2, **kw)


def test_an_answer_says_the_outcome_and_bounds_the_output():
    end = Ended(ev.JobFailed.TYPE, _failed(output="é" * 10, error="boom"))
    body = outcome_body("evt_1", end, max_output=5)
    assert body["ok"] is False
    assert (body["status"], body["exit_code"], body["error"]) == ("failed", 2, "boom")
    assert body["truncated"] is True
    assert body["output"] == "éé"  # cut at the byte limit, never inside a character


def test_a_retried_attempt_is_no_end_and_other_events_are_none():
    retrying = _failed(retrying=True)
    assert ending(ev.JobFailed.TYPE, ev.encode_data(retrying)) is None
    assert ending(ev.JobFailed.TYPE, ev.encode_data(_failed())) is not None
    started = ev.JobStarted(job_id="j", kind="shell", rule="r")
    assert ending(ev.JobStarted.TYPE, ev.encode_data(started)) is None
