"""``hookbus verify --selftest``: every scheme against the published vectors."""

from __future__ import annotations

import sys

import pytest

from hookbus_cli.main import main, parser
from hookbus_receiver import signatures


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def test_selftest_prints_every_scheme_and_passes(capsys):
    assert run(["verify", "--selftest"]) == 0

    out = capsys.readouterr().out
    names = [name for name, _, _ in signatures.selftest()]
    assert {"github-sha256", "standard-webhooks", "hookdeck", "jwt-hs256"} <= set(names)
    for name in names:
        assert f"PASS  {name}" in out
    assert f"{len(names)} of {len(names)} schemes passed" in out


def test_a_failing_scheme_fails_the_command_and_is_named(capsys, monkeypatch):
    rows = [("github-sha256", True, "ok"), ("hookdeck", False, "wrong secret was accepted")]
    monkeypatch.setattr(signatures, "selftest", lambda: rows)

    assert run(["verify", "--selftest"]) == 1

    out = capsys.readouterr().out
    assert "FAIL  hookdeck" in out
    assert "wrong secret was accepted" in out
    assert "1 of 2 schemes passed" in out


def test_without_the_receiver_installed_it_says_so(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "hookbus_receiver.signatures", None)  # import fails

    assert run(["verify", "--selftest"]) == 2

    assert "receiver is not installed" in capsys.readouterr().out


def test_verify_needs_the_selftest_flag(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["verify"])
