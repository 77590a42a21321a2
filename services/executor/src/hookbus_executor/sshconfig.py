"""The SSH hosts the executor may run commands on (``[executor.ssh]``), checked at start.

Hosts are named here and only here: a rule names a host, a job request carries that name,
and the key that opens the host is read by the executor alone (from a file, or from an
environment variable), never written to a request, an event or a log line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import asyncssh
import msgspec

from hookbus_common.errors import ConfigError
from hookbus_common.settings import STRUCT, Port, PositiveFloat, PositiveInt

# What ``host_key_fingerprint`` looks like: OpenSSH's ``ssh-keygen -lf`` form.
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SshHost(msgspec.Struct, **STRUCT):
    """One host a rule can name: where it is, who we log in as, how we trust it."""

    host: str
    user: str
    port: Port = 22
    # The private key (OpenSSH or PEM): a file's path, or the name of an environment
    # variable holding the key itself. Exactly one.
    key_file: str | None = None
    key_env: str | None = None
    # The name of an environment variable holding the key's passphrase, if it has one.
    key_passphrase_env: str | None = None
    # Another named host to connect through (ssh -J).
    jump: str | None = None
    # How the host's key is checked: a known_hosts file, or its pinned fingerprint
    # (SHA256:…, as `ssh-keygen -lf` prints it). Exactly one, unless unknown keys are
    # accepted on purpose (insecure: anyone on the path can pose as the host).
    known_hosts: str | None = None
    host_key_fingerprint: str | None = None
    insecure_accept_unknown_host_key: bool = False
    connect_timeout: PositiveFloat = 10.0
    # Commands running on this host at once (one SSH connection, one channel each);
    # keep it below the server's MaxSessions (OpenSSH: 10), since ending a command
    # that timed out opens one more channel for a moment.
    max_sessions: PositiveInt = 4


class SshSettings(msgspec.Struct, **STRUCT):
    hosts: dict[str, SshHost] = {}
    # A host's connection is kept open between commands and closed after this long idle.
    idle_seconds: PositiveFloat = 300.0
    # Keepalives on an open connection, so a dead host or path is noticed.
    keepalive_seconds: PositiveFloat = 30.0


def _key_label(name: str, field: str) -> str:
    return f"executor.ssh.hosts.{name}.{field}"


def check(ssh: SshSettings) -> None:
    """What the types cannot say: one key source, one way to trust the host, jump hosts
    that exist and lead nowhere in circles."""
    for name, h in ssh.hosts.items():
        if not _NAME.match(name):
            raise ConfigError(
                f"executor.ssh.hosts.{name}: a host name may hold only letters, digits, '_', '.'"
                " and '-'"
            )
        if (h.key_file is None) == (h.key_env is None):
            raise ConfigError(f"executor.ssh.hosts.{name}: set exactly one of key_file and key_env")
        trusts = [
            h.known_hosts is not None,
            h.host_key_fingerprint is not None,
            h.insecure_accept_unknown_host_key,
        ]
        if sum(trusts) != 1:
            raise ConfigError(
                f"executor.ssh.hosts.{name}: set exactly one of known_hosts,"
                " host_key_fingerprint and insecure_accept_unknown_host_key = true"
            )
        fp = h.host_key_fingerprint
        if fp is not None and not _FINGERPRINT.match(fp):
            raise ConfigError(
                f"{_key_label(name, 'host_key_fingerprint')}: expected SHA256: followed by 43"
                f" base64 characters (as `ssh-keygen -lf` prints it), got {fp!r}"
            )
        if h.jump is not None and h.jump not in ssh.hosts:
            raise ConfigError(f"{_key_label(name, 'jump')}: no host named {h.jump!r}")
    for name in ssh.hosts:
        seen = [name]
        jump = ssh.hosts[name].jump
        while jump is not None:
            if jump in seen:
                raise ConfigError(
                    f"{_key_label(name, 'jump')}: jump hosts go round in a circle"
                    f" ({' -> '.join([*seen, jump])})"
                )
            seen.append(jump)
            jump = ssh.hosts[jump].jump


def load_keys(
    ssh: SshSettings, resolve_path: Callable[[str], Path], env: Mapping[str, str]
) -> dict[str, asyncssh.SSHKey]:
    """Each host's private key, read and parsed now so that a missing or bad key stops
    the executor at start; errors name the setting, never the key's contents."""
    keys: dict[str, asyncssh.SSHKey] = {}
    for name, h in ssh.hosts.items():
        passphrase: str | None = None
        if h.key_passphrase_env is not None:
            passphrase = env.get(h.key_passphrase_env)
            if passphrase is None:
                raise ConfigError(
                    f"{_key_label(name, 'key_passphrase_env')}: the environment variable"
                    f" {h.key_passphrase_env} is not set"
                )
        if h.key_file is not None:
            label = _key_label(name, "key_file")
            path = resolve_path(h.key_file)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{label}: cannot read {path}: {exc.strerror}") from None
        else:
            assert h.key_env is not None
            label = _key_label(name, "key_env")
            value = env.get(h.key_env)
            if not value:
                raise ConfigError(f"{label}: the environment variable {h.key_env} is not set")
            data = value.encode()
        try:
            keys[name] = asyncssh.import_private_key(data, passphrase)
        except (asyncssh.KeyImportError, ValueError) as exc:
            # The parser's message names the format problem, not the key material.
            raise ConfigError(f"{label}: not a usable private key ({exc})") from None
    for name, h in ssh.hosts.items():
        if h.known_hosts is not None:
            path = resolve_path(h.known_hosts)
            try:
                asyncssh.read_known_hosts(str(path))
            except OSError as exc:
                raise ConfigError(
                    f"{_key_label(name, 'known_hosts')}: cannot read {path}: {exc.strerror}"
                ) from None
            except ValueError as exc:
                raise ConfigError(
                    f"{_key_label(name, 'known_hosts')}: {path} is not a known_hosts file ({exc})"
                ) from None
    return keys
