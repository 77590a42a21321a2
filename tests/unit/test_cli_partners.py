"""``hookbus partners`` and ``hookbus webhook-url``: the integration guide, what is shown, the commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hookbus_cli import partners as partners_cli
from hookbus_cli.config import ReceiverAddress
from hookbus_cli.main import parser
from hookbus_common.events import PartnerValidation
from hookbus_receiver import partnerstore as store
from hookbus_receiver.config import ReceiverSettings

# ----------------------------------------------------------------- for people


def partner(validation: PartnerValidation | None = None) -> store.Partner:
    now = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    return store.Partner(
        partner_id="ptn_01", name="Acme", description="", tenant="acme", status="ACTIVE",
        validation=validation or PartnerValidation(), token_id="tok_1",
        created_at=now, modified_at=now,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("receiver", "expected"),
    [
        (ReceiverSettings(public_url="https://hooks.example.com/"), "https://hooks.example.com"),
        (ReceiverSettings(host="0.0.0.0", port=9000), "http://127.0.0.1:9000"),
        (ReceiverSettings(host="10.0.0.5", port=8080), "http://10.0.0.5:8080"),
    ],
)
def test_base_url_prefers_the_public_url(receiver, expected):
    assert receiver.base_url() == expected


def test_integration_guide_has_the_url_a_curl_example_and_the_checks():
    settings = ReceiverAddress(receiver=ReceiverSettings(public_url="https://hooks.example.com"))
    p = partner(PartnerValidation(required=["order.id"], schema={"type": "object"}))

    guide = partners_cli.integration_guide(settings, p, "TOKEN123")

    assert "https://hooks.example.com/webhook/v1/TOKEN123" in guide
    assert "curl -i -X POST 'https://hooks.example.com/webhook/v1/TOKEN123'" in guide
    assert "Idempotency-Key" in guide
    assert "required fields: order.id" in guide
    assert 'JSON Schema: {"type":"object"}' in guide


def _idempotency_header(guide: str) -> str:
    """The curl example's Idempotency-Key argument, exactly as the guide shows it."""
    [line] = [ln for ln in guide.splitlines() if "-H" in ln and "Idempotency-Key" in ln]
    return line.strip().removeprefix("-H ").removesuffix("\\").strip()


def _expand(arg: str, path: str | None = None) -> str:
    """The header as a shell expands it where a partner pastes the example."""
    env = {**os.environ, "PATH": path} if path is not None else None
    out = subprocess.run(
        ["/bin/sh", "-c", f"printf '%s' {arg}"], env=env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return out.stdout


UUID = re.compile(r"^Idempotency-Key: [0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$")


def test_the_guides_idempotency_key_is_new_each_time_the_example_runs():
    """A copied example must not send one key for every event: all but the first would
    be taken for retries and dropped."""
    guide = partners_cli.integration_guide(ReceiverAddress(), partner(), "TOKEN123")
    arg = _idempotency_header(guide)

    first, second = _expand(arg), _expand(arg)

    assert UUID.match(first), first
    assert UUID.match(second), second
    assert first != second
    assert "<" not in arg


@pytest.mark.skipif(
    not Path("/proc/sys/kernel/random/uuid").exists(), reason="the Linux fallback needs /proc"
)
def test_the_guides_idempotency_key_works_without_uuidgen(tmp_path):
    # A PATH with cat but no uuidgen, as in a minimal Linux container.
    (tmp_path / "cat").symlink_to(shutil.which("cat") or "/bin/cat")
    arg = _idempotency_header(
        partners_cli.integration_guide(ReceiverAddress(), partner(), "TOKEN123")
    )

    first, second = _expand(arg, str(tmp_path)), _expand(arg, str(tmp_path))

    assert UUID.match(first), first
    assert first != second


def test_the_guide_says_what_the_idempotency_key_is_for():
    guide = partners_cli.integration_guide(ReceiverAddress(), partner(), "TOKEN123")

    [line] = [ln for ln in guide.splitlines() if ln.startswith("Idempotency-Key:")]
    assert "each event" in line
    assert "retries" in line


def test_show_never_prints_a_url():
    text = partners_cli.show(partner())
    assert "ptn_01" in text
    assert "shown only when created or rotated" in text
    assert "none (any JSON object is accepted)" in text


# ------------------------------------------------------------------------- CLI


def test_partner_and_webhook_url_commands_parse():
    args = parser().parse_args(
        ["partners", "add", "acme", "--require", "a.b", "--require", "c", "--inactive"]
    )
    assert (args.name, args.require, args.inactive, args.tenant) == (
        "acme", ["a.b", "c"], True, "default",
    )  # fmt: skip
    for command in ("show", "rotate", "suspend", "deactivate", "activate", "delete"):
        assert parser().parse_args(["partners", command, "ptn_1"]).partner == "ptn_1"
    assert parser().parse_args(["partners", "list", "--all"]).all
    for command in ("show", "regenerate"):
        assert callable(parser().parse_args(["webhook-url", command]).func)
