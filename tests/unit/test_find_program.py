"""find_program: an action's program found the way the executor's exec finds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hookbus_executor.shell import ShellSpawnError, find_program, run_shell


def script(path: Path, *, executable: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755 if executable else 0o644)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """work/ (the action's cwd) with scripts, bin/ and other/ as PATH directories."""
    script(tmp_path / "work" / "deploy.sh")
    script(tmp_path / "work" / "scripts" / "build.sh")
    script(tmp_path / "work" / "plain.sh", executable=False)
    (tmp_path / "work" / "adir").mkdir()
    script(tmp_path / "bin" / "tool")
    script(tmp_path / "bin" / "half", executable=False)
    script(tmp_path / "other" / "half")
    script(tmp_path / "work" / "rel" / "reltool")
    return tmp_path


# (program, PATH relative to the tree; None = no PATH at all, expected: a path relative to
# the tree, or the error)
CASES = [
    ("./deploy.sh", None, "work/deploy.sh"),
    ("scripts/build.sh", None, "work/scripts/build.sh"),
    ("./nope.sh", None, FileNotFoundError),
    ("scripts/nope.sh", None, FileNotFoundError),
    ("./plain.sh", None, PermissionError),
    ("./adir", None, PermissionError),
    ("tool", "bin", "bin/tool"),
    ("tool", "other:bin", "bin/tool"),
    ("tool", "other", FileNotFoundError),
    ("deploy.sh", "bin", FileNotFoundError),  # a bare name is never looked up in cwd
    ("half", "bin", PermissionError),  # found, not executable, and nowhere else
    ("half", "bin:other", "other/half"),  # exec goes on past the one it cannot run
    ("reltool", "rel", "work/rel/reltool"),  # a relative PATH entry is relative to cwd
    ("nosuch-program-xyz", None, FileNotFoundError),
    ("", "bin", FileNotFoundError),
]


def _path(tree: Path, rel: str | None) -> str | None:
    if rel is None:
        return None
    return ":".join(d if d == "rel" else str(tree / d) for d in rel.split(":"))


@pytest.mark.parametrize(("program", "path", "expected"), CASES)
def test_find_program(tree, program, path, expected):
    cwd = tree / "work"
    if isinstance(expected, str):
        found = find_program(program, cwd=cwd, path=_path(tree, path))
        assert os.path.samefile(found, tree / expected)
    else:
        with pytest.raises(expected):
            find_program(program, cwd=cwd, path=_path(tree, path))


def test_an_absolute_path_is_taken_as_it_is(tree):
    target = tree / "bin" / "tool"

    assert find_program(str(target), cwd=tree / "work", path="") == str(target)


def test_without_a_path_the_systems_default_is_searched(tmp_path):
    found = find_program("sh", cwd=tmp_path, path=None)

    assert Path(found).name == "sh"
    assert Path(found).parent in {Path(d) for d in os.defpath.split(":")}


@pytest.mark.parametrize(("program", "path", "expected"), [c for c in CASES if c[0]])
async def test_find_program_agrees_with_what_the_executor_can_start(tree, program, path, expected):
    """The point of find_program: it says "found" exactly when run_shell can start it."""
    cwd = tree / "work"
    env = {} if path is None else {"PATH": _path(tree, path)}
    try:
        find_program(program, cwd=cwd, path=env.get("PATH"))
        found = True
    except OSError:
        found = False
    try:
        result = await run_shell([program], env=env, cwd=str(cwd), timeout=10)
        started = True
        assert result.exit_code == 0
    except ShellSpawnError:
        started = False

    assert found is started
