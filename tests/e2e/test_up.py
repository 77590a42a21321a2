"""`hookbus up`, the README's first command: everything starts, works, stops, and keeps
its data across a restart."""

from __future__ import annotations

import json
import os
import re
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
    cfg, port, _ = _config_with_health_ports(tmp_path)
    return cfg, port


def _config_with_health_ports(tmp_path: Path) -> tuple[Path, int, dict[str, int]]:
    port = free_port()
    health = {name: free_port() for name in ("router", "executor", "dispatcher")}
    script = tmp_path / "deploy.sh"
    script.write_text('#!/bin/sh\necho "deployed $HOOKBUS_REPOSITORY"\n')
    script.chmod(0o755)
    cfg = tmp_path / "hookbus.toml"
    cfg.write_text(f"""
[receiver]
port = {port}
[router]
health_port = {health["router"]}
[executor]
health_port = {health["executor"]}
[dispatcher]
health_port = {health["dispatcher"]}
[sources.github]
kind = "github"
secrets = [{{ value = "up-secret" }}]
[[rules]]
name = "deploy"
event = "push"
branch = "main"
actions = [{{ kind = "shell", command = ["./deploy.sh"] }}]
""")
    return cfg, port, health


def _hookbus(*argv: str) -> list[str]:
    return [sys.executable, "-m", "hookbus_cli.main", *argv]


def _start(
    tmp_path: Path, env: dict[str, str], *more: str
) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        _hookbus("up", "--nats-port", str(free_port()), *more),
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


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKBUS_")}
    env.pop("DATABASE_URL", None)
    return env


def _until_ok(url: str, what: str, alive: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert alive is None or alive.poll() is None, f"{what} exited"
        assert time.monotonic() < deadline, f"{what} did not answer 200 at {url}"
        time.sleep(0.1)


def _port_from_log(log: Path, proc: subprocess.Popen[bytes]) -> int:
    """The health port a replica says it took instead of the busy one."""
    deadline = time.monotonic() + 60
    while True:
        found = re.search(r"on port (\d+) instead", log.read_text())
        if found:
            return int(found[1])
        assert proc.poll() is None, f"the replica exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no fallback port logged:\n{log.read_text()}"
        time.sleep(0.1)


def test_a_second_up_refuses_and_a_served_replica_joins_the_running_up(tmp_path: Path) -> None:
    _, port, health = _config_with_health_ports(tmp_path)
    env = _clean_env()
    # --data-dir after the command, as the docs write it.
    proc, _ = _start(tmp_path, env, "--data-dir", "state")
    state = tmp_path / "state" / "up.json"
    try:
        assert state.exists()
        assert not (tmp_path / ".hookbus").exists()
        before = state.read_bytes()
        assert json.loads(before)["pid"] == proc.pid

        # A second `up` in the same directory refuses at once, naming the running one,
        # and touches nothing of it.
        second = subprocess.run(
            _hookbus("up", "--data-dir", "state", "--nats-port", str(free_port())),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"already running with data in {tmp_path / 'state'} (pid {proc.pid})" in (
            second.stderr
        )
        assert "send webhooks to" not in second.stdout
        assert state.read_bytes() == before
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        events = subprocess.run(
            _hookbus("events", "--data-dir", "state"),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert events.returncode == 0, events.stderr

        # `hookbus serve executor` beside it: a second replica, which finds up's NATS and
        # Postgres by itself and, its health port being the first replica's, takes a free
        # one and says which.
        configured = f"http://127.0.0.1:{health['executor']}"
        _until_ok(f"{configured}/readyz", "up's executor")
        log = tmp_path / "executor-2.log"
        with open(log, "wb") as out:
            replica = subprocess.Popen(
                _hookbus("serve", "executor", "--data-dir", "state"),
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            replica_port = _port_from_log(log, replica)
            assert replica_port != health["executor"]
            # Ready means connected to NATS and Postgres: up's, found from its state file.
            _until_ok(f"http://127.0.0.1:{replica_port}/readyz", "the replica", replica)
            assert httpx.get(f"{configured}/healthz", timeout=5).status_code == 200
        finally:
            replica.send_signal(signal.SIGTERM)
            replica.wait(30)
        assert replica.returncode == 0, log.read_text()[-3000:]
    finally:
        rest = _stop(proc)
    assert proc.returncode == 0, rest
    assert not state.exists()
