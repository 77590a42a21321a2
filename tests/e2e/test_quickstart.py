"""`hookbus up` with no config file and only WEBHOOK_SECRET and ACTION_SCRIPT set: it
builds a GitHub source and a rule, says so, and a signed push runs the script."""

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

SECRET = "quickstart-secret-0b5e"


def test_up_with_two_variables_serves_github_pushes_that_run_the_script(tmp_path: Path) -> None:
    ran = tmp_path / "ran.txt"
    script = tmp_path / "deploy.sh"
    script.write_text(f'#!/bin/sh\necho "$HOOKBUS_REPOSITORY $HOOKBUS_BRANCH" >> {ran}\n')
    script.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKBUS_")}
    env.pop("DATABASE_URL", None)
    env.update(WEBHOOK_SECRET=SECRET, ACTION_SCRIPT="./deploy.sh")
    # Only so that this test shares the machine with others: free ports instead of the
    # defaults (8080, 9101-9103, 9180). No config file anywhere.
    env.update(
        HOOKBUS_RECEIVER__PORT=str(port),
        HOOKBUS_ROUTER__HEALTH_PORT=str(free_port()),
        HOOKBUS_EXECUTOR__HEALTH_PORT=str(free_port()),
        HOOKBUS_DISPATCHER__HEALTH_PORT=str(free_port()),
        HOOKBUS_API__PORT=str(free_port()),
    )
    assert not (tmp_path / "hookbus.toml").exists()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookbus_cli.main", "up", "--nats-port", str(free_port())],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "config written to" in line:
                break
        out = "".join(lines)
        assert "config written to" in out, out
        assert f"GitHub webhook URL: http://127.0.0.1:{port}/hooks/github" in out
        assert f"every push runs {script}" in out
        assert SECRET not in out
        written = tmp_path / ".hookbus" / "quickstart.toml"
        assert str(written) in out or ".hookbus/quickstart.toml" in out
        # The file names the variable, never the secret.
        assert 'env = "WEBHOOK_SECRET"' in written.read_text()
        assert SECRET not in written.read_text()

        body = json.dumps(
            {"ref": "refs/heads/main", "after": "c0ffee", "repository": {"full_name": "acme/web"}}
        ).encode()
        headers = {
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": "qs-1",
        }
        unsigned = httpx.post(
            f"http://127.0.0.1:{port}/hooks/github",
            content=body,
            headers={**headers, "x-hub-signature-256": sign_github(body, b"wrong")},
        )
        signed = httpx.post(
            f"http://127.0.0.1:{port}/hooks/github",
            content=body,
            headers={**headers, "x-hub-signature-256": sign_github(body, SECRET.encode())},
        )
        assert (unsigned.status_code, signed.status_code) == (401, 202)
        deadline = time.monotonic() + 60
        while not ran.exists():
            assert proc.poll() is None, "hookbus up exited"
            assert time.monotonic() < deadline, "the script did not run"
            time.sleep(0.1)
        assert ran.read_text() == "acme/web main\n"
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, rest
    assert SECRET not in rest
