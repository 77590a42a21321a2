"""``hookbus up`` without a config file: a GitHub source and "run this script on push",
from two environment variables (``WEBHOOK_SECRET``, ``ACTION_SCRIPT``) or two flags.

For people coming from a GitOps handler configured that way. The config it builds is
written where ``hookbus up`` keeps its data (``.hookbus/quickstart.toml``), naming the
secret's variable, never the secret, so it can be read, copied to ``hookbus.toml`` and
grown from there.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SECRET_ENV: Final = "WEBHOOK_SECRET"  # noqa: S105 (a variable's name)
SCRIPT_ENV: Final = "ACTION_SCRIPT"
SOURCE: Final = "github"
RULE: Final = "run-on-push"
FILE: Final = "quickstart.toml"


class QuickstartError(Exception):
    """The quick start was asked for but cannot be built; the message says why."""


@dataclass(frozen=True)
class Quickstart:
    secret_env: str  # the variable holding the GitHub webhook secret
    script: Path  # absolute
    base_dir: Path  # where the script runs


def plan(args: argparse.Namespace, env: Mapping[str, str]) -> Quickstart | None:
    """The quick start that the flags or the environment ask for, or None when they ask
    for none (``hookbus up`` then runs as it always did). Call it only when there is no
    config file."""
    secret_env = getattr(args, "github_secret_env", None)
    script = getattr(args, "run", None)
    if secret_env is None and env.get(SECRET_ENV):
        secret_env = SECRET_ENV
    if script is None and env.get(SCRIPT_ENV):
        script = env[SCRIPT_ENV]
    if secret_env is None and script is None:
        return None
    if secret_env is None:
        raise QuickstartError(
            f"no config file: to run {script} on GitHub pushes, set {SECRET_ENV} to the"
            " webhook's secret (or name its variable with --github-secret-env)"
        )
    if script is None:
        raise QuickstartError(
            f"no config file: to serve GitHub webhooks signed with ${secret_env}, set"
            f" {SCRIPT_ENV} to the script to run on push (or give --run PATH)"
        )
    if not env.get(secret_env):
        raise QuickstartError(f"--github-secret-env {secret_env}: the variable is not set or empty")
    base = Path.cwd()
    path = Path(script).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    where = "--run" if getattr(args, "run", None) is not None else SCRIPT_ENV
    if not path.is_file():
        raise QuickstartError(f"{where}: {path} is not a file")
    if not os.access(path, os.X_OK):
        raise QuickstartError(f"{where}: {path} is not executable (chmod +x it)")
    return Quickstart(secret_env=secret_env, script=path, base_dir=base)


def render(quick: Quickstart) -> str:
    """The config file the quick start runs with."""
    q = json.dumps  # a TOML basic string is a JSON string
    return f"""\
# Written by `hookbus up` (quick start: no config file, {SECRET_ENV} and {SCRIPT_ENV}).
# Copy it to hookbus.toml to change it; see docs/configuration.md.
base_dir = {q(str(quick.base_dir))}

# GitHub deliveries to /hooks/{SOURCE}, signed with the secret in ${quick.secret_env}.
[sources.{SOURCE}]
kind = "github"
secrets = [{{ env = {q(quick.secret_env)} }}]

# Every push runs the script, with the event in its environment and on stdin.
[[rules]]
name = "{RULE}"
source = "{SOURCE}"
event = "push"
actions = [{{ kind = "shell", command = [{q(str(quick.script))}] }}]
"""


def write(quick: Quickstart, data_dir: Path) -> Path:
    """Write the config into ``data_dir``; returns its path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / FILE
    path.write_text(render(quick))
    return path


def announce(quick: Quickstart, receiver_url: str, config: Path) -> list[str]:
    """What ``hookbus up`` says it built, once it serves."""
    return [
        f"hookbus: quick start (no config file): a GitHub source, signed with ${quick.secret_env}",
        f"hookbus:   GitHub webhook URL: {receiver_url}/hooks/{SOURCE}"
        " (content type application/json, the same secret)",
        f"hookbus:   rule {RULE}: every push runs {quick.script}",
        f"hookbus:   config written to {config} (copy it to hookbus.toml to make it yours)",
    ]
