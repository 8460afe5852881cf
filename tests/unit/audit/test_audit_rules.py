"""The audit's alert rules are valid, every alert fires and stays quiet in a promtool test, and
each has a justification and a runbook in the README."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from flixlake.config import PROJECT_ROOT

RULES = PROJECT_ROOT / "monitoring" / "rules" / "audit.yml"
TESTS = PROJECT_ROOT / "monitoring" / "tests" / "audit_rules_test.yml"


def promtool(*args: str | Path) -> str:
    if shutil.which("promtool") is None:  # .ci/run installs it; never a skip
        pytest.fail("promtool not found: apt-get install -y prometheus (Debian)")
    done = subprocess.run(
        ["promtool", *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules_and_their_tests_pass() -> None:
    assert "SUCCESS: 3 rules found" in promtool("check", "rules", RULES)
    assert "SUCCESS" in promtool("test", "rules", TESTS)


def test_every_audit_alert_fires_stays_quiet_and_has_a_runbook() -> None:
    checks = [
        check
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for check in test["alert_rule_test"]
    ]
    readme = (PROJECT_ROOT / "README.md").read_text().lower()
    names = {a["alert"] for a in alerts()}
    assert names == {"FlixlakeInputDrift", "FlixlakeFairnessRequirementUnmet", "FlixlakeAuditStale"}
    for alert in alerts():
        name = alert["alert"]
        assert any(c["alertname"] == name and c["exp_alerts"] for c in checks), name
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in checks), name
        assert len(alert["annotations"]["justification"]) > 40, name
        anchor = alert["annotations"]["runbook"].split("#", 1)[1]
        assert f"#### {name.lower()}" in readme and anchor == name.lower(), name
