"""Secrets encrypted at rest (AES-256-GCM): sealed and opened, bound to their place,
refused under the wrong key or when altered, with errors that name the setting and
never a key or a secret; key rings from the environment or a file; `hookbus up`'s key."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from hookbus_cli import up
from hookbus_cli.config import running_up
from hookbus_common import sealing
from hookbus_common.sealing import Keyring, Sealed, SealingError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CONTEXT = "endpoint_secrets/ep_1/sec_1"


def _ring(*keys: str, source: str = "HOOKBUS_SECRETS_KEY") -> Keyring:
    return Keyring([sealing.parse_key(k, "test") for k in keys], source)


def test_a_sealed_secret_opens_to_itself_and_holds_no_plaintext() -> None:
    ring = _ring(sealing.new_key())
    sealed = ring.seal(SECRET, CONTEXT)
    assert sealed.key_id == ring.current
    assert "whsec_" not in sealed.text
    assert SECRET[6:] not in sealed.text
    assert ring.open(sealed, CONTEXT) == SECRET
    # A fresh nonce each time: the same secret never looks the same twice.
    assert ring.seal(SECRET, CONTEXT).text != sealed.text


def test_the_wrong_key_names_the_setting_and_the_key_id_never_the_secret() -> None:
    sealed = _ring(sealing.new_key()).seal(SECRET, CONTEXT)
    other = _ring(sealing.new_key())
    with pytest.raises(SealingError) as caught:
        other.open(sealed, CONTEXT)
    text = str(caught.value)
    assert "HOOKBUS_SECRETS_KEY" in text
    assert sealed.key_id in text
    assert SECRET not in text
    assert sealed.text not in text


def test_an_altered_or_moved_secret_does_not_open() -> None:
    ring = _ring(sealing.new_key())
    sealed = ring.seal(SECRET, CONTEXT)
    raw = bytearray(base64.b64decode(sealed.text))
    for i in (0, 12, len(raw) - 1):  # the nonce, the ciphertext, the tag
        flipped = raw.copy()
        flipped[i] ^= 1
        with pytest.raises(SealingError, match="altered or moved"):
            ring.open(Sealed(sealed.key_id, base64.b64encode(flipped).decode()), CONTEXT)
    with pytest.raises(SealingError, match="altered or moved"):
        ring.open(sealed, "endpoint_secrets/ep_2/sec_1")
    with pytest.raises(SealingError, match="altered or moved"):
        ring.open(Sealed(sealed.key_id, "not base64!"), CONTEXT)


def test_a_ring_seals_with_its_first_key_and_opens_with_every_one() -> None:
    old, new = sealing.new_key(), sealing.new_key()
    sealed_old = _ring(old).seal(SECRET, CONTEXT)
    both = _ring(new, old)
    assert both.current == _ring(new).current
    assert both.open(sealed_old, CONTEXT) == SECRET
    assert both.seal(SECRET, CONTEXT).key_id == both.current
    assert sealing.key_id(base64.b64decode(old)) == sealed_old.key_id
    assert old not in repr(both)


def test_keys_from_the_environment() -> None:
    a, b = sealing.new_key(), sealing.new_key()
    assert sealing.load({}) is None
    ring = sealing.load({"HOOKBUS_SECRETS_KEY": f" {a}, {b}\n"})
    assert ring is not None
    assert ring.ids == [_ring(a).current, _ring(b).current]
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(a)).decode()
    assert sealing.load({"HOOKBUS_SECRETS_KEY": urlsafe}).current == ring.current  # type: ignore[union-attr]


def test_keys_from_a_file(tmp_path: Path) -> None:
    a, b = sealing.new_key(), sealing.new_key()
    path = tmp_path / "keys"
    path.write_text(f"# the new key first\n{b}\n\n{a}  # old\n")
    ring = sealing.load({"HOOKBUS_SECRETS_KEY_FILE": str(path)})
    assert ring is not None
    assert ring.ids == [_ring(b).current, _ring(a).current]
    assert str(path) in ring.source
    with pytest.raises(SealingError, match=r"HOOKBUS_SECRETS_KEY_FILE .*cannot read"):
        sealing.load({"HOOKBUS_SECRETS_KEY_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HOOKBUS_SECRETS_KEY": "c2hvcnQ="}, "HOOKBUS_SECRETS_KEY: key 1: not a key"),
        ({"HOOKBUS_SECRETS_KEY": "secret-but-not-base64!"}, "HOOKBUS_SECRETS_KEY: key 1"),
        ({"HOOKBUS_SECRETS_KEY": "c2VjcmV0LWtleQ==", "HOOKBUS_SECRETS_KEY_FILE": "/k"}, "both set"),
    ],
)
def test_bad_keys_name_the_setting_and_are_never_echoed(env: dict[str, str], message: str) -> None:
    with pytest.raises(SealingError, match=message) as caught:
        sealing.load(env)
    assert env["HOOKBUS_SECRETS_KEY"] not in str(caught.value)


def test_no_key_is_an_error_naming_both_settings() -> None:
    with pytest.raises(SealingError, match=r"HOOKBUS_SECRETS_KEY \(or HOOKBUS_SECRETS_KEY_FILE\)"):
        sealing.require({})


def test_up_makes_a_key_once_and_gives_it_to_the_dispatcher_only(tmp_path: Path) -> None:
    path = up.secrets_key(tmp_path, {})
    assert path == tmp_path / "secrets.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text()
    assert up.secrets_key(tmp_path, {}) == path
    assert path.read_text() == key  # kept across restarts
    base = {"PATH": "/bin", "HOOKBUS_SECRETS_KEY_FILE": "/elsewhere"}
    for service in ("receiver", "router", "executor", "api"):
        env = up.service_env(base, service, path)
        assert "HOOKBUS_SECRETS_KEY_FILE" not in env
        assert env["PATH"] == "/bin"
    assert up.service_env({"PATH": "/bin"}, "dispatcher", path)["HOOKBUS_SECRETS_KEY_FILE"] == str(
        path
    )
    # The operator's own key wins over the made one, for the dispatcher only.
    own = {"HOOKBUS_SECRETS_KEY": sealing.new_key()}
    assert up.secrets_key(tmp_path / "other", own) is None
    assert up.service_env(own, "dispatcher", None) == own
    assert up.service_env(own, "router", None) == {}


def test_up_refuses_a_damaged_key_file(tmp_path: Path) -> None:
    (tmp_path / "secrets.key").write_text("nope\n")
    with pytest.raises(SealingError, match="HOOKBUS_SECRETS_KEY_FILE"):
        up.secrets_key(tmp_path, {})


def test_commands_beside_up_find_its_key(tmp_path: Path) -> None:
    import os

    (tmp_path / "up.json").write_text(
        f'{{"pid": {os.getpid()}, "nats_url": "nats://x", "database_url": "postgresql://x",'
        f' "secrets_key_file": "{tmp_path / "secrets.key"}"}}'
    )
    assert running_up(str(tmp_path))["HOOKBUS_SECRETS_KEY_FILE"] == str(tmp_path / "secrets.key")
