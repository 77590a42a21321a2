"""The docker and compose actions without an engine: what a recreate keeps of a container's
configuration, Compose's command line, health waits on a fake clock, and the router's
checks of docker and compose actions."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_executor import health
from hookbus_executor.compose import compose_argv, compose_env
from hookbus_executor.config import ExecutorConfig
from hookbus_executor.config import check as executor_check
from hookbus_executor.dockerconfig import DockerSettings
from hookbus_executor.dockerrecreate import create_config, networks_of
from hookbus_router import config as router_config
from hookbus_router.routing import _spec

CID = "0123456789abcdef" * 4

IMAGE = {
    "Env": ["PATH=/usr/bin:/bin", "IMAGE_VAR=from-image"],
    "Cmd": ["httpd", "-f"],
    "Labels": {"org.opencontainers.image.version": "1.0"},
    "ExposedPorts": {"8080/tcp": {}},
    "WorkingDir": "/srv",
}


def _container(**config: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Hostname": CID[:12],
        "Env": [
            "PATH=/usr/bin:/bin",
            "IMAGE_VAR=from-image",
            "APP_MODE=prod",
            f"HOSTNAME={CID[:12]}",
        ],
        "Cmd": ["httpd", "-f"],
        "Image": "web:1",
        "Labels": {"org.opencontainers.image.version": "1.0", "team": "web"},
        "ExposedPorts": {"8080/tcp": {}, "9090/tcp": {}},
        "WorkingDir": "/srv",
        "Entrypoint": [],
    }
    base.update(config)
    return {
        "Id": CID,
        "Config": base,
        "HostConfig": {
            "NetworkMode": "backend",
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
            "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0},
            "Binds": ["/data:/data:ro"],
            "Ulimits": [{"Name": "RLIMIT_NOFILE", "Soft": 1024, "Hard": 1024}],
            "ContainerIDFile": "",
        },
        "Mounts": [
            {"Type": "bind", "Source": "/data", "Destination": "/data", "RW": False},
            {"Type": "volume", "Name": "cache", "Destination": "/cache", "RW": True},
        ],
        "NetworkSettings": {
            "Networks": {
                "frontend": {"Aliases": [CID[:12], "web"], "IPAMConfig": None},
                "backend": {"Aliases": [CID[:12], "api"], "IPAMConfig": {"IPv4Address": "10.1.0.5"}},
            }
        },
    }  # fmt: skip


def test_recreate_keeps_what_was_set_on_the_container_and_drops_what_the_image_gave() -> None:
    config = create_config(_container(), IMAGE, "web:2")
    assert config["Image"] == "web:2"
    # The container's own variable stays; the image's defaults and the engine's HOSTNAME go.
    assert config["Env"] == ["APP_MODE=prod"]
    assert "Hostname" not in config
    # The image's command, working dir and label were defaults: the new image's apply.
    assert "Cmd" not in config
    assert "WorkingDir" not in config
    assert "Entrypoint" not in config
    assert config["Labels"] == {"team": "web"}
    assert config["ExposedPorts"] == {"9090/tcp": {}}
    host = config["HostConfig"]
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}
    assert host["RestartPolicy"] == {"Name": "always", "MaximumRetryCount": 0}
    # Binds kept, the named volume carried along, ulimits named as engines take them.
    assert host["Binds"] == ["/data:/data:ro", "cache:/cache"]
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 1024}]
    assert "ContainerIDFile" not in host
    # The network mode's network at creation, with its aliases (not the short id).
    assert config["NetworkingConfig"] == {
        "EndpointsConfig": {
            "backend": {"Aliases": ["api"], "IPAMConfig": {"IPv4Address": "10.1.0.5"}}
        }
    }


def test_a_command_set_on_the_container_is_kept() -> None:
    config = create_config(
        _container(Cmd=["httpd", "-f", "-v"], Entrypoint=["/init"], Hostname="web01"), IMAGE, "w:2"
    )
    assert config["Cmd"] == ["httpd", "-f", "-v"]
    assert config["Entrypoint"] == ["/init"]
    assert config["Hostname"] == "web01"


def test_networks_list_the_mode_first_and_none_for_host_mode() -> None:
    attrs = _container()
    assert [n for n, _ in networks_of(attrs)] == ["backend", "frontend"]
    attrs["HostConfig"]["NetworkMode"] = "host"
    assert networks_of(attrs) == []
    assert "NetworkingConfig" not in create_config(attrs, IMAGE, "w:2")


def test_compose_command_lines() -> None:
    f = Path("/srv/app/compose.yaml")
    up = ev.ComposeSpec(file=str(f), project="shop", services=["web", "worker"], wait=True)
    assert compose_argv(["docker", "compose"], up, f) == [
        "docker", "compose", "-f", str(f), "-p", "shop", "up", "-d", "--pull", "missing",
        "--wait", "web", "worker",
    ]  # fmt: skip
    pull = ev.ComposeSpec(file="c.yaml", project="shop", operation="pull")
    assert compose_argv(["docker-compose"], pull, f) == [
        "docker-compose", "-f", str(f), "-p", "shop", "pull",
    ]  # fmt: skip


def test_compose_env_puts_the_engine_and_the_marks_last() -> None:
    env = compose_env(
        {"PATH": "/bin"}, {"HOOKBUS_TAG": "v2"}, {"TAG": "v2", "DOCKER_HOST": "tcp://evil"},
        "unix:///run/docker.sock", {"HOOKBUS_JOB_ID": "job_1"},
    )  # fmt: skip
    assert env == {"PATH": "/bin", "HOOKBUS_TAG": "v2", "TAG": "v2",
                   "DOCKER_HOST": "unix:///run/docker.sock", "HOOKBUS_JOB_ID": "job_1"}  # fmt: skip


@pytest.mark.parametrize(
    ("value", "target"),
    [("8080", ("127.0.0.1", 8080)), ("db:5432", ("db", 5432)), ("[::1]:80", ("::1", 80))],
)
def test_tcp_targets(value: str, target: tuple[str, int]) -> None:
    assert health.tcp_target(value) == target


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_health_wait_times_out_on_the_clock_and_stops_at_a_verdict() -> None:
    clock = _Clock()
    looks: list[float] = []

    async def never() -> health.Verdict:
        looks.append(clock.now)
        clock.now += 1.0
        return health.Verdict("waiting", f"no answer at {clock.now:g}")

    result = asyncio.run(health.wait_for(never, timeout=3.0, interval=0.001, clock=clock))
    assert result == health.Health("timed_out", "no answer at 3")
    assert looks == [0.0, 1.0, 2.0]

    async def dead() -> health.Verdict:
        return health.Verdict("unhealthy", "exited")

    assert asyncio.run(health.wait_for(dead, timeout=3.0, interval=1.0, clock=clock)) == (
        health.Health("unhealthy", "exited")
    )

    async def stopped() -> health.Health:
        stop = asyncio.Event()
        stop.set()
        return await health.wait_for(never, timeout=3.0, interval=1.0, stop=stop, clock=clock)

    assert asyncio.run(stopped()).status == "stopped"


def _rules(tmp_path: Path, action: str) -> Path:
    f = tmp_path / "hookbus.toml"
    f.write_text(f'[[rules]]\nname = "deploy"\nactions = [{action}]\n')
    return f


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ('{ kind = "docker", operation = "recreate", image = "web:2" }', "needs container"),
        ('{ kind = "docker", operation = "run", command = ["true"] }', "needs image"),
        (
            '{ kind = "docker", operation = "restart", container = "web", health = {} }',
            "exactly one of http and tcp",
        ),
        (
            '{ kind = "docker", operation = "restart", container = "web", health = { http = "ftp://x" } }',
            "not an http(s) URL",
        ),
        ('{ kind = "docker", operation = "explode", container = "web" }', "operation"),
        ('{ kind = "compose", file = "c.yaml", project = "Shop" }', "project"),
    ],
)
def test_router_refuses_docker_and_compose_actions_that_cannot_work(
    tmp_path: Path, action: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match="actions") as err:
        router_config.load(_rules(tmp_path, action), {})
    assert problem in str(err.value)


def test_router_turns_docker_and_compose_actions_into_specs(tmp_path: Path) -> None:
    action = (
        '{ kind = "docker", operation = "recreate", container = "web", image = "web:2",'
        ' health = { tcp = 8080, timeout = 30 } }, { kind = "compose", file = "app/c.yaml",'
        ' project = "shop", services = ["web"], env = { TAG = "v2" }, pull = "never" }'
    )
    rules = router_config.load(_rules(tmp_path, action), {}).rules
    docker_spec, compose_spec = (_spec(a) for a in rules[0].actions)  # type: ignore[arg-type]
    assert docker_spec == ev.DockerSpec(
        operation="recreate", container="web", image="web:2",
        health=ev.HealthProbe(tcp="8080", timeout=30.0),
    )  # fmt: skip
    assert compose_spec == ev.ComposeSpec(
        file="app/c.yaml", project="shop", services=["web"], env={"TAG": "v2"}, pull="never"
    )
    # Both travel in a job request and come back the same.
    for spec in (docker_spec, compose_spec):
        req = ev.JobRequestedV2(job_id="job_1", rule="deploy", webhook_id="evt_1", spec=spec)
        back = msgspec.json.decode(msgspec.json.encode(req), type=ev.JobRequestedV2)
        assert back.spec == spec
        assert back.kind == spec.__struct_config__.tag


def test_executor_refuses_an_engine_address_it_cannot_use() -> None:
    config = ExecutorConfig()
    executor_check(config)
    bad = msgspec.structs.replace(
        config,
        executor=msgspec.structs.replace(
            config.executor, docker=DockerSettings(host="/var/run/docker.sock")
        ),
    )
    with pytest.raises(ConfigError, match=r"executor\.docker\.host"):
        executor_check(bad)
