"""The shipped Grafana dashboard and Prometheus alert rules: well formed (promtool, when
installed: scripts/setup.sh installs it), and every metric they use is one a router exports
(read from a real router's /metrics exposition)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from algorithms.registry import Registry
from config.loader import parse_config
from router.service import RouterService
from testing.drift_streams import NoiseSensitive

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "radrouter-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "radrouter-drift.json"
METRIC = re.compile(r"\bradrouter_[a-z_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name a router's /metrics can hold (families with no sample yet included)."""
    config = parse_config("http: {host: 127.0.0.1, port: 0}\n", "t.yaml")  # never started
    service = RouterService(
        config,
        data_dir=tmp_path_factory.mktemp("router"),
        registry=Registry({"noise_sensitive": NoiseSensitive}),
    )
    names = set()
    for family in text_string_to_metric_families(service.metrics.exposition().decode()):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
    return names


def rule_expressions() -> list[str]:
    rules = YAML(typ="safe").load(RULES.read_text())
    expressions = []
    for group in rules["groups"]:
        assert group["name"].startswith("radrouter-")
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"].startswith("Radrouter")
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            expressions.append(str(rule["expr"]))
    return expressions


def dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "radrouter-drift" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return expressions


def test_the_alert_rules_use_only_metrics_the_router_exports(exported: set[str]) -> None:
    used = {name for expr in rule_expressions() for name in METRIC.findall(expr)}
    assert used, "the rules use radrouter's metrics"
    assert used <= exported, sorted(used - exported)
    assert {"radrouter_drift_alert", "radrouter_drift_feature_alert"} <= used


def test_the_dashboard_uses_only_metrics_the_router_exports(exported: set[str]) -> None:
    used = {name for expr in dashboard_expressions() for name in METRIC.findall(expr)}
    assert used <= exported, sorted(used - exported)
    drift = {
        "radrouter_drift_psi",
        "radrouter_drift_ks_pvalue",
        "radrouter_positive_rate",
        "radrouter_not_assessed_rate",
        "radrouter_feedback_agreement_rate",
    }
    assert drift <= used


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) absent")
def test_promtool_accepts_the_alert_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 14 rules found" in done.stdout
