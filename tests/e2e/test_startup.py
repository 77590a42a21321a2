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


SERVICES = ["receiver", "router", "executor", "dispatcher"]


@pytest.mark.parametrize("service", SERVICES)
def test_a_typo_in_its_own_section_stops_a_service_naming_the_key(
    tmp_path: Path, service: str
) -> None:
    cfg = tmp_path / "hookbus.toml"
    cfg.write_text(f"[{service}]\nprot = 8080\n")
    out = _start(f"hookbus_{service}", cfg)
    assert out.returncode == 2
    assert service in out.stderr
    assert "prot" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    ("text", "key"),
    [("[database]\nprot = 1\n", "database"), ("[reciever]\nport = 1\n", "reciever")],
)
def test_a_typo_in_the_shared_core_or_a_misspelt_section_stops_every_service(
    tmp_path: Path, service: str, text: str, key: str
) -> None:
    cfg = tmp_path / "hookbus.toml"
    cfg.write_text(text)
    out = _start(f"hookbus_{service}", cfg)
    assert out.returncode == 2
    assert key in out.stderr
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
