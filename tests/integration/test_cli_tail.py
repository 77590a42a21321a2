"""``hookbus tail`` as people run it (a process of its own) against a real NATS: what it
prints of events published after it starts, from a stream sequence or a time, and Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hookbus_cli.embedded import free_port
from hookbus_common import events as ev
from hookbus_common.service import runtime
from hookbus_common.settings import Settings

from .test_cli import hookbus
from .test_cli_replay import _env, _hook

pytestmark = pytest.mark.integration


def _job(hook: ev.Event[Any]) -> ev.Event[ev.JobStarted]:
    return ev.make_event(
        ev.JobStarted(job_id="job_1", kind="shell", rule="deploy"), source="/x", cause=hook
    )


def publish(settings: Settings, events: list[ev.Event[Any]]) -> None:
    async def go() -> None:
        async with runtime(settings, "test") as rt:
            await rt.outbox.commit_and_publish(events)

    asyncio.run(go())


@contextmanager
def tailing(settings: Settings, cwd: Path, *argv: str) -> Iterator[subprocess.Popen[str]]:
    """``hookbus tail`` running, once it says it follows the stream."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookbus_cli.main", "tail", *argv],
        env=_env(settings), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        ready = proc.stderr.readline()
        assert ready.startswith("hookbus: following "), ready + proc.stderr.read()
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_tail_prints_the_events_published_after_it_starts(settings, tmp_path):
    before = _hook("github", 0)
    publish(settings, [before])  # also makes the stream

    with tailing(settings, tmp_path, "--type", "webhook.*", "--limit", "2") as proc:
        first, second = _hook("github", 1), _hook("gitlab", 2)
        publish(settings, [_job(before), first])
        publish(settings, [second])
        out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert [line.split()[3] for line in lines] == [first.id, second.id]
    assert lines[0].split()[2] == "webhook.received.v1"
    assert lines[0].endswith("github push acme/app@main")


def test_tail_from_a_sequence_prints_json_lines_from_there(settings, tmp_path):
    hooks = [_hook("github", n) for n in range(3)]
    publish(settings, hooks)

    with tailing(settings, tmp_path, "--from-seq", "2", "--json", "--limit", "2") as proc:
        out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["id"] for d in docs] == [hooks[1].id, hooks[2].id]
    assert docs[0]["type"] == ev.WebhookReceived.TYPE
    assert docs[0]["data"]["payload"] == {"ref": "refs/heads/main", "n": 1}


def test_tail_since_a_time_and_for_one_source_follows_its_chains(settings, tmp_path):
    ours, theirs = _hook("github", 1), _hook("gitlab", 2)
    publish(settings, [ours, theirs, _job(theirs), _job(ours)])

    with tailing(settings, tmp_path, "--since", "1h", "--source", "github", "--limit", "2") as p:
        out, err = p.communicate(timeout=60)

    assert p.returncode == 0, err
    assert [line.split()[2] for line in out.splitlines()] == [
        "webhook.received.v1",
        "job.started.v1",
    ]


def test_ctrl_c_ends_a_tail_cleanly(settings, tmp_path):
    publish(settings, [_hook("github", 0)])

    with tailing(settings, tmp_path) as proc:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)

    assert proc.returncode == 0
    assert (out, err) == ("", "")


def test_without_nats_tail_fails_within_seconds_with_one_line(settings, tmp_path):
    port = free_port()  # nothing listens on a port just freed
    env = {**_env(settings), "HOOKBUS_NATS__URL": f"nats://127.0.0.1:{port}"}

    started = time.monotonic()
    out = hookbus("tail", env=env, cwd=tmp_path)
    took = time.monotonic() - started

    assert out.returncode == 1
    assert took < 30, f"took {took:.1f} s"
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"hookbus: cannot reach NATS at nats://127.0.0.1:{port} (")
    assert line.endswith("start it with `hookbus up`, or set HOOKBUS_NATS__URL")
