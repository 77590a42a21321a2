"""Reloading the rules: a file written while a reload reads the files is not lost."""

from __future__ import annotations

import os
from pathlib import Path

from hookbus_router import config as router
from hookbus_router.config import RouterConfig
from hookbus_router.reload import LiveRules

SOURCES = '[sources.github]\nkind = "github"\nsecrets = [{ value = "s" }]\n'
RULE = '[[rules]]\nname = "{name}"\nactions = [{{ kind = "shell", command = ["x"] }}]\n'


def _write(path: Path, name: str, later_s: int) -> None:
    """Write the rules with a modification time ``later_s`` seconds on, so each write is
    a change whatever the clock's granularity."""
    st = path.stat() if path.exists() else None
    path.write_text(SOURCES + RULE.format(name=name))
    if st is not None:
        at = st.st_mtime_ns + later_s * 1_000_000_000
        os.utime(path, ns=(at, at))


def _names(live: LiveRules) -> list[str]:
    return [r.rule.name for r in live().rules]


def test_a_write_landing_while_a_reload_reads_the_files_is_reloaded_at_the_next_poll(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hookbus.toml"
    _write(path, "one", 0)
    writes = ["three"]

    def load(p: str | None) -> RouterConfig:
        config = router.load(p, {})
        # An editor (or a ConfigMap update) writes again just after the file was read,
        # before the reload has finished.
        if writes:
            _write(path, writes.pop(), 1)
        return config

    live = LiveRules(router.load(path, {}), load)
    _write(path, "two", 1)
    assert live.changed()
    assert live.reload("file changed") == "applied"
    assert _names(live) == ["two"]

    # The second write is a change still to load, not taken for the one just read.
    assert live.changed()
    assert live.reload("file changed") == "applied"
    assert _names(live) == ["three"]
    assert not live.changed()


def test_a_reload_that_read_the_files_as_they_are_sees_no_change_after(tmp_path: Path) -> None:
    path = tmp_path / "hookbus.toml"
    _write(path, "one", 0)
    live = LiveRules(router.load(path, {}), lambda p: router.load(p, {}))
    _write(path, "two", 1)

    assert live.reload("SIGHUP") == "applied"
    assert not live.changed()  # not loaded twice
