"""The kernel's secret setting: one ``Secret`` (inline, env or file) and ``resolve_secret``,
which the receiver's sources and the dispatcher's endpoints and notifications share."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookbus_common.errors import ConfigError
from hookbus_common.settings import Secret, resolve_secret
from hookbus_dispatcher import config as dispatcher
from hookbus_receiver import config as receiver

KEY = "sources.gh.secrets[0]"


def resolve(secret: Secret, base: Path, env: dict[str, str] | None = None) -> Secret:
    return resolve_secret(secret, KEY, base, env or {})


def refused(secret: Secret, base: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(secret, base, env)
    return str(info.value)


def test_an_inline_secret_is_kept_as_given(tmp_path: Path) -> None:
    assert resolve(Secret(value=" inline-1 "), tmp_path).value == " inline-1 "


def test_a_secret_from_the_environment_is_its_variables_value_as_is(tmp_path: Path) -> None:
    secret = resolve(Secret(env="GH_SECRET"), tmp_path, {"GH_SECRET": "from-env \n"})

    assert secret.value == "from-env \n"
    assert secret.env == "GH_SECRET"  # where it came from stays, for the repr


@pytest.mark.parametrize("content", ["from-file\n", "from-file", "  from-file \r\n\n"])
def test_a_secret_file_is_read_trimmed(tmp_path: Path, content: str) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "gh").write_text(content)

    assert resolve(Secret(file="secrets/gh"), tmp_path).value == "from-file"


def test_a_secret_file_may_be_absolute_or_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gh").write_text("abs\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    elsewhere = tmp_path / "elsewhere"

    assert resolve(Secret(file=str(tmp_path / "gh")), elsewhere).value == "abs"
    assert resolve(Secret(file="~/gh"), elsewhere).value == "abs"


@pytest.mark.parametrize("env", [{}, {"GH_SECRET": ""}])
def test_an_unset_or_empty_variable_names_the_key_and_the_variable(
    tmp_path: Path, env: dict[str, str]
) -> None:
    msg = refused(Secret(env="GH_SECRET"), tmp_path, env)

    assert msg == f"{KEY}: environment variable GH_SECRET is not set or empty"


def test_a_missing_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    msg = refused(Secret(file="gone.txt"), tmp_path)

    assert msg.startswith(f"{KEY}: cannot read secret file {tmp_path / 'gone.txt'}: ")


@pytest.mark.parametrize("content", ["", "\n", "   \n\t\n"])
def test_an_empty_file_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "empty").write_text(content)

    assert refused(Secret(file="empty"), tmp_path) == (
        f"{KEY}: secret file {tmp_path / 'empty'} is empty"
    )


def test_an_empty_inline_secret_is_refused(tmp_path: Path) -> None:
    assert refused(Secret(value=""), tmp_path) == f"{KEY}: secret value is empty"


@pytest.mark.parametrize(
    "secret",
    [Secret(value="leaky-inline", env="GH_SECRET"), Secret(env="GH_SECRET", file="f"), Secret()],
)
def test_a_secret_comes_from_exactly_one_place(tmp_path: Path, secret: Secret) -> None:
    msg = refused(secret, tmp_path, {"GH_SECRET": "leaky-env"})

    assert msg == f"{KEY}: give exactly one of value, env or file"


def test_no_repr_or_str_shows_the_value(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("file-secret-3\n")
    env = {"GH_SECRET": "env-secret-2"}
    given = [Secret(value="inline-secret-1"), Secret(env="GH_SECRET"), Secret(file="f")]
    secrets = [resolve(s, tmp_path, env) for s in given]
    values = ["inline-secret-1", "env-secret-2", "file-secret-3"]

    assert [s.value for s in secrets] == values  # so the check below is not vacuous
    for secret in secrets:
        for text in (repr(secret), str(secret), f"{secret}", repr([secret])):
            assert not any(value in text for value in values)
    # What a person debugging needs: where each came from.
    assert [repr(s) for s in secrets] == [
        "Secret(inline, value=<redacted>)",
        "Secret(env='GH_SECRET', value=<redacted>)",
        "Secret(file='f', value=<redacted>)",
    ]


def test_a_services_own_kind_of_secret_resolves_to_its_own_kind(tmp_path: Path) -> None:
    secret = resolve_secret(receiver.Secret(env="GH_SECRET"), KEY, tmp_path, {"GH_SECRET": "s"})

    assert isinstance(secret, receiver.Secret)
    assert secret.bytes() == b"s"


def test_the_dispatcher_trims_a_variables_value(tmp_path: Path) -> None:
    # Its secrets are whsec_ keys, webhook URLs and SMTP passwords: never whitespace-edged.
    toml = 'url = { env = "HOOK_URL" }\ntype = "json"\n'
    (tmp_path / "hookbus.toml").write_text(f"[notifications.ops]\n{toml}")

    loaded = dispatcher.load(tmp_path / "hookbus.toml", {"HOOK_URL": " https://a.example/x\n"})

    url = loaded.notifications["ops"].url
    assert url is not None
    assert url.value == "https://a.example/x"
