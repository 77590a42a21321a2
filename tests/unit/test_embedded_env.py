"""The environment the embedded nats-server is started in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hookbus_cli import embedded


def test_the_embedded_nats_server_runs_one_scheduler_thread_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    monkeypatch.setenv("HOOKBUS_SOMETHING", "kept")
    env = embedded.server_env()
    assert env["GOMAXPROCS"] == "1"
    assert env["HOOKBUS_SOMETHING"] == "kept"  # the rest of the environment is passed on


def test_a_gomaxprocs_of_the_user_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOMAXPROCS", "4")
    assert embedded.server_env()["GOMAXPROCS"] == "4"


def test_the_server_is_started_in_that_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, object] = {}

    class FakePopen:
        def __init__(self, argv: list[str], **kwargs: object) -> None:
            seen.update(kwargs)

    monkeypatch.delenv("GOMAXPROCS", raising=False)
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(embedded, "nats_server_binary", lambda: "nats-server")
    embedded.NatsServer(tmp_path).launch()
    env = seen["env"]
    assert isinstance(env, dict)
    assert env["GOMAXPROCS"] == "1"
