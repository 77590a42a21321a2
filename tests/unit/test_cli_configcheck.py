"""``hookbus config check``: besides loading the config as every service does, it finds
each shell action's program where the executor will look for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hookbus_cli.config import check_all
from hookbus_cli.configcheck import program_problems
from hookbus_cli.main import main
from hookbus_common import sealing


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return path


def script(path: Path, *, executable: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho ok\n")
    path.chmod(0o755 if executable else 0o644)
    return path


def rule(name: str, command: str, extra: str = "") -> str:
    return (
        f'[[rules]]\nname = "{name}"\n'
        f'actions = [{{ kind = "shell", command = ["{command}"]{extra} }}]\n'
    )


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    env = {"PATH": "/usr/bin:/bin"} if env is None else env
    return program_problems(check_all(write_config(tmp_path, text), env), env)


def test_a_missing_script_names_the_rule_the_action_and_where_it_was_looked_for(tmp_path):
    (tmp_path / "srv").mkdir()
    text = '[executor]\nworkdir = "srv"\n' + rule("deploy-main", "./examples/nope.sh")

    assert problems(tmp_path, text) == [
        "rules[0] (deploy-main).actions[0].command: ./examples/nope.sh not found"
        f" (relative to executor.workdir {tmp_path / 'srv'})"
    ]


def test_a_script_that_is_there_and_executable_passes(tmp_path):
    script(tmp_path / "srv" / "examples" / "deploy.sh")
    text = '[executor]\nworkdir = "srv"\n' + rule("deploy-main", "./examples/deploy.sh")

    assert problems(tmp_path, text) == []


def test_without_workdir_a_path_is_relative_to_the_config_files_directory(tmp_path):
    script(tmp_path / "deploy.sh")
    text = rule("ok", "./deploy.sh") + rule("bad", "./missing.sh")

    assert problems(tmp_path, text) == [
        "rules[1] (bad).actions[0].command: ./missing.sh not found"
        f" (relative to the config file's directory {tmp_path})"
    ]


def test_an_actions_own_cwd_wins_over_workdir(tmp_path):
    script(tmp_path / "a" / "run.sh")
    (tmp_path / "b").mkdir()
    text = '[executor]\nworkdir = "b"\n' + rule("r", "./run.sh", ', cwd = "a"')

    assert problems(tmp_path, text) == []
    (tmp_path / "a" / "run.sh").unlink()
    assert problems(tmp_path, text) == [
        "rules[0] (r).actions[0].command: ./run.sh not found"
        f" (relative to rules[0].actions[0].cwd {tmp_path / 'a'})"
    ]


def test_a_working_directory_that_does_not_exist_is_named(tmp_path):
    text = '[executor]\nworkdir = "gone"\n' + rule("r", "true")

    assert problems(tmp_path, text) == [
        f"rules[0] (r).actions[0].cwd: {tmp_path / 'gone'} is not a directory"
        " (from executor.workdir)"
    ]


def test_a_script_that_is_not_executable_is_refused(tmp_path):
    target = script(tmp_path / "deploy.sh", executable=False)

    assert problems(tmp_path, rule("r", "./deploy.sh")) == [
        f"rules[0] (r).actions[0].command: ./deploy.sh ({target}) is not executable (chmod +x)"
    ]


def test_a_directory_is_not_a_program(tmp_path):
    (tmp_path / "tools").mkdir()

    assert problems(tmp_path, rule("r", "./tools")) == [
        f"rules[0] (r).actions[0].command: ./tools ({tmp_path / 'tools'}) is a directory"
    ]


def test_a_bare_name_is_looked_up_on_the_path_the_action_will_have(tmp_path):
    script(tmp_path / "bin" / "mytool")
    bin_dir = str(tmp_path / "bin")

    assert problems(tmp_path, rule("r", "mytool"), {"PATH": bin_dir}) == []
    assert problems(tmp_path, rule("r", "mytool"), {"PATH": "/usr/bin:/bin"}) == [
        "rules[0] (r).actions[0].command: mytool not found on PATH (/usr/bin:/bin)"
    ]


def test_a_bare_name_is_not_looked_up_in_the_working_directory(tmp_path):
    script(tmp_path / "deploy.sh")

    assert problems(tmp_path, rule("r", "deploy.sh"), {"PATH": "/usr/bin:/bin"}) == [
        "rules[0] (r).actions[0].command: deploy.sh not found on PATH (/usr/bin:/bin)"
    ]


def test_the_path_of_the_actions_env_wins(tmp_path):
    script(tmp_path / "bin" / "mytool")
    text = rule("r", "mytool", f', env = {{ PATH = "{tmp_path / "bin"}" }}')

    assert problems(tmp_path, text, {"PATH": "/usr/bin:/bin"}) == []


def test_when_the_executor_does_not_pass_path_on_the_systems_default_is_searched(tmp_path):
    script(tmp_path / "bin" / "mytool")
    text = "[executor]\ninherit_env = []\n" + rule("a", "mytool") + rule("b", "sh")

    assert problems(tmp_path, text, {"PATH": str(tmp_path / "bin")}) == [
        f"rules[0] (a).actions[0].command: mytool not found on PATH ({os.defpath})"
    ]


def test_an_absolute_path_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "deploy.sh"

    assert problems(tmp_path, rule("r", str(missing))) == [
        f"rules[0] (r).actions[0].command: {missing} not found"
    ]


def test_webhook_actions_and_later_actions_are_checked_in_order(tmp_path):
    text = (
        '[[rules]]\nname = "r"\nactions = ['
        '{ kind = "webhook", url = "https://example.com/h" },'
        '{ kind = "shell", command = ["./a.sh"] }]\n'
    )

    [line] = problems(tmp_path, text)

    assert line.startswith("rules[0] (r).actions[1].command: ./a.sh not found")


# ------------------------------------------------------------------ the command


def test_config_check_exits_non_zero_and_says_which_program_is_missing(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, rule("deploy-main", "./examples/nope.sh"))

    with pytest.raises(SystemExit) as info:
        main(["config", "check", "--config", str(path)])

    assert info.value.code == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        "hookbus: config error: rules[0] (deploy-main).actions[0].command:"
        f" ./examples/nope.sh not found (relative to the config file's directory {tmp_path})\n"
    )


def test_config_check_passes_a_config_whose_programs_exist(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script(tmp_path / "examples" / "deploy.sh")
    path = write_config(tmp_path, rule("deploy-main", "./examples/deploy.sh") + rule("n", "true"))

    with pytest.raises(SystemExit) as info:
        main(["--config", str(path), "config", "check"])

    assert info.value.code == 0
    assert "config ok: 0 sources, 2 rules" in capsys.readouterr().out


def test_config_check_names_a_malformed_secrets_key_without_showing_it(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, rule("n", "true"))
    monkeypatch.setenv("HOOKBUS_SECRETS_KEY", "not-a-key-but-secret-looking")

    with pytest.raises(SystemExit) as info:
        main(["config", "check", "--config", str(path)])

    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "HOOKBUS_SECRETS_KEY: key 1: not a key" in err
    assert "not-a-key-but-secret-looking" not in err


def test_config_check_passes_a_good_secrets_key(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, rule("n", "true"))
    monkeypatch.setenv("HOOKBUS_SECRETS_KEY", sealing.new_key())

    with pytest.raises(SystemExit) as info:
        main(["config", "check", "--config", str(path)])

    assert info.value.code == 0
