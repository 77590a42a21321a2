"""The ``hookbus`` argument parser: every command, and options before or after it."""

from __future__ import annotations

import pytest

from hookbus_cli.configcheck import cmd_config_check
from hookbus_cli.events import cmd_events
from hookbus_cli.main import parser
from hookbus_cli.serve import SERVICES, cmd_serve

# ---------------------------------------------------------------------------- parser


def test_up_is_accepted_with_a_default_nats_port():
    args = parser().parse_args(["up"])

    assert args.command == "up"
    assert isinstance(args.nats_port, int)
    assert callable(args.func)


def test_up_takes_a_nats_port():
    assert parser().parse_args(["up", "--nats-port", "4333"]).nats_port == 4333


@pytest.mark.parametrize("service", SERVICES)
def test_serve_accepts_each_service(service):
    args = parser().parse_args(["serve", service])

    assert args.service == service
    assert args.func is cmd_serve


def test_every_service_can_be_served():
    assert set(SERVICES) == {"receiver", "router", "executor", "dispatcher", "api"}


def test_serve_refuses_an_unknown_service(capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["serve", "nosuch"])

    assert info.value.code == 2
    assert "nosuch" in capsys.readouterr().err


def test_events_chain_takes_an_id():
    args = parser().parse_args(["events", "--chain", "evt_123"])

    assert args.chain == "evt_123"
    assert args.func is cmd_events
    assert args.json is False


def test_events_without_chain_lists_recent():
    args = parser().parse_args(["events", "--limit", "5", "--type", "io.hookbus.job.", "--json"])

    assert args.chain is None
    assert args.limit == 5
    assert args.type == "io.hookbus.job."
    assert args.json is True


def test_migrate_is_accepted():
    args = parser().parse_args(["migrate"])

    assert args.command == "migrate"
    assert callable(args.func)


def test_config_check_is_accepted():
    args = parser().parse_args(["config", "check"])

    assert args.func is cmd_config_check


def test_global_config_option_comes_before_the_command():
    args = parser().parse_args(["--config", "/etc/hookbus.toml", "config", "check"])

    assert args.config == "/etc/hookbus.toml"


@pytest.mark.parametrize("argv", [[], ["config"], ["serve"], ["nosuch"]])
def test_incomplete_or_unknown_commands_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)

    assert info.value.code == 2
    assert capsys.readouterr().err


# ------------------------------------------------------- options before or after the command


@pytest.mark.parametrize(
    "argv",
    [
        ["--data-dir", "state", "up"],
        ["up", "--data-dir", "state"],
        ["up", "--data-dir=state", "--nats-port", "4333"],
    ],
)
def test_data_dir_is_accepted_before_or_after_the_command(argv):
    args = parser().parse_args(argv)

    assert args.command == "up"
    assert args.data_dir == "state"


def test_data_dir_defaults_to_dot_hookbus_wherever_it_could_have_been_given():
    assert parser().parse_args(["up"]).data_dir == ".hookbus"
    assert parser().parse_args(["events"]).data_dir == ".hookbus"


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "check", "--config", "/etc/hookbus.toml"],
        ["events", "-c", "/etc/hookbus.toml", "--limit", "3"],
        ["partners", "list", "--config", "/etc/hookbus.toml"],
        ["serve", "router", "--config", "/etc/hookbus.toml"],
    ],
)
def test_config_is_accepted_after_the_command_too(argv):
    assert parser().parse_args(argv).config == "/etc/hookbus.toml"


def test_an_option_given_before_the_command_is_kept_when_not_repeated_after_it():
    args = parser().parse_args(["--config", "a.toml", "--data-dir", "d", "events", "--limit", "3"])

    assert (args.config, args.data_dir) == ("a.toml", "d")


def test_the_option_after_the_command_wins_over_the_one_before():
    args = parser().parse_args(["--data-dir", "outer", "up", "--data-dir", "inner"])

    assert args.data_dir == "inner"
