"""`hookbus up`, the README's first command: everything starts, works, stops, and keeps
its data across a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hookbus_cli.embedded import free_port
from hookbus_receiver.signatures import sign_github

pytestmark = pytest.mark.e2e


def _config(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    script = tmp_path / "deploy.sh"
    script.write_text('#!/bin/sh\necho "deployed $HOOKBUS_REPOSITORY"\n')
    script.chmod(0o755)
    cfg = tmp_path / "hookbus.toml"
    cfg.write_text(f"""
[receiver]
port = {port}
[router]
health_port = {free_port()}
[executor]
health_port = {free_port()}
[dispatcher]
health_port = {free_port()}
[sources.github]
kind = "github"
secrets = [{{ value = "up-secret" }}]
[[rules]]
name = "deploy"
event = "push"
branch = "main"
actions = [{{ kind = "shell", command = ["./deploy.sh"] }}]
""")
    return cfg, port


def _start(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookbus_cli.main", "up", "--nats-port", str(free_port())],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "send webhooks to" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("hookbus up did not come up:\n" + "".join(lines))


def _send(port: int, body: bytes) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/hooks/github", content=body,
        headers={"x-github-event": "push", "x-github-delivery": "up-1",
                 "content-type": "application/json",
                 "x-hub-signature-256": sign_github(body, b"up-secret")},
    )  # fmt: skip


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return out


def test_up_runs_everything_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    _, port = _config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKBUS_")}
    env.pop("DATABASE_URL", None)
    proc, lines = _start(tmp_path, env)
    try:
        assert f"http://127.0.0.1:{port}/hooks/<source>" in lines[-1]
        body = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "a/b"}}).encode()
        r = _send(port, body)
        assert r.status_code == 202
        hook_id = r.json()["id"]
        # `hookbus events` beside a running `hookbus up` finds its servers by itself.
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(
                [sys.executable, "-m", "hookbus_cli.main", "events", "--chain", hook_id, "-v"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            if "job.succeeded" in out.stdout:
                break
            assert time.monotonic() < deadline, out.stdout + out.stderr
            time.sleep(0.2)
        assert "deployed a/b" in out.stdout
    finally:
        rest = _stop(proc)
    assert proc.returncode == 0, rest
    assert "hookbus: stopped" in rest
    assert not (tmp_path / ".hookbus" / "up.json").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)

    # Started again, it still has the event log: the same delivery is a duplicate.
    proc, _ = _start(tmp_path, env)
    try:
        r = _send(port, body)
        assert r.status_code == 200
        assert r.json() == {"id": hook_id, "duplicate": True}
    finally:
        _stop(proc)
    assert proc.returncode == 0
