"""The command line an SSH action sends: its argv and environment, quoted for the remote
shell, never interpolated.

An SSH server runs the command through the user's login shell, so every word is quoted
(``shlex.quote``) and the environment is exported in the same line (servers commonly refuse
``AcceptEnv``). Before the command replaces it (``exec``), the shell writes a marker with
its process id to stderr, so that a timeout can end the remote process group over a
second channel; the marker is taken out of the output.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping, Sequence

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# How much of stderr may come before the marker (a login shell's chatter) before we stop
# looking for it.
MARKER_SEARCH_BYTES = 4096


def valid_env_name(name: str) -> bool:
    """Whether ``name`` can be exported by a POSIX shell."""
    return bool(_ENV_NAME.match(name))


def new_nonce() -> str:
    return f"hookbus-pid-{secrets.token_hex(8)}"


def remote_command(argv: Sequence[str], env: Mapping[str, str], nonce: str) -> str:
    """``printf <nonce> $$ >&2; export K='v' …; exec 'argv0' 'argv1' …``.

    Raises ValueError for an empty argv or an environment name a shell cannot export.
    """
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not a command string")
    if not argv:
        raise ValueError("argv must not be empty")
    bad = [k for k in env if not valid_env_name(k)]
    if bad:
        raise ValueError(f"environment variable names a shell cannot export: {sorted(bad)}")
    parts = [f"printf '%s %s\\n' {shlex.quote(nonce)} \"$$\" >&2"]
    if env:
        parts.append("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
    parts.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "; ".join(parts)


def kill_command(pid: int, signal_name: str) -> str:
    """Signal the remote command's process group (sshd makes each session's shell lead a
    group of its own), and the process itself in case it leads none."""
    if pid <= 1:
        raise ValueError(f"refusing to signal process {pid}")
    if signal_name not in ("TERM", "KILL"):
        raise ValueError(f"unexpected signal {signal_name!r}")
    # `kill -s NAME -- -PGID` is the form every POSIX shell's kill parses (dash refuses
    # `kill -NAME -- -PGID`).
    return (
        f"kill -s {signal_name} -- -{pid} 2>/dev/null;"
        f" kill -s {signal_name} {pid} 2>/dev/null; true"
    )


class MarkerReader:
    """Takes the marker line out of the start of stderr; hands on everything else."""

    def __init__(self, nonce: str) -> None:
        self._nonce = nonce.encode()
        self._buffer = bytearray()
        self.done = False
        self.pid: int | None = None

    def feed(self, data: bytes) -> bytes:
        """Returns the bytes of ``data`` that are output (not the marker)."""
        if self.done:
            return data
        self._buffer += data
        at = self._buffer.find(self._nonce)
        if at >= 0:
            end = self._buffer.find(b"\n", at)
            if end < 0:
                if len(self._buffer) <= MARKER_SEARCH_BYTES:
                    return b""
                end = len(self._buffer) - 1
            line = bytes(self._buffer[at:end])
            rest = bytes(self._buffer[:at] + self._buffer[end + 1 :])
            self._finish()
            word = line[len(self._nonce) :].strip()
            if word.isdigit():
                self.pid = int(word)
            return rest
        if len(self._buffer) > MARKER_SEARCH_BYTES:
            rest = bytes(self._buffer)
            self._finish()
            return rest
        return b""

    def flush(self) -> bytes:
        """What was held back, once the stream has ended."""
        if self.done:
            return b""
        rest = bytes(self._buffer)
        self._finish()
        return rest

    def _finish(self) -> None:
        self.done = True
        self._buffer = bytearray()
