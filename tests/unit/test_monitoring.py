"""The shipped monitoring files: promtool checks and unit-tests the alert rules, and every metric
the rules and the dashboard name is one the agent or the engines (vLLM's names) export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from conftest import REPO

from mipart.sim.engine.openai import render_metrics
from mipart.sim.engine.state import EngineConfig, EngineState

MONITORING = REPO / "monitoring"
RULES = MONITORING / "prometheus/mipart-alerts.yml"
DASHBOARD = MONITORING / "grafana/mipart-dashboard.json"
promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not found (make deps unpacks it from Debian's prometheus package into .venv/tools)",
)


def exported() -> set[str]:
    """The agent's families, as its /metrics code names them, and the fake engine's (vLLM's names)."""
    agent = set(re.findall(r'family\(\s*"([a-z_:]+)"', (REPO / "agent/mipart/api/metrics.py").read_text()))
    engine = set(re.findall(r"^# TYPE (\S+)", render_metrics(EngineConfig(), EngineState()), re.MULTILINE))
    return agent | engine | {"up"}


def named(text: str) -> set[str]:
    return set(re.findall(r"\b((?:mipart|vllm)[a-z_:]*[a-z_])\b", text)) - {"mipart", "mipart-agent", "mipart-vllm"}


@promtool
def test_promtool_checks_the_rules():
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SUCCESS: 11 rules found" in done.stdout, done.stdout + done.stderr


@promtool
def test_promtool_unit_tests_of_the_rules_pass():
    done = subprocess.run(
        ["promtool", "test", "rules", "mipart-alerts.test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@promtool
def test_the_example_scrape_config_is_valid():
    done = subprocess.run(
        ["promtool", "check", "config", str(MONITORING / "prometheus/scrape-example.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_the_rules_and_dashboard_use_is_exported():
    import yaml

    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs += [t["expr"] for p in panels for t in p["targets"]]
    used = set().union(*(named(e) for e in exprs))
    assert used and used <= exported(), used - exported()
    assert {
        "mipart_gpu_ras_uncorrectable_errors_total",
        "mipart_partition_drift",
        "mipart_instance_ready",
        "mipart_instance_restarts_total",
        "vllm:num_requests_waiting",
    } <= used


def test_the_alerts_cover_what_an_operator_expects():
    import yaml

    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {
        "MipartAgentDown",
        "MipartInstanceDown",
        "MipartPartitionDrift",
        "MipartGpuUncorrectableErrors",
        "MipartQueueDepthHigh",
        "MipartInstanceRestarting",
    } <= names


def test_the_dashboard_is_grafana_json_with_one_datasource_variable():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "mipart-overview"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "host"]


def test_the_package_ships_them():
    install = (REPO / "debian/mipart.install").read_text().splitlines()
    assert "monitoring/prometheus/* usr/share/mipart/monitoring/prometheus/" in install
    assert "monitoring/grafana/* usr/share/mipart/monitoring/grafana/" in install
