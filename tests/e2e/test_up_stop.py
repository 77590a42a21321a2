"""Stopping `hookbus up` (SIGINT) while a job runs: the job gets the executor's shutdown
grace, then its action is ended and recorded interrupted, and it is not run again after
a restart."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import pytest

from hookbus_cli.embedded import free_port
from hookbus_executor import procs
from hookbus_receiver.signatures import sign_github

pytestmark = pytest.mark.e2e

# Longer than the 15 s `hookbus up` used to give its services before killing them.
GRACE = 16


def _config(tmp_path: Path) -> tuple[int, Path]:
    port = free_port()
    marker = tmp_path / "marker"
    script = tmp_path / "deploy.sh"
    script.write_text(
        f'#!/bin/sh\necho "start $$" >> {marker}\nsleep 300\necho "end $$" >> {marker}\n'
    )
    script.chmod(0o755)
    health = "\n".join(
        f"[{name}]\nhealth_port = {free_port()}" for name in ("router", "dispatcher")
    )
    (tmp_path / "hookbus.toml").write_text(f"""
[receiver]
port = {port}
{health}
[executor]
health_port = {free_port()}
shutdown_grace_seconds = {GRACE}
ack_wait_seconds = {GRACE + 15}
[sources.github]
kind = "github"
secrets = [{{ value = "up-secret" }}]
[[rules]]
name = "deploy"
event = "push"
actions = [{{ kind = "shell", command = ["./deploy.sh"], timeout = 600 }}]
""")
    return port, marker


def _up(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookbus_cli.main", "up", "--nats-port", str(free_port())],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Its own process group, as in a terminal: Ctrl-C goes to the whole group.
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "send webhooks to" in line:
            return proc
    proc.kill()
    raise AssertionError("hookbus up did not come up:\n" + "".join(seen))


def _stop(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C as a terminal sends it: SIGINT to `hookbus up`'s whole process group (its
    services too). It stops its services, waits for them, then its servers."""
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=GRACE + 60)
    return out


def _events(tmp_path: Path, env: dict[str, str], hook_id: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "hookbus_cli.main", "events", "--chain", hook_id],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return out.stdout + out.stderr


def _executor_settled(tmp_path: Path) -> bool:
    state = json.loads((tmp_path / ".hookbus" / "up.json").read_text())

    async def run() -> bool:
        nc = await nats.connect(state["nats_url"])
        try:
            info = await nc.jetstream().consumer_info("HOOKBUS", "hookbus-executor")
        finally:
            await nc.close()
        return info.num_ack_pending == 0 and info.num_pending == 0

    return asyncio.run(run())


def test_stopping_up_ends_a_running_job_after_its_grace_and_it_is_not_run_again(
    tmp_path: Path,
) -> None:
    port, marker = _config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKBUS_")}
    env.pop("DATABASE_URL", None)
    proc = _up(tmp_path, env)
    try:
        body = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "a/b"}}).encode()
        r = httpx.post(
            f"http://127.0.0.1:{port}/hooks/github", content=body,
            headers={"x-github-event": "push", "x-github-delivery": "stop-1",
                     "content-type": "application/json",
                     "x-hub-signature-256": sign_github(body, b"up-secret")},
        )  # fmt: skip
        assert r.status_code == 202, r.text
        hook_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while not (marker.exists() and marker.read_text().endswith("\n")):
            assert time.monotonic() < deadline, "the action did not start"
            time.sleep(0.05)
        found = re.fullmatch(r"start (\d+)\n", marker.read_text())
        assert found, marker.read_text()
        pid = int(found[1])
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "hookbus: stopped" in out
    # Nothing was left to run on: the executor ended the action itself and recorded it.
    assert not procs.alive(pid, None), out
    assert marker.read_text() == f"start {pid}\n"

    proc = _up(tmp_path, env)
    try:
        chain = _events(tmp_path, env, hook_id)
        assert "job.interrupted" in chain, chain
        assert "attempt 1 interrupted: shutdown" in chain
        deadline = time.monotonic() + 60
        while not _executor_settled(tmp_path):
            assert time.monotonic() < deadline, "the executor's messages were not all acked"
            time.sleep(0.2)
        assert marker.read_text() == f"start {pid}\n"  # not run again
        assert _events(tmp_path, env, hook_id).count("job.started") == 1
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
