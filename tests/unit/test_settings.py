"""load_settings: file < environment layering, validation errors that name the key, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hookbus_common.errors import ConfigError
from hookbus_common.settings import DatabaseSettings
from hookbus_receiver.config import GithubSource, ReceiverSettings, Secret
from hookbus_router.config import RouterSettings, ShellAction, WebhookAction

from ..installation import defaults
from ..installation import load_whole as load_settings

SHELL = 'actions = [{ kind = "shell", command = ["true"] }]'
GH_SOURCE = '[sources.gh]\nkind = "github"\nsecrets = [{ value = "gh-inline-secret" }]\n'


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def config(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "hookbus.toml", text)


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Any:
    return load_settings(config(tmp_path, text), env or {})


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


# ---------------------------------------------------------------- defaults and layering


def test_no_file_and_empty_env_gives_the_defaults(tmp_path, monkeypatch):
    # Without a path the loader looks for ./hookbus.toml; an empty directory has none.
    monkeypatch.chdir(tmp_path)

    settings = load_settings(None, {})

    assert settings.inst == defaults()
    assert settings.prefix == "hookbus"
    assert settings.receiver.port == 8080
    assert settings.database.url.startswith("postgresql://")
    assert settings.nats.url.startswith("nats://")
    assert settings.sources == {}
    assert settings.rules == []


def test_empty_file_gives_the_defaults_with_base_dir_of_the_file(tmp_path):
    settings = load(tmp_path, "")

    assert settings.receiver == ReceiverSettings()
    assert settings.database == DatabaseSettings()
    assert Path(settings.base_dir) == tmp_path.resolve()


def test_file_values_are_read(tmp_path):
    settings = load(
        tmp_path,
        'prefix = "staging"\n[receiver]\nhost = "0.0.0.0"\nport = 9000\n'
        '[log]\nlevel = "DEBUG"\nformat = "text"\n',
    )

    assert settings.prefix == "staging"
    assert settings.receiver.host == "0.0.0.0"
    assert settings.receiver.port == 9000
    assert settings.log.level == "DEBUG"
    assert settings.log.format == "text"
    # Untouched sections keep their defaults.
    assert settings.router == RouterSettings()


def test_hookbus_config_env_names_the_file_when_no_path_is_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write(tmp_path / "elsewhere.toml", "[receiver]\nport = 7777\n")

    settings = load_settings(None, {"HOOKBUS_CONFIG": str(cfg)})

    assert settings.receiver.port == 7777


def test_env_overrides_are_parsed_as_toml_values(tmp_path):
    settings = load(
        tmp_path,
        "[receiver]\nport = 9000\n",
        {
            "HOOKBUS_RECEIVER__PORT": "9100",
            "HOOKBUS_NATS__STREAM_MAX_AGE_DAYS": "0.5",
            "HOOKBUS_EXECUTOR__INHERIT_ENV": '["PATH", "FOO"]',
            "HOOKBUS_ROUTER__MAX_DELIVER": "3",
        },
    )

    assert settings.receiver.port == 9100  # the environment wins over the file
    assert settings.nats.stream_max_age_days == 0.5
    assert settings.executor.inherit_env == ["PATH", "FOO"]
    assert settings.router.max_deliver == 3


def test_env_values_that_are_not_toml_are_taken_as_text(tmp_path):
    settings = load(
        tmp_path,
        "",
        {
            "HOOKBUS_NATS__URL": "nats://nats.internal:4222",
            "HOOKBUS_RECEIVER__HOST": "0.0.0.0",
            "HOOKBUS_LOG__LEVEL": "WARNING",
        },
    )

    assert settings.nats.url == "nats://nats.internal:4222"
    assert settings.receiver.host == "0.0.0.0"
    assert settings.log.level == "WARNING"


def test_a_quoted_env_value_stays_text_even_when_it_looks_like_a_number(tmp_path):
    settings = load(tmp_path, "", {"HOOKBUS_PREFIX": '"2024"'})

    assert settings.prefix == "2024"


def test_env_override_reaches_into_a_named_source(tmp_path):
    settings = load(tmp_path, GH_SOURCE, {"HOOKBUS_SOURCES__GH__ALLOW_SHA1": "true"})

    assert settings.sources["gh"].allow_sha1 is True


def test_only_hookbus_prefixed_variables_are_read(tmp_path):
    env = {"PATH": "/usr/bin", "HOME": "/root", "RECEIVER__PORT": "1", "HOOKBUSRECEIVER": "x"}

    settings = load(tmp_path, "", env)

    assert settings.receiver.port == 8080


def test_hookbus_config_is_not_taken_for_a_setting(tmp_path):
    cfg = config(tmp_path, "[receiver]\nport = 9001\n")

    settings = load_settings(cfg, {"HOOKBUS_CONFIG": str(cfg)})

    assert settings.receiver.port == 9001


def test_database_url_alias_sets_the_database_url(tmp_path):
    settings = load(
        tmp_path,
        '[database]\nurl = "postgresql://file/db"\n',
        {"DATABASE_URL": "postgresql://alias/db"},
    )

    assert settings.database.url == "postgresql://alias/db"


@pytest.mark.parametrize("alias_first", [True, False])
def test_hookbus_database_url_wins_over_database_url(tmp_path, alias_first):
    pairs = [
        ("DATABASE_URL", "postgresql://alias/db"),
        ("HOOKBUS_DATABASE__URL", "postgresql://hookbus/db"),
    ]
    env = dict(pairs if alias_first else reversed(pairs))

    settings = load(tmp_path, "", env)

    assert settings.database.url == "postgresql://hookbus/db"


# ------------------------------------------------------------------------------ errors


def test_wrong_type_names_the_key_and_the_type(tmp_path):
    msg = config_error(tmp_path, '[receiver]\nport = "x"\n')

    assert "receiver.port" in msg
    assert "int" in msg
    assert "hookbus.toml" in msg  # which file it came from


def test_wrong_type_from_the_environment_names_the_key(tmp_path):
    msg = config_error(tmp_path, "", {"HOOKBUS_RECEIVER__PORT": "x"})

    assert "receiver.port" in msg
    assert "int" in msg


def test_unknown_key_is_an_error_naming_the_typo(tmp_path):
    msg = config_error(tmp_path, "[receiver]\nprot = 8081\n")

    assert "receiver" in msg
    assert "prot" in msg
    assert "unknown" in msg.lower()


def test_unknown_top_level_key_is_an_error(tmp_path):
    msg = config_error(tmp_path, 'prefx = "x"\n')

    assert "prefx" in msg


def test_unknown_key_in_the_environment_is_an_error(tmp_path):
    msg = config_error(tmp_path, "", {"HOOKBUS_RECEIVER__PROT": "8081"})

    assert "prot" in msg


def test_typo_inside_a_secret_names_the_field(tmp_path):
    msg = config_error(tmp_path, '[sources.gh]\nkind = "github"\nsecrets = [{ valeu = "s" }]\n')

    assert "secrets[0]" in msg
    assert "valeu" in msg


def test_error_inside_a_source_names_the_source(tmp_path):
    text = (
        GH_SOURCE
        + '[sources.gl]\nkind = "github"\nallow_sha1 = "yes"\nsecrets = [{ value = "s" }]\n'
    )

    msg = config_error(tmp_path, text)

    assert "sources.gl.allow_sha1" in msg


@pytest.mark.parametrize(
    ("text", "key", "bound"),
    [
        ("[receiver]\nport = 70000\n", "receiver.port", "65535"),
        ("[receiver]\nport = -1\n", "receiver.port", "0"),
        ("[router]\nmax_deliver = 0\n", "router.max_deliver", "1"),
        ("[nats]\nstream_replicas = 9\n", "nats.stream_replicas", "5"),
    ],
)
def test_out_of_range_value_names_the_key_and_the_bound(tmp_path, text, key, bound):
    msg = config_error(tmp_path, text)

    assert key in msg
    assert bound in msg


def test_a_prefix_that_is_not_one_subject_token_is_refused(tmp_path):
    # A dot or wildcard in the prefix would change the meaning of every subject.
    msg = config_error(tmp_path, 'prefix = "a.b"\n')

    assert "prefix" in msg


def test_invalid_toml_names_the_file_and_says_so(tmp_path):
    msg = config_error(tmp_path, "[receiver\nport = 1\n")

    assert "hookbus.toml" in msg
    assert "TOML" in msg
    assert "line 1" in msg


def test_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match="not found") as info:
        load_settings(missing, {})

    assert "nope.toml" in str(info.value)


def test_a_config_path_that_cannot_be_read_is_a_config_error(tmp_path):
    directory = tmp_path / "conf.d"
    directory.mkdir()

    with pytest.raises(ConfigError, match=r"conf\.d"):
        load_settings(directory, {})


def test_an_env_path_that_is_not_a_table_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="HOOKBUS_PREFIX__X"):
        load(tmp_path, 'prefix = "hookbus"\n', {"HOOKBUS_PREFIX__X": "1"})


def test_rule_without_actions_is_refused(tmp_path):
    msg = config_error(tmp_path, '[[rules]]\nname = "r"\nactions = []\n')

    assert "rules[0].actions" in msg


def test_unknown_action_kind_is_refused(tmp_path):
    msg = config_error(
        tmp_path, '[[rules]]\nname = "r"\nactions = [{ kind = "telnet", command = ["x"] }]\n'
    )

    assert "rules[0].actions[0]" in msg
    assert "telnet" in msg


def test_rule_naming_an_unknown_source_is_refused(tmp_path):
    msg = config_error(tmp_path, GH_SOURCE + f'[[rules]]\nname = "r"\nsource = "gl"\n{SHELL}\n')

    assert "rules[0].source" in msg
    assert "'gl'" in msg


def test_rule_source_may_be_a_glob_or_a_configured_source(tmp_path):
    settings = load(
        tmp_path,
        GH_SOURCE
        + f'[[rules]]\nname = "a"\nsource = "gh"\n{SHELL}\n'
        + f'[[rules]]\nname = "b"\nsource = "g*"\n{SHELL}\n',
    )

    assert [r.source for r in settings.rules] == ["gh", "g*"]


def test_duplicate_rule_names_are_refused(tmp_path):
    text = f'[[rules]]\nname = "deploy"\n{SHELL}\n[[rules]]\nname = "other"\n{SHELL}\n'
    text += f'[[rules]]\nname = "deploy"\n{SHELL}\n'

    msg = config_error(tmp_path, text)

    assert "'deploy'" in msg
    assert "more than once" in msg


# ---------------------------------------------------------------------------- rules


def test_rules_are_decoded_into_typed_actions(tmp_path):
    settings = load(
        tmp_path,
        GH_SOURCE
        + '[[rules]]\nname = "deploy-main"\nsource = "gh"\nevent = "push"\nbranch = "main"\n'
        'actions = [\n  { kind = "shell", command = ["./deploy.sh", "--fast"], timeout = 60 },\n'
        '  { kind = "webhook", url = "https://example.com/hook" },\n]\n',
    )

    (rule,) = settings.rules
    assert rule.name == "deploy-main"
    assert (rule.source, rule.event, rule.repository, rule.branch) == ("gh", "push", "*", "main")
    assert rule.enabled is True
    shell, webhook = rule.actions
    assert isinstance(shell, ShellAction)
    assert shell.command == ["./deploy.sh", "--fast"]
    assert shell.timeout == 60
    assert isinstance(webhook, WebhookAction)
    assert webhook.url == "https://example.com/hook"
    assert webhook.method == "POST"


def test_rules_file_adds_its_rules_after_the_main_files(tmp_path, monkeypatch):
    # A relative rules_file is found next to the config file, not in the working directory.
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(
        tmp_path / "rules.toml",
        f'[[rules]]\nname = "extra-1"\n{SHELL}\n[[rules]]\nname = "extra-2"\n{SHELL}\n',
    )

    settings = load(
        tmp_path, f'[router]\nrules_file = "rules.toml"\n[[rules]]\nname = "main"\n{SHELL}\n'
    )

    assert [r.name for r in settings.rules] == ["main", "extra-1", "extra-2"]


def test_rules_file_may_hold_only_rules(tmp_path):
    write(tmp_path / "rules.toml", f'[receiver]\nport = 1\n[[rules]]\nname = "x"\n{SHELL}\n')

    msg = config_error(tmp_path, '[router]\nrules_file = "rules.toml"\n')

    assert "router.rules_file" in msg
    assert "receiver" in msg


def test_missing_rules_file_names_the_setting(tmp_path):
    msg = config_error(tmp_path, '[router]\nrules_file = "missing-rules.toml"\n')

    assert "router.rules_file" in msg
    assert "missing-rules.toml" in msg


def test_invalid_toml_in_rules_file_names_the_setting(tmp_path):
    write(tmp_path / "rules.toml", "[[rules]\n")

    msg = config_error(tmp_path, '[router]\nrules_file = "rules.toml"\n')

    assert "router.rules_file" in msg
    assert "TOML" in msg


def test_duplicate_name_across_main_and_rules_file_is_refused(tmp_path):
    write(tmp_path / "rules.toml", f'[[rules]]\nname = "dup"\n{SHELL}\n')

    msg = config_error(
        tmp_path, f'[router]\nrules_file = "rules.toml"\n[[rules]]\nname = "dup"\n{SHELL}\n'
    )

    assert "'dup'" in msg


# --------------------------------------------------------------------------- secrets


def test_secrets_are_resolved_from_value_env_and_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # a relative secret file is found next to the config
    (tmp_path / "secrets").mkdir()
    write(tmp_path / "secrets" / "gh", "from-a-file\n")  # trailing newline as `echo` leaves it

    settings = load(
        tmp_path,
        '[sources.gh]\nkind = "github"\nsecrets = [\n'
        '  { value = "inline-one" },\n  { env = "GH_SECRET" },\n  { file = "secrets/gh" },\n]\n',
        {"GH_SECRET": "from-the-env"},
    )

    source = settings.sources["gh"]
    assert isinstance(source, GithubSource)
    assert [s.bytes() for s in source.secrets] == [b"inline-one", b"from-the-env", b"from-a-file"]


def test_secret_file_may_be_absolute(tmp_path):
    secret_file = write(tmp_path / "abs-secret", "absolute-secret")

    settings = load(
        tmp_path, f'[sources.gh]\nkind = "github"\nsecrets = [{{ file = "{secret_file}" }}]\n'
    )

    assert settings.sources["gh"].secrets[0].bytes() == b"absolute-secret"


def test_secret_from_an_unset_env_var_names_the_key_and_the_variable(tmp_path):
    text = '[sources.gh]\nkind = "github"\nsecrets = [{ env = "GH_SECRET" }]\n'

    msg = config_error(tmp_path, text, {"OTHER": "x"})

    assert "sources.gh.secrets[0]" in msg
    assert "GH_SECRET" in msg


def test_secret_from_an_empty_env_var_is_refused(tmp_path):
    text = '[sources.gh]\nkind = "github"\nsecrets = [{ env = "GH_SECRET" }]\n'

    msg = config_error(tmp_path, text, {"GH_SECRET": ""})

    assert "GH_SECRET" in msg


def test_missing_secret_file_names_the_key_and_the_file(tmp_path):
    text = '[sources.gh]\nkind = "github"\nsecrets = [{ value = "ok" }, { file = "gone.txt" }]\n'

    msg = config_error(tmp_path, text)

    assert "sources.gh.secrets[1]" in msg
    assert "gone.txt" in msg


@pytest.mark.parametrize("content", ["", "\n", "   \n\t\n"])
def test_empty_secret_file_is_refused(tmp_path, content):
    write(tmp_path / "empty", content)

    msg = config_error(tmp_path, '[sources.gh]\nkind = "github"\nsecrets = [{ file = "empty" }]\n')

    assert "sources.gh.secrets[0]" in msg
    assert "empty" in msg


def test_empty_inline_secret_is_refused(tmp_path):
    msg = config_error(tmp_path, '[sources.gh]\nkind = "github"\nsecrets = [{ value = "" }]\n')

    assert "sources.gh.secrets[0]" in msg


@pytest.mark.parametrize("secrets", ["", "secrets = []\n"])
def test_source_without_secrets_is_refused(tmp_path, secrets):
    msg = config_error(tmp_path, f'[sources.gh]\nkind = "github"\n{secrets}')

    assert "sources.gh.secrets" in msg
    assert "secret" in msg


@pytest.mark.parametrize(
    "entry",
    ['{ value = "leaky-inline", env = "GH_SECRET" }', '{ env = "GH_SECRET", file = "f" }', "{}"],
)
def test_secret_must_come_from_exactly_one_place(tmp_path, entry):
    text = f'[sources.gh]\nkind = "github"\nsecrets = [{entry}]\n'

    msg = config_error(tmp_path, text, {"GH_SECRET": "x"})

    assert "sources.gh.secrets[0]" in msg
    assert "exactly one" in msg
    assert "leaky-inline" not in msg


def test_no_repr_or_str_shows_a_secret_value(tmp_path):
    write(tmp_path / "secret-file", "file-secret-value-3\n")
    settings = load(
        tmp_path,
        '[sources.gh]\nkind = "github"\nsecrets = [\n'
        '  { value = "inline-secret-value-1" },\n  { env = "GH_SECRET" },\n'
        '  { file = "secret-file" },\n]\n',
        {"GH_SECRET": "env-secret-value-2"},
    )
    values = ["inline-secret-value-1", "env-secret-value-2", "file-secret-value-3"]
    source = settings.sources["gh"]
    shown = [repr(settings), str(settings), repr(source), str(source), repr(source.secrets)]
    for secret in source.secrets:
        shown += [repr(secret), str(secret), f"{secret}", f"{secret!r}"]

    # The values really are there (so the check below is not vacuous) ...
    assert [s.bytes().decode() for s in source.secrets] == values
    # ... and no way of printing the settings shows them.
    for text in shown:
        for value in values:
            assert value not in text
    # The repr still says where a secret came from, which is what a person debugging needs.
    assert "GH_SECRET" in repr(source.secrets[1])


def test_an_unresolved_secret_cannot_be_used():
    with pytest.raises(ConfigError):
        Secret(env="X").bytes()


def test_hookbus_variables_that_name_no_section_are_left_alone(tmp_path):
    # A user's own secret kept in HOOKBUS_GITHUB_SECRET (or the test suite's
    # HOOKBUS_TEST_BACKEND) is not a setting and must not break loading.
    text = GH_SOURCE.replace('{ value = "gh-inline-secret" }', '{ env = "HOOKBUS_GITHUB_SECRET" }')
    settings = load(
        tmp_path, text, {"HOOKBUS_GITHUB_SECRET": "from-env", "HOOKBUS_TEST_BACKEND": "x"}
    )

    assert settings.sources["gh"].secrets[0].bytes() == b"from-env"


def test_repr_of_settings_hides_passwords_in_urls(tmp_path):
    env = {
        "HOOKBUS_DATABASE__URL": "postgresql://hookbus:pg-pass-123@db:5432/hookbus",
        "HOOKBUS_NATS__URL": "nats://nats-token-456@nats:4222",
    }
    settings = load(tmp_path, "", env)

    shown = repr(settings)
    assert "pg-pass-123" not in shown
    assert "nats-token-456" not in shown
    assert "db:5432" in shown
    assert settings.database.url == env["HOOKBUS_DATABASE__URL"]
