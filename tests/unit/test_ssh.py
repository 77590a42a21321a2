"""The SSH action without a server: the command line it sends (quoting, the exported
environment, the pid marker), its config's checks, the router's action and the job spec."""

from __future__ import annotations

import subprocess
from pathlib import Path

import asyncssh
import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_executor import config as executor_config
from hookbus_executor.ssh import signal_number, ssh_outcome
from hookbus_executor.sshcommand import (
    MARKER_SEARCH_BYTES,
    MarkerReader,
    kill_command,
    remote_command,
    valid_env_name,
)
from hookbus_router import config as router_config
from hookbus_router.config import Rule, SshAction
from hookbus_router.routing import route

HOSTILE = [
    "plain",
    "two words",
    "it's",
    '"double"',
    "$(touch /tmp/pwned)",
    "`id`",
    "$HOME",
    "a;b|c&d",
    "new\nline",
    "back\\slash",
    "*",
    "",
    "-n",
    "ünïcödé",
]

# ------------------------------------------------------------------ the command line


def _run_locally(command: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """What a POSIX login shell makes of the command line (as sshd runs it: sh -c)."""
    return subprocess.run(
        ["/bin/sh", "-c", command], input=stdin, capture_output=True, check=False, env={}
    )


def test_every_argument_reaches_the_program_as_one_word_unexpanded(tmp_path: Path) -> None:
    command = remote_command(
        ["python3", "-c", "import sys; print(repr(sys.argv[1:]))", *HOSTILE], {}, "n0nce"
    )
    done = _run_locally(command)

    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == repr(HOSTILE)
    assert not Path("/tmp/pwned").exists()


def test_the_environment_is_exported_with_its_values_unexpanded() -> None:
    env = {f"V{i}": v for i, v in enumerate(HOSTILE)}
    command = remote_command(
        ["python3", "-c", "import os, sys; print(repr([os.environ[k] for k in sys.argv[1:]]))",
         *env],
        env,
        "n0nce",
    )  # fmt: skip
    done = _run_locally(command)

    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == repr(HOSTILE)


def test_the_shell_reports_the_pid_that_the_program_then_runs_as() -> None:
    command = remote_command(["sh", "-c", "echo $$"], {"A": "1"}, "hookbus-pid-abc")
    done = _run_locally(command)

    marker, pid = done.stderr.decode().split()
    assert marker == "hookbus-pid-abc"
    assert done.stdout.decode().strip() == pid  # exec: the program is the shell's process


def test_the_command_line_is_quoted_words_and_nothing_else() -> None:
    command = remote_command(["deploy", "--tag", "x y"], {"TAG": "v1'2"}, "n")

    assert command == (
        "printf '%s %s\\n' n \"$$\" >&2; export TAG='v1'\"'\"'2'; exec deploy --tag 'x y'"
    )


@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "A=B", "", "$(x)", "A;B"])
def test_an_environment_name_a_shell_cannot_export_is_refused(name: str) -> None:
    assert not valid_env_name(name)
    with pytest.raises(ValueError, match="cannot export"):
        remote_command(["true"], {name: "v"}, "n")


def test_an_empty_or_string_argv_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        remote_command([], {}, "n")
    with pytest.raises(TypeError):
        remote_command("rm -rf /", {}, "n")


def test_kill_command_signals_the_group_then_the_process() -> None:
    assert kill_command(1234, "TERM") == (
        "kill -s TERM -- -1234 2>/dev/null; kill -s TERM 1234 2>/dev/null; true"
    )
    with pytest.raises(ValueError, match="refusing"):
        kill_command(1, "KILL")
    with pytest.raises(ValueError, match="unexpected"):
        kill_command(1234, "HUP; rm -rf /")


def test_kill_command_parses_in_dash_and_bash() -> None:
    # A process group that does not exist: each shell must parse the line and say so.
    for shell in ("/bin/sh", "/bin/bash"):
        if not Path(shell).exists():
            continue
        done = subprocess.run(
            [shell, "-c", kill_command(4_000_000, "KILL").replace(" 2>/dev/null", "")],
            capture_output=True, check=False,
        )  # fmt: skip
        assert b"No such process" in done.stderr, (shell, done.stderr)
        assert b"Illegal" not in done.stderr


# ----------------------------------------------------------------------- the marker


def test_the_marker_is_taken_out_of_stderr_even_split_across_chunks() -> None:
    reader = MarkerReader("hookbus-pid-x")
    out = reader.feed(b"motd line\nhookbus-p") + reader.feed(b"id-x 4242") + reader.feed(b"\nerr")

    assert out == b"motd line\nerr"
    assert reader.pid == 4242
    assert reader.feed(b"hookbus-pid-x 1\n") == b"hookbus-pid-x 1\n"  # only the first


def test_stderr_without_a_marker_is_handed_on_past_the_search_window() -> None:
    reader = MarkerReader("hookbus-pid-x")
    chunk = b"e" * (MARKER_SEARCH_BYTES + 1)

    assert reader.feed(chunk) == chunk
    assert reader.pid is None
    assert reader.feed(b"more") == b"more"


def test_what_was_held_back_is_flushed_at_the_end() -> None:
    reader = MarkerReader("hookbus-pid-x")
    assert reader.feed(b"short") == b""
    assert reader.flush() == b"short"
    assert reader.pid is None


def test_signals_are_numbered_as_the_shell_action_numbers_them() -> None:
    assert signal_number("KILL") == 9
    assert signal_number("TERM") == 15
    assert signal_number("NOPE") is None
    assert signal_number(None) is None


def test_outcomes_are_named_for_the_metrics() -> None:
    from hookbus_executor.shell import ShellResult

    base = {"signal": None, "duration_ms": 1.0, "output": "", "output_bytes": 0}
    ok = ShellResult(exit_code=0, timed_out=False, truncated=False, **base)  # type: ignore[arg-type]
    assert ssh_outcome(ok) == "succeeded"
    assert ssh_outcome(msgspec.structs.replace(ok, exit_code=1)) == "failed"
    assert ssh_outcome(msgspec.structs.replace(ok, timed_out=True)) == "timed_out"
    assert ssh_outcome(msgspec.structs.replace(ok, stopped=True)) == "stopped"


# ----------------------------------------------------------------- executor config


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh"))
    return path


FP = "SHA256:" + "A" * 43


def _load_executor(tmp_path: Path, host_toml: str, env: dict[str, str] | None = None) -> None:
    path = tmp_path / "hookbus.toml"
    path.write_text(host_toml)
    executor_config.load(path, env or {})


def _host(key_file: Path, extra: str = "", trust: str = f'host_key_fingerprint = "{FP}"') -> str:
    return (
        f'[executor.ssh.hosts.web1]\nhost = "10.0.0.5"\nuser = "deploy"\n'
        f'key_file = "{key_file}"\n{trust}\n{extra}\n'
    )


def test_a_host_with_a_key_file_and_a_pinned_fingerprint_loads(
    tmp_path: Path, key_file: Path
) -> None:
    path = tmp_path / "hookbus.toml"
    path.write_text(_host(key_file, "port = 2222\nmax_sessions = 2"))
    config = executor_config.load(path, {})

    web1 = config.executor.ssh.hosts["web1"]
    assert (web1.host, web1.port, web1.user, web1.max_sessions) == ("10.0.0.5", 2222, "deploy", 2)


def test_a_key_from_the_environment_loads_and_is_not_in_the_settings(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh").decode()
    path = tmp_path / "hookbus.toml"
    path.write_text(
        '[executor.ssh.hosts.web1]\nhost = "h"\nuser = "u"\nkey_env = "WEB1_KEY"\n'
        f'host_key_fingerprint = "{FP}"\n'
    )
    config = executor_config.load(path, {"WEB1_KEY": key})

    assert "PRIVATE KEY" not in msgspec.json.encode(config).decode()


@pytest.mark.parametrize(
    ("host_toml", "key", "problem"),
    [
        ('key_env = "K"', "web1", "exactly one of key_file and key_env"),
        ("", "web1", "exactly one of known_hosts"),
        (
            'insecure_accept_unknown_host_key = true\nknown_hosts = "kh"',
            "web1",
            "exactly one of known_hosts",
        ),
        ('jump = "bastion"', "web1.jump", "no host named 'bastion'"),
        ("port = 70000", "port", "<= 65535"),
        ("max_sessions = 0", "max_sessions", ">= 1"),
        ("password = 'x'", "password", "unknown field"),
    ],
)
def test_bad_host_settings_are_refused_naming_the_key(
    tmp_path: Path, key_file: Path, host_toml: str, key: str, problem: str
) -> None:
    trust = "" if "known_hosts" in problem else f'host_key_fingerprint = "{FP}"'
    with pytest.raises(ConfigError) as info:
        _load_executor(tmp_path, _host(key_file, host_toml, trust))
    assert key in str(info.value)
    assert problem in str(info.value)


def test_a_malformed_fingerprint_is_refused(tmp_path: Path, key_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"web1\.host_key_fingerprint: expected SHA256:"):
        _load_executor(tmp_path, _host(key_file, trust='host_key_fingerprint = "MD5:aa:bb"'))


def test_jump_hosts_in_a_circle_are_refused(tmp_path: Path, key_file: Path) -> None:
    text = _host(key_file, 'jump = "b"') + (
        f'[executor.ssh.hosts.b]\nhost = "h"\nuser = "u"\nkey_file = "{key_file}"\n'
        f'host_key_fingerprint = "{FP}"\njump = "web1"\n'
    )
    with pytest.raises(ConfigError, match="circle"):
        _load_executor(tmp_path, text)


def test_a_missing_or_bad_key_stops_the_executor_without_showing_the_key(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"web1\.key_file: cannot read"):
        _load_executor(tmp_path, _host(tmp_path / "nope"))
    bad = tmp_path / "bad_key"
    bad.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LXN0dWZm\n")
    with pytest.raises(ConfigError) as info:
        _load_executor(tmp_path, _host(bad))
    assert "web1.key_file: not a usable private key" in str(info.value)
    assert "c2VjcmV0LXN0dWZm" not in str(info.value)
    text = (
        '[executor.ssh.hosts.web1]\nhost = "h"\nuser = "u"\nkey_env = "WEB1_KEY"\n'
        f'host_key_fingerprint = "{FP}"\n'
    )
    with pytest.raises(ConfigError, match=r"web1\.key_env: the environment variable WEB1_KEY"):
        _load_executor(tmp_path, text, {})


def test_an_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "enc"
    path.write_bytes(key.export_private_key("pkcs8-pem", passphrase="pw"))
    with pytest.raises(ConfigError, match="not a usable private key"):
        _load_executor(tmp_path, _host(path))
    _load_executor(
        tmp_path, _host(path, 'key_passphrase_env = "PW"'), {"PW": "pw"}
    )  # loads: no error


def test_an_unreadable_known_hosts_file_is_refused(tmp_path: Path, key_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"web1\.known_hosts: cannot read"):
        _load_executor(tmp_path, _host(key_file, trust=f'known_hosts = "{tmp_path}/kh"'))


# ------------------------------------------------------------ router and the contract

SSH_HOST = (
    '[executor.ssh.hosts.web1]\nhost = "h"\nuser = "u"\nkey_env = "K"\n'
    f'host_key_fingerprint = "{FP}"\n'
)


def _load_router(tmp_path: Path, action: str) -> router_config.RouterConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(f'{SSH_HOST}[[rules]]\nname = "deploy"\nactions = [{action}]\n')
    return router_config.load(path, {})


def test_the_router_knows_host_names_only(tmp_path: Path) -> None:
    config = _load_router(
        tmp_path, '{ kind = "ssh", host = "web1", command = ["deploy", "--tag", "x"] }'
    )
    assert config.ssh_host_names == ["web1"]
    action = config.rules[0].actions[0]
    assert isinstance(action, SshAction)
    assert (action.host, action.payload, action.timeout) == ("web1", "stdin", 300.0)


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ('{ kind = "ssh", host = "web2", command = ["x"] }', "no ssh host named 'web2'"),
        ('{ kind = "ssh", host = "web1", command = [] }', "length >= 1"),
        ('{ kind = "ssh", host = "web1", command = ["x"], env = { "A-B" = "1" } }', "env:"),
        ('{ kind = "ssh", host = "web1", command = ["x"], payload = "file" }', "payload"),
        ('{ kind = "ssh", host = "web1", command = ["x"], key = "k" }', "unknown field"),
    ],
)
def test_bad_ssh_actions_are_refused(tmp_path: Path, action: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="rules") as info:
        _load_router(tmp_path, action)
    assert problem in str(info.value)


def test_an_ssh_action_becomes_a_job_request_naming_the_host() -> None:
    hook = ev.make_event(
        ev.WebhookReceived(source="github", kind="github", event_type="push",
                           payload=msgspec.Raw(b"{}"), repository="acme/app"),
        source="/hookbus/receiver/github",
    )  # fmt: skip
    action = SshAction(host="web1", command=["deploy"], env={"A": "1"}, timeout=60.0,
                       payload="none", on_interrupt="retry")  # fmt: skip
    _, job = route([Rule(name="deploy", actions=[action])], hook)

    data = job.data
    assert isinstance(data, ev.JobRequestedV2)
    assert data.kind == "ssh"
    assert data.spec == ev.SshSpec(host="web1", command=["deploy"], env={"A": "1"},
                                   timeout=60.0, payload="none")  # fmt: skip
    assert data.on_interrupt == "retry"
    assert job.bus_subject("hookbus") == "hookbus.job.requested.ssh"
    assert data.context["HOOKBUS_REPOSITORY"] == "acme/app"
    decoded = msgspec.json.decode(msgspec.json.encode(data), type=ev.JobRequestedV2)
    assert decoded == data
