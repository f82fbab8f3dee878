"""Alert rules and the dashboard: valid, unit-tested on recorded samples with promtool, and
built only on metrics that the server (or a named exporter) actually exports."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from serving.telemetry import Telemetry
from tasks.settings import PROJECT_ROOT

PROMETHEUS = PROJECT_ROOT / "docker" / "k8s" / "prometheus"
DASHBOARD = PROJECT_ROOT / "docker" / "k8s" / "grafana" / "aigc-serving.json"
# Families from elsewhere: NVIDIA's DCGM exporter (GPU), the node exporter (host), and the
# scrape health Prometheus records itself.
EXTERNAL = {"DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
            "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes", "up"}
LEVELS = {"infrastructure", "service", "model", "business"}


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
            for r in g["rules"]]


def exported() -> set[str]:
    """Every series name the server's registry can expose."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                 "_created"),
                "gauge": ("",)}
    return {f.name + s for f in Telemetry().registry.collect()
            for s in suffixes.get(f.type, ("",))}


def metric_names(expr: str) -> set[str]:
    import promql_parser

    names: set[str] = set()

    def visit(node) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _promtool() -> str:
    try:
        return subprocess.run([str(PROJECT_ROOT / "scripts" / "get_promtool.sh")], check=True,
                              capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError as exc:
        message = f"promtool could not be installed: {exc.stderr}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_promtool_validates_the_rules_and_their_unit_tests_pass():
    promtool = _promtool()
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS,
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_unit_tested_and_every_level_has_alerts():
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    firing = {t["alertname"] for case in tests for t in case["alert_rule_test"]
              if t["exp_alerts"]}
    assert firing == set(alerts)
    assert {r["labels"]["level"] for r in alerts.values()} == LEVELS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name


def test_rules_use_only_exported_or_recorded_metrics():
    recorded = {r["record"] for r in _rules() if "record" in r}
    used = set().union(*(metric_names(r["expr"]) for r in _rules()))
    unknown = used - exported() - recorded - EXTERNAL
    assert not unknown, f"rules reference metrics nothing exports: {sorted(unknown)}"
    assert used & exported() >= {"aigc_requests_total", "aigc_request_errors_total",
                                 "aigc_request_latency_seconds_bucket", "aigc_feedback_total",
                                 "aigc_response_diversity_sum"}


def test_dashboard_queries_parse_and_use_only_exported_or_recorded_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    recorded = {r["record"] for r in _rules() if "record" in r}
    targets = [t for p in dashboard["panels"] for t in p["targets"]]
    assert len(targets) >= 12 and len({p["id"] for p in dashboard["panels"]}) == len(
        dashboard["panels"])
    for target in targets:
        names = metric_names(target["expr"].replace("$__rate_interval", "5m"))
        assert names, target
        unknown = names - exported() - recorded
        assert not unknown, f"panel query {target['expr']!r} uses {sorted(unknown)}"
