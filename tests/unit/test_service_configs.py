"""Each service decodes the shared core and its own sections, and holds only its secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_common.errors import ConfigError
from hookbus_dispatcher import config as dispatcher
from hookbus_executor import config as executor
from hookbus_receiver import config as receiver
from hookbus_router import config as router

SECRET = "receiver-only-secret-value"
CONFIG = """
prefix = "acme"
[receiver]
port = 9000
[sources.gh]
kind = "github"
secrets = [{ env = "GH_SECRET" }]
[sources.inline]
kind = "hookdeck"
secrets = [{ value = "@SECRET@" }]
[executor]
max_in_flight = 3
[[rules]]
name = "deploy"
source = "gh"
actions = [{ kind = "shell", command = ["true"] }]
""".replace("@SECRET@", SECRET)


def _every_value(obj: Any) -> list[Any]:
    """Everything reachable from a config object: its fields, nested structs, lists, dicts."""
    found: list[Any] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        found.append(item)
        if isinstance(item, msgspec.Struct):
            stack.extend(getattr(item, f) for f in item.__struct_fields__)
        elif isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "hookbus.toml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize("service", [router, executor, dispatcher])
def test_other_services_start_with_the_receivers_secret_variables_unset(
    config_file: Path, service: Any
) -> None:
    loaded = service.load(config_file, {})
    assert loaded.prefix == "acme"


def test_the_receiver_refuses_to_start_without_its_secret(config_file: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"sources\.gh\.secrets\[0\]: environment variable GH_SECRET"
    ):
        receiver.load(config_file, {})


@pytest.mark.parametrize("service", [router, executor, dispatcher])
def test_no_receiver_secret_is_reachable_from_another_services_settings(
    config_file: Path, service: Any
) -> None:
    loaded = service.load(config_file, {"GH_SECRET": "from-the-environment"})
    values = _every_value(loaded)
    texts = [v for v in values if isinstance(v, str)]
    assert SECRET not in texts
    assert "from-the-environment" not in texts
    assert not any(isinstance(v, receiver.Secret) for v in values)
    assert not hasattr(loaded, "sources")
    # The secret is in the file the service read; it just never reaches its settings.
    assert SECRET not in repr(loaded)


def test_the_receiver_holds_its_secrets_resolved(config_file: Path) -> None:
    loaded = receiver.load(config_file, {"GH_SECRET": "from-the-environment"})
    assert loaded.sources["gh"].secrets[0].bytes() == b"from-the-environment"
    assert loaded.sources["inline"].secrets[0].bytes() == SECRET.encode()


def test_each_service_reads_its_own_section_and_the_core(config_file: Path) -> None:
    assert executor.load(config_file, {}).executor.max_in_flight == 3
    assert receiver.load(config_file, {"GH_SECRET": "x"}).receiver.port == 9000
    routed = router.load(config_file, {})
    assert [r.name for r in routed.rules] == ["deploy"]
    # The router knows which sources exist, but not what they hold.
    assert routed.source_names == ["gh", "inline"]


def test_an_override_of_another_services_setting_is_not_this_services_business(
    config_file: Path,
) -> None:
    env = {"HOOKBUS_RECEIVER__PORT": "not-a-port", "HOOKBUS_EXECUTOR__MAX_IN_FLIGHT": "7"}
    assert executor.load(config_file, env).executor.max_in_flight == 7
    with pytest.raises(ConfigError, match=r"receiver\.port"):
        receiver.load(config_file, {**env, "GH_SECRET": "x"})
