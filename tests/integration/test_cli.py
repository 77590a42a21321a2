"""The ``hookbus`` command as people run it (a process of its own): against a real
Postgres, against none, and writing into a pipe whose reader has gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hookbus_cli.embedded import free_port
from hookbus_common.settings import Settings

pytestmark = pytest.mark.integration

PASSWORD = "pw-that-must-not-show"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKBUS_")}
    env.pop("DATABASE_URL", None)
    return {**env, **extra}


def hookbus(
    *argv: str, env: dict[str, str], cwd: Path, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookbus_cli.main", *argv],
        env=env, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=90,
        check=False,
    )  # fmt: skip


# ----------------------------------------------------------------- nothing to reach


@pytest.mark.parametrize(
    "argv", [["events"], ["events", "--chain", "evt_1"], ["migrate"], ["partners", "list"]]
)
def test_without_postgres_a_command_fails_within_seconds_with_one_line(tmp_path, argv):
    # Nothing listens on a port just freed; the URL carries a password, as many do.
    port = free_port()
    url = f"postgresql://hookbus:{PASSWORD}@127.0.0.1:{port}/hookbus"
    env = clean_env(HOOKBUS_DATABASE__URL=url)

    started = time.monotonic()
    out = hookbus(*argv, env=env, cwd=tmp_path)
    took = time.monotonic() - started

    assert out.returncode == 1
    assert took < 15, f"took {took:.1f} s"
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"hookbus: cannot reach Postgres at postgresql://***@127.0.0.1:{port}/hookbus"
        " (Connection refused) — start it with `hookbus up`, or set HOOKBUS_DATABASE__URL"
    ]


def test_a_password_in_the_urls_query_is_not_shown_either(tmp_path):
    url = f"postgresql:///hookbus?host={tmp_path}/no-socket-here&password={PASSWORD}"

    out = hookbus("events", env=clean_env(HOOKBUS_DATABASE__URL=url), cwd=tmp_path)

    assert out.returncode == 1
    assert PASSWORD not in out.stderr
    assert "password=***" in out.stderr
    assert len(out.stderr.splitlines()) == 1
    assert "cannot reach Postgres" in out.stderr


# ---------------------------------------------------------------- a reader that left


def _with_events(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI pointed at this test's schema, which holds some events."""
    env = clean_env(
        HOOKBUS_DATABASE__URL=settings.database.url,
        HOOKBUS_DATABASE__SCHEMA=settings.database.schema,
        HOOKBUS_PREFIX=settings.prefix,
    )
    for name in ("acme", "globex"):
        added = hookbus("partners", "add", name, env=env, cwd=tmp_path)
        assert added.returncode == 0, added.stderr
    listed = hookbus("events", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("partner.created") == 2
    return env


@pytest.mark.parametrize("argv", [["events"], ["events", "--json"]])
def test_output_into_a_closed_pipe_ends_quietly(settings, tmp_path, argv):
    """``hookbus events | head -1``: the reader may go before everything is written; here
    it has gone before anything is, so every run meets the broken pipe."""
    env = _with_events(settings, tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before anything is written: always EPIPE
    try:
        out = hookbus(*argv, env=env, cwd=tmp_path, stdout=write_end)
    finally:
        os.close(write_end)

    assert out.stderr == ""
    assert out.returncode == 1
