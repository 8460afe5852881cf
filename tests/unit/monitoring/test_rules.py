"""The monitoring configuration in the repository is valid, and every alert is unit-tested.

promtool and amtool (Debian's prometheus, prometheus-alertmanager) check the files; the rule
tests (monitoring/tests/rules_test.yml) make each alert fire where it should and stay quiet
where it should not.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from flixlake.config import PROJECT_ROOT
from flixlake.ops.monitoring_stack import MONITORING_DIR, StackPorts, render_configs

RULES = MONITORING_DIR / "rules" / "flixlake.yml"
pytestmark = pytest.mark.usefixtures("prometheus_tools")


def run(*command: str | Path) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    assert "SUCCESS" in run("promtool", "check", "config", MONITORING_DIR / "prometheus.yml")
    assert "SUCCESS: 23 rules found" in run("promtool", "check", "rules", RULES)
    rendered = render_configs(tmp_path, StackPorts(19090, 19093, 19091, 18082, 19108, 19095))
    assert "SUCCESS" in run("promtool", "check", "config", rendered / "prometheus.yml")
    text = (rendered / "prometheus.yml").read_text()
    assert "127.0.0.1:18082" in text and "127.0.0.1:8082" not in text


def test_amtool_accepts_the_alertmanager_config(tmp_path: Path) -> None:
    run("amtool", "check-config", MONITORING_DIR / "alertmanager.yml")
    rendered = render_configs(tmp_path, StackPorts(19090, 19093, 19091, 18082, 19108, 19095))
    run("amtool", "check-config", rendered / "alertmanager.yml")
    assert "http://127.0.0.1:19095/alerts" in (rendered / "alertmanager.yml").read_text()


def test_promtool_rule_tests_pass() -> None:
    assert "SUCCESS" in run(
        "promtool", "test", "rules", MONITORING_DIR / "tests" / "rules_test.yml"
    )


def test_the_rule_tests_are_up_to_date_with_the_rules() -> None:
    spec = importlib.util.spec_from_file_location(
        "render_rules_test", MONITORING_DIR / "tests" / "render_rules_test.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (MONITORING_DIR / "tests" / "rules_test.yml").read_text()
    assert committed == module.rendered(), "run python monitoring/tests/render_rules_test.py"


def test_every_alert_fires_in_a_test_and_has_a_justification_and_a_runbook() -> None:
    cases = yaml.safe_load((MONITORING_DIR / "tests" / "rules_cases.yml").read_text())
    fired = {
        check["alertname"]
        for test in cases["tests"]
        for check in test.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    quiet = {
        check["alertname"]
        for test in cases["tests"]
        for check in test.get("alert_rule_test", [])
        if not check.get("exp_alerts")
    }
    readme = (PROJECT_ROOT / "README.md").read_text().lower()
    for alert in alerts():
        name = alert["alert"]
        assert name in fired, f"{name} never fires in monitoring/tests/rules_cases.yml"
        assert name in quiet, f"{name} is never shown to stay quiet"
        notes = alert["annotations"]
        assert len(notes.get("justification", "")) > 40, name
        assert alert["labels"]["severity"] in ("critical", "warning")
        anchor = notes["runbook"].split("#", 1)[1]
        assert anchor in readme, f"README has no runbook for {name} (#{anchor})"


def test_the_issue_s_alerts_are_all_there() -> None:
    names = {a["alert"] for a in alerts()}
    assert {
        "FlixlakeServiceDown",
        "FlixlakeAvailabilityLow",
        "FlixlakeLatencyP99High",
        "FlixlakeStreamLagHigh",
        "FlixlakeModelStale",
        "FlixlakeWatchThroughDrop",
        "FlixlakeTelemetryDropped",
        "FlixlakeDagRunFailed",
    } <= names
    by_name = {a["alert"]: a for a in alerts()}
    assert "0.99" in by_name["FlixlakeAvailabilityLow"]["expr"]
    assert "4 * 86400" in by_name["FlixlakeModelStale"]["expr"]
