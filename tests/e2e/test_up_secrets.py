"""`hookbus up` with no set-up encrypts run-time endpoints' secrets: it makes a key in its
data directory, only its dispatcher holds it, `hookbus endpoints add` beside it finds it,
and a message sent to the added endpoint arrives signed with the secret the CLI printed,
while the table holds no whsec_."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook

from hookbus_cli.embedded import free_port

from ..integration.test_dispatcher import Sink
from .test_up import _start, _stop

pytestmark = pytest.mark.e2e


def _cli(tmp_path: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookbus_cli.main", *argv],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(p.split("=", 1) for p in raw.decode(errors="replace").split("\0") if "=" in p)


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(x) for x in out.stdout.split()]


def test_up_seals_run_time_secrets_with_a_key_of_its_own(tmp_path: Path) -> None:
    health = {name: free_port() for name in ("router", "executor", "dispatcher")}
    (tmp_path / "hookbus.toml").write_text(
        f"[receiver]\nport = {free_port()}\n"
        f"[router]\nhealth_port = {health['router']}\n"
        f"[executor]\nhealth_port = {health['executor']}\n"
        f'[dispatcher]\nhealth_port = {health["dispatcher"]}\nallow_networks = ["127.0.0.0/8"]\n'
        f"endpoint_cache_seconds = 0\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKBUS_")}
    env.pop("DATABASE_URL", None)
    with Sink() as sink:
        proc, _ = _start(tmp_path, env)
        try:
            key_file = tmp_path / ".hookbus" / "secrets.key"
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            # Only the dispatcher holds the key.
            holders = set()
            for child in _children(proc.pid):
                seen = _environ(child)
                if seen.get("HOOKBUS_SECRETS_KEY_FILE") == str(key_file):
                    holders.add(child)
                assert "HOOKBUS_SECRETS_KEY" not in seen
            assert len(holders) == 1
            (dispatcher,) = holders
            cmdline = Path(f"/proc/{dispatcher}/cmdline").read_bytes()
            assert b"dispatcher" in cmdline

            added = _cli(tmp_path, env, "endpoints", "add", "crm", f"{sink.url}/crm",
                         "--tenant", "acme", "--json")  # fmt: skip
            assert added.returncode == 0, added.stderr
            secret = json.loads(added.stdout)["secret"]
            sent = _cli(tmp_path, env, "send", "--tenant", "acme", "--type", "invoice.paid",
                        "--data", '{"id": "in_1"}', "--json")  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            deadline = time.monotonic() + 60
            while not sink.received:
                assert time.monotonic() < deadline, "nothing was delivered"
                time.sleep(0.1)
            (got,) = sink.received
            assert Webhook(secret).verify(got.body, got.headers) == {"id": "in_1"}

            state = json.loads((tmp_path / ".hookbus" / "up.json").read_text())

            async def stored() -> list[asyncpg.Record]:
                conn = await asyncpg.connect(state["database_url"])
                try:
                    return await conn.fetch("SELECT secret, key_id FROM hookbus.endpoint_secrets")
                finally:
                    await conn.close()

            (row,) = asyncio.run(stored())
            assert row["key_id"]
            assert "whsec_" not in row["secret"]
        finally:
            rest = _stop(proc)
    assert proc.returncode == 0, rest
    assert secret not in rest
