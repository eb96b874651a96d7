"""What the monitoring suites share: the rules and dashboard under
deploy/monitoring, and Debian's Prometheus and promtool (`cargo xtask ci`
installs the prometheus package)."""

import shutil

import pytest
import yaml

from conftest import REPO

MONITORING = REPO / "deploy/monitoring"
RULES = MONITORING / "cryptoserver.rules.yml"
RULES_TESTS = MONITORING / "cryptoserver.rules.test.yml"
DASHBOARD = MONITORING / "cryptoserver-dashboard.json"
RUNBOOK = REPO / "docs/operations.md"


def tool(name):
    """Path of `prometheus` or `promtool`; the test fails without it, as CI installs it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's prometheus package (`cargo xtask ci` does)")
    return path


def rule_groups():
    return yaml.safe_load(RULES.read_text())["groups"]


def alerting_rules():
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]
