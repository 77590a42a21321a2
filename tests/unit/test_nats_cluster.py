"""A NATS cluster: the stream's replicas and several server URLs in the settings, the
command lines of a cluster on loopback, and ``hookbus up --nats-cluster``."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from hookbus_cli.config import running_up
from hookbus_cli.embedded import ClusterNode, NatsCluster, NatsServer
from hookbus_cli.main import parser
from hookbus_common.errors import ConfigError
from hookbus_common.settings import NatsSettings, Settings, load

# ---------------------------------------------------------------------------- settings


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return load(Settings, path, env or {})


def test_the_stream_has_one_replica_unless_told_otherwise(tmp_path):
    assert _load(tmp_path, "").nats.stream_replicas == 1
    assert _load(tmp_path, "[nats]\nstream_replicas = 3\n").nats.stream_replicas == 3


def test_replicas_come_from_the_environment_too(tmp_path):
    settings = _load(tmp_path, "", {"HOOKBUS_NATS__STREAM_REPLICAS": "5"})

    assert settings.nats.stream_replicas == 5


@pytest.mark.parametrize("replicas", [0, 6, -1])
def test_replicas_outside_one_to_five_are_refused_naming_the_key(tmp_path, replicas):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, f"[nats]\nstream_replicas = {replicas}\n")

    assert "nats.stream_replicas" in str(info.value)
    assert ("5" if replicas > 5 else "1") in str(info.value)


def test_one_url_is_one_server(tmp_path):
    assert _load(tmp_path, "").nats.servers == ["nats://127.0.0.1:4222"]


def test_comma_separated_urls_are_a_cluster_to_fail_over_between(tmp_path):
    text = '[nats]\nurl = "nats://a:4222, nats://b:4222,nats://c:4222"\n'

    assert _load(tmp_path, text).nats.servers == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]


def test_urls_in_the_environment_may_be_comma_separated(tmp_path):
    env = {"HOOKBUS_NATS__URL": "nats://a:4222,nats://b:4222"}

    assert _load(tmp_path, "", env).nats.servers == ["nats://a:4222", "nats://b:4222"]


@pytest.mark.parametrize("url", ["", " , "])
def test_no_server_at_all_is_refused_naming_the_key(tmp_path, url):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, f'[nats]\nurl = "{url}"\n')

    assert "nats" in str(info.value)
    assert "url" in str(info.value)


def test_passwords_in_any_of_the_urls_stay_out_of_the_repr():
    settings = NatsSettings(url="nats://a:4222,nats://me:s3cret@b:4222")

    assert "s3cret" not in repr(settings)
    assert settings.servers[1] == "nats://me:s3cret@b:4222"


# ---------------------------------------------------------------------------- cluster


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_a_single_server_has_no_cluster_flags(tmp_path):
    argv = NatsServer(tmp_path / "n").argv()

    assert "-js" in argv
    assert "--cluster" not in argv
    assert "--routes" not in argv
    assert _flag(argv, "-sd") == str(tmp_path / "n")


def test_each_cluster_node_has_its_name_store_ports_and_routes_to_every_node(tmp_path):
    cluster = NatsCluster(tmp_path / "c", 3, log_dir=tmp_path)
    argvs = [n.argv() for n in cluster.nodes]

    names = [_flag(a, "--name") for a in argvs]
    assert names == ["n1", "n2", "n3"]
    assert {_flag(a, "--cluster_name") for a in argvs} == {"hookbus"}
    stores = [_flag(a, "-sd") for a in argvs]
    assert stores == [str(tmp_path / "c" / f"n{i}") for i in (1, 2, 3)]
    own_routes = [_flag(a, "--cluster") for a in argvs]
    assert all(r.startswith("nats://127.0.0.1:") for r in own_routes)
    assert len(set(own_routes)) == 3
    # Every node is told every route (its own too: nats-server skips it).
    for a in argvs:
        assert sorted(_flag(a, "--routes").split(",")) == sorted(own_routes)
    # No two nodes share a client or a monitoring port, and all listen on loopback only.
    ports = [_flag(a, "-p") for a in argvs] + [_flag(a, "-m") for a in argvs]
    assert len(set(ports)) == 6
    assert {_flag(a, "-a") for a in argvs} == {"127.0.0.1"}
    assert [n.log_file for n in cluster.nodes] == [tmp_path / f"nats-n{i}.log" for i in (1, 2, 3)]


def test_the_clusters_url_names_every_node_for_the_client_to_fail_over(tmp_path):
    cluster = NatsCluster(tmp_path, 3, port=4333)

    urls = NatsSettings(url=cluster.url).servers
    assert urls == [n.url for n in cluster.nodes]
    assert urls[0] == "nats://127.0.0.1:4333"


def test_a_node_is_found_by_the_name_stream_info_reports(tmp_path):
    cluster = NatsCluster(tmp_path, 3)

    assert cluster.node("n2") is cluster.nodes[1]
    assert cluster.node("n2").cluster == ClusterNode(
        "n2", "hookbus", cluster.nodes[1].cluster.route_port, cluster.nodes[0].cluster.routes
    )


# ---------------------------------------------------------------------------- hookbus up


def test_up_runs_one_nats_server_unless_asked_for_a_cluster():
    assert parser().parse_args(["up"]).nats_cluster is None
    assert parser().parse_args(["up", "--nats-cluster", "3"]).nats_cluster == 3


@pytest.mark.parametrize("size", ["1", "2", "4", "x"])
def test_up_refuses_a_cluster_of_another_size(size, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["up", "--nats-cluster", size])

    assert "--nats-cluster" in capsys.readouterr().err


def test_commands_beside_a_clustered_up_keep_its_stream_replicas(tmp_path):
    state = {
        "pid": os.getpid(),
        "nats_url": "nats://127.0.0.1:1,nats://127.0.0.1:2,nats://127.0.0.1:3",
        "database_url": "postgresql:///x",
        "stream_replicas": "3",
    }
    (tmp_path / "up.json").write_bytes(msgspec.json.encode(state))

    env = running_up(str(tmp_path))

    assert env["HOOKBUS_NATS__STREAM_REPLICAS"] == "3"
    assert env["HOOKBUS_NATS__URL"] == state["nats_url"]


def test_commands_beside_a_single_server_up_leave_the_replicas_to_the_config(tmp_path):
    state = {"pid": os.getpid(), "nats_url": "nats://127.0.0.1:1", "database_url": "x"}
    (tmp_path / "up.json").write_bytes(msgspec.json.encode(state))

    assert "HOOKBUS_NATS__STREAM_REPLICAS" not in running_up(str(tmp_path))
