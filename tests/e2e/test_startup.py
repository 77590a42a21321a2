"""Bad configuration stops a service at start with the key and the problem, no traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import Servers

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


def test_the_executor_starts_with_the_receivers_secret_variables_unset(
    make_system: Any, servers: Servers
) -> None:
    """The executor runs people's scripts: it never reads, let alone needs, a webhook secret."""
    system = make_system(
        '[sources.gh]\nkind = "github"\nsecrets = [{ env = "HOOKBUS_TEST_GH_SECRET_UNSET" }]\n',
        servers,
    )
    assert "HOOKBUS_TEST_GH_SECRET_UNSET" not in system.env
    system.start("executor", "router", "dispatcher")
    for name in ("executor", "router", "dispatcher"):
        port = system.env[f"HOOKBUS_{name.upper()}__HEALTH_PORT"]
        deadline = time.monotonic() + 30
        while True:
            proc = system.procs[name]
            assert proc.poll() is None, f"{name} exited: {system.log(name)}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{name} not ready: {system.log(name)}"
            time.sleep(0.05)
