"""The peer: adnanh/webhook (Debian's package ``webhook``), run as people run it for "run a
script on push": one process, a hooks file, an HMAC trigger rule on ``X-Hub-Signature-256``.

Two hooks, mirroring the two hookbus sources of the peer phase:

- ``push``: the signature (``payload-hmac-sha256``, checked first) and ``ref`` ==
  ``refs/heads/main``, then ``execute-command`` runs the same ``stamp.sh`` as hookbus,
  with ``X-GitHub-Delivery`` passed as ``HOOKBUS_DELIVERY_ID`` so the stamp names the
  delivery; ``BENCH_STAMPS`` comes from the process's own environment.
- ``quiet``: the signature checked first, then ``ref`` == ``refs/heads/never-matches``,
  which no bench push has: verified, nothing runs (``Hook rules were not satisfied``).

Both answer 202 (``success-http-response-code``, ``trigger-rule-mismatch-http-response-code``)
so the load generators count them as hookbus's 202s; a bad signature gets a 500 from
webhook 2.8 ("Error occurred while evaluating hook rules"), which the phase checks.
webhook answers a matching hook as soon as the command has started, without waiting for
it (no ``include-command-output-in-response``), as hookbus answers before its job runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hookbus_cli.embedded import free_port

from . import payloads
from .system import stop, wait_http

EXE = "webhook"
INSTALL_HINT = (
    "adnanh/webhook is not installed, so the peer phase is skipped. On Debian/Ubuntu: "
    "apt-get install -y webhook"
)
MATCH_PATH = "/hooks/push"
QUIET_PATH = "/hooks/quiet"
NEVER = "refs/heads/never-matches"


def available() -> str | None:
    return shutil.which(EXE)


def version() -> str:
    exe = available()
    if exe is None:
        return "missing"
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def _hook(hook_id: str, ref: str, script: Path, workdir: Path) -> dict[str, Any]:
    signature = {
        "match": {
            "type": "payload-hmac-sha256",
            "secret": payloads.SECRET,
            "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
        }
    }
    branch = {
        "match": {"type": "value", "value": ref, "parameter": {"source": "payload", "name": "ref"}}
    }
    return {
        "id": hook_id,
        "execute-command": str(script),
        "command-working-directory": str(workdir),
        "pass-environment-to-command": [
            {"source": "header", "name": "X-GitHub-Delivery", "envname": "HOOKBUS_DELIVERY_ID"}
        ],
        "success-http-response-code": 202,
        "trigger-rule-mismatch-http-response-code": 202,
        # "and" evaluates in order and stops at the first false: signature first, always.
        "trigger-rule": {"and": [signature, branch]},
    }


def hooks(script: Path, workdir: Path) -> list[dict[str, Any]]:
    return [
        _hook("push", "refs/heads/main", script, workdir),
        _hook("quiet", NEVER, script, workdir),
    ]


class Adnanh:
    """One ``webhook`` process on 127.0.0.1, its hooks file and log under ``workdir``."""

    def __init__(self, workdir: Path, script: Path, stamps: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.script = script
        self.stamps = stamps
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        exe = available()
        if exe is None:
            raise RuntimeError(INSTALL_HINT)
        hooks_file = self.workdir / "hooks.json"
        hooks_file.write_text(json.dumps(hooks(self.script, self.workdir), indent=2))
        argv = [
            exe, "-hooks", str(hooks_file), "-ip", "127.0.0.1", "-port", str(self.port),
            "-nopanic",
        ]  # fmt: skip
        env = {**os.environ, "BENCH_STAMPS": str(self.stamps)}
        with open(self.workdir / "webhook.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        wait_http(f"http://127.0.0.1:{self.port}/", self.proc, "adnanh/webhook", timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            stop([self.proc])
            self.proc = None

    def __enter__(self) -> Adnanh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
