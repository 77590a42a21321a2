"""Bad configuration stops a service at start with the key and the problem, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _start(module: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "module", ["hookbus_receiver", "hookbus_router", "hookbus_executor", "hookbus_dispatcher"]
)
def test_a_typo_stops_every_service_naming_the_key(tmp_path: Path, module: str) -> None:
    cfg = tmp_path / "hookbus.toml"
    cfg.write_text("[receiver]\nprot = 8080\n")
    out = _start(module, cfg)
    assert out.returncode == 2
    assert "receiver" in out.stderr
    assert "prot" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_unusable_jwt_key_file_stops_the_receiver_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "keys.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"
    )
    cfg = tmp_path / "hookbus.toml"
    cfg.write_text('[sources.ci]\nkind = "jwt"\nkey_file = "keys.pem"\n')
    out = _start("hookbus_receiver", cfg)
    assert out.returncode == 2, out.stderr
    assert "sources.ci" in out.stderr
    assert "Traceback" not in out.stderr
