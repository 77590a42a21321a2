"""`hookbus up`'s quick start: when it is asked for, what it refuses, and the config it
writes, loaded as every service loads it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hookbus_cli import quickstart
from hookbus_cli.config import check_all
from hookbus_receiver.config import GithubSource
from hookbus_router.config import ShellAction


def _args(**kw: str | None) -> argparse.Namespace:
    return argparse.Namespace(github_secret_env=kw.get("secret_env"), run=kw.get("run"))


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "deploy.sh"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_without_variables_or_flags_there_is_no_quick_start(script: Path) -> None:
    assert quickstart.plan(_args(), {}) is None
    assert quickstart.plan(_args(), {"WEBHOOK_SECRET": "", "ACTION_SCRIPT": ""}) is None


def test_the_two_variables_make_one(script: Path) -> None:
    quick = quickstart.plan(_args(), {"WEBHOOK_SECRET": "s", "ACTION_SCRIPT": "deploy.sh"})

    assert quick == quickstart.Quickstart(
        secret_env="WEBHOOK_SECRET", script=script, base_dir=script.parent
    )


def test_the_flags_make_one_and_win_over_the_variables(script: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.sh"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o700)
    env = {"GH_HOOK_SECRET": "s", "WEBHOOK_SECRET": "w", "ACTION_SCRIPT": str(script)}

    quick = quickstart.plan(_args(secret_env="GH_HOOK_SECRET", run=str(other)), env)

    assert quick is not None
    assert (quick.secret_env, quick.script) == ("GH_HOOK_SECRET", other)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ({}, {"ACTION_SCRIPT": "deploy.sh"}, "set WEBHOOK_SECRET to the webhook's secret"),
        ({}, {"WEBHOOK_SECRET": "s"}, "set ACTION_SCRIPT to the script to run on push"),
        ({"run": "deploy.sh"}, {}, "set WEBHOOK_SECRET"),
        (
            {"secret_env": "NOPE", "run": "deploy.sh"},
            {},
            "--github-secret-env NOPE: the variable is not set",
        ),
        (
            {},
            {"WEBHOOK_SECRET": "s", "ACTION_SCRIPT": "missing.sh"},
            "ACTION_SCRIPT: .*missing.sh is not a file",
        ),
        ({"run": "plain.txt"}, {"WEBHOOK_SECRET": "s"}, "--run: .*plain.txt is not executable"),
    ],
)
def test_half_a_quick_start_is_refused_saying_what_is_missing(
    script: Path, args: dict[str, str], env: dict[str, str], message: str
) -> None:
    (script.parent / "plain.txt").write_text("")

    with pytest.raises(quickstart.QuickstartError, match=message):
        quickstart.plan(_args(**args), env)


def test_the_written_config_loads_as_every_service_loads_it(script: Path, tmp_path: Path) -> None:
    quick = quickstart.plan(_args(), {"WEBHOOK_SECRET": "s3cr3t", "ACTION_SCRIPT": "deploy.sh"})
    assert quick is not None

    path = quickstart.write(quick, tmp_path / ".hookbus")
    inst = check_all(path, {"WEBHOOK_SECRET": "s3cr3t"})

    assert path == tmp_path / ".hookbus" / "quickstart.toml"
    assert "s3cr3t" not in path.read_text()
    source = inst.receiver.sources["github"]
    assert isinstance(source, GithubSource)
    assert source.secrets[0].value == "s3cr3t"
    [rule] = inst.router.rules
    assert (rule.name, rule.source, rule.event) == ("run-on-push", "github", "push")
    assert rule.actions == [ShellAction(command=[str(script)])]
    assert inst.executor.base_dir == str(tmp_path)


def test_a_path_with_quotes_is_written_as_a_toml_string(tmp_path: Path) -> None:
    odd = tmp_path / 'a "quoted" \\dir'
    odd.mkdir()
    script = odd / "run me.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    quick = quickstart.Quickstart(secret_env="WEBHOOK_SECRET", script=script, base_dir=odd)

    inst = check_all(quickstart.write(quick, tmp_path / "d"), {"WEBHOOK_SECRET": "x"})

    assert inst.router.rules[0].actions == [ShellAction(command=[str(script)])]
    assert inst.executor.base_dir == str(odd)


def test_the_announcement_says_what_was_built(script: Path) -> None:
    quick = quickstart.Quickstart(secret_env="WEBHOOK_SECRET", script=script, base_dir=Path("/"))

    text = "\n".join(quickstart.announce(quick, "http://127.0.0.1:8080", Path(".hookbus/q.toml")))

    assert "http://127.0.0.1:8080/hooks/github" in text
    assert f"every push runs {script}" in text
    assert ".hookbus/q.toml" in text
