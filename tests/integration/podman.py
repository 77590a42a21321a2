"""A real Docker engine for tests: podman's Docker-compatible API service, as this user,
with its own storage and socket in a temp dir, started once per test session, and tiny
images made from busybox-static's binary (no registry is needed or reached).

Use the ``podman_engine`` fixture (import it into the test module). Without podman the
tests skip, saying so; CI installs it (.ci/run), so there they run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

PODMAN = shutil.which("podman")
BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

# The test images: a shell, and a web server whose /health answers its version (v1, v2);
# "bad" runs but never answers.
BASE = "localhost/hookbus-test/busybox:1"
WEB = "localhost/hookbus-test/web"
_SERVE = "mkdir -p /www && echo {v} > /www/health && exec httpd -f -p 8080 -h /www"


@dataclass
class PodmanEngine:
    socket: Path
    base: Path

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=60)


def _rootfs_tar(path: Path) -> None:
    """A root file system holding busybox and a link for each of its applets."""
    assert BUSYBOX is not None
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "tmp", "www", "etc"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for name in applets.stdout.split():
            if name == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)


def _podman(base: Path) -> list[str]:
    assert PODMAN is not None
    return [PODMAN, "--root", str(base / "root"), "--runroot", str(base / "run")]


def _env(base: Path) -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf")}


def _import(base: Path, tar: Path, ref: str, *changes: str) -> None:
    argv = [*_podman(base), "import"]
    for change in changes:
        argv += ["--change", change]
    subprocess.run([*argv, str(tar), ref], env=_env(base), check=True, capture_output=True)


def _serve_cmd(version: str) -> str:
    cmd = _SERVE.format(v=version)
    return f'CMD ["sh", "-c", "{cmd}"]'


_STARTED: PodmanEngine | None = None


def _start(base: Path, config: pytest.Config) -> PodmanEngine:
    base.mkdir(parents=True, exist_ok=True)
    (base / "containers.conf").write_text(CONTAINERS_CONF)
    sock = base / "podman.sock"
    log = (base / "service.log").open("wb")
    proc = subprocess.Popen(
        [*_podman(base), "system", "service", "--time=0", f"unix://{sock}"],
        env=_env(base), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def stop() -> None:
        # Containers outlive the service (each has its own conmon): end them first.
        subprocess.run([*_podman(base), "rm", "--all", "--force", "--time", "0"],
                       env=_env(base), capture_output=True, timeout=60, check=False)  # fmt: skip
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    config.add_cleanup(stop)
    engine = PodmanEngine(sock, base)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (base / "service.log").read_text()
        if sock.exists():
            client = engine.client()
            try:
                if client.ping():
                    break
            except Exception:
                pass
            finally:
                client.close()
        assert time.monotonic() < deadline, "podman's API service did not answer"
        time.sleep(0.1)
    tar = base / "rootfs.tar"
    _rootfs_tar(tar)
    _import(base, tar, BASE, 'CMD ["/bin/sh"]')
    for version in ("v1", "v2"):
        _import(base, tar, f"{WEB}:{version}", _serve_cmd(version), "ENV IMAGE_VAR=from-image",
                "EXPOSE 8080")  # fmt: skip
    _import(base, tar, f"{WEB}:bad", 'CMD ["sleep", "3600"]', "ENV IMAGE_VAR=from-image")
    return engine


@pytest.fixture(scope="session")
def podman_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> PodmanEngine:
    """One podman API service for the whole session (shared by every module using it)."""
    global _STARTED
    if PODMAN is None or BUSYBOX is None:
        pytest.skip(
            "podman and busybox-static are not installed (apt-get install podman runc"
            " busybox-static; CI's .ci/run installs them)"
        )
    if _STARTED is None:
        _STARTED = _start(tmp_path_factory.mktemp("podman"), request.config)
    return _STARTED
