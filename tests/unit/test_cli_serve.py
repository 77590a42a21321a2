"""``hookbus serve``: one service, its own config checked first."""

from __future__ import annotations

import pytest

from hookbus_cli.config import service_settings
from hookbus_cli.main import parser


def test_serve_checks_only_the_served_services_own_config(tmp_path, monkeypatch, capsys):
    """`hookbus serve router` starts without the receiver's secret variables, as
    `hookbus-router` does; `hookbus serve receiver` stops naming the missing one."""
    config = tmp_path / "hookbus.toml"
    config.write_text(
        '[sources.gh]\nkind = "github"\nsecrets = [{ env = "HOOKBUS_TEST_UNSET_SECRET" }]\n'
    )
    monkeypatch.delenv("HOOKBUS_TEST_UNSET_SECRET", raising=False)
    args = parser().parse_args(["--config", str(config), "serve", "router"])

    assert service_settings(args, "router").prefix == "hookbus"
    with pytest.raises(SystemExit) as info:
        service_settings(args, "receiver")
    assert "HOOKBUS_TEST_UNSET_SECRET" in str(info.value.code)
    assert "sources.gh" in str(info.value.code)
