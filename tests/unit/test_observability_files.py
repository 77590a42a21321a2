"""The Grafana dashboard and the Prometheus alert rules in deploy/: well-formed, and every
metric they query is one a hookbus service registers (importing each service's modules
registers its metrics, as starting it does)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "hookbus.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"

# What each process runs: importing these registers every metric it exports.
MODULES = (
    "hookbus_common.consumer",
    "hookbus_common.service",
    "hookbus_receiver.app",
    "hookbus_router.__main__",
    "hookbus_executor.__main__",
    "hookbus_dispatcher.__main__",
    "hookbus_api.app",
)
_METRIC = re.compile(r"\bhookbus_[a-z0-9_]+")


@pytest.fixture(scope="module")
def registered() -> set[str]:
    for module in MODULES:
        importlib.import_module(module)
    # Every sample name a registered metric can expose (foo_total, foo_bucket, ...).
    names: set[str] = set(REGISTRY._names_to_collectors)
    return {n for n in names if n.startswith("hookbus_")}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _balanced(expr: str) -> bool:
    depth: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in "([{":
            depth.append(ch)
        elif ch in pairs and (not depth or depth.pop() != pairs[ch]):
            return False
    return not depth


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    doc = _dashboard()
    assert doc["uid"] == "hookbus-overview"
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["title"]
        assert panel["description"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"]
        assert len(refs) == len(set(refs))


def test_no_two_panels_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0
        assert g["x"] + g["w"] <= 24
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def test_the_alert_rules_are_a_prometheus_rule_file() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])


@pytest.mark.parametrize("where", ["dashboard", "alerts"])
def test_every_metric_queried_is_one_the_services_register(
    where: str, registered: set[str]
) -> None:
    exprs = _dashboard_exprs() if where == "dashboard" else [r["expr"] for r in _rules()]
    assert exprs
    for expr in exprs:
        assert _balanced(expr), expr
        used = set(_METRIC.findall(expr))
        assert used, expr
        assert used <= registered, f"not registered: {sorted(used - registered)} in {expr}"


def test_the_dashboard_and_alerts_cover_what_operators_watch() -> None:
    dashboard = " ".join(_dashboard_exprs())
    alerts = " ".join(r["expr"] for r in _rules())
    for needle in (
        "hookbus_receiver_requests_total",  # ingest rate
        "hookbus_receiver_rejected_total",  # rejects by reason
        "hookbus_consumer_pending",  # consumer lag
        "io.hookbus.delivery.dead.v1",  # dead-letter queue growth
        "hookbus_endpoints_disabled_total",  # disabled endpoints
        "io.hookbus.job.failed.v1",  # job failures
        "hookbus_event_loop_lag_seconds_bucket",  # loop lag
    ):
        assert needle in dashboard, needle
        assert needle in alerts, needle
