"""What the monitoring suites share: the rules and dashboard under
deploy/monitoring, and Debian's Prometheus and promtool (`cargo xtask ci`
installs the prometheus package)."""

import yaml

from conftest import REPO, program

MONITORING = REPO / "deploy/monitoring"
RULES = MONITORING / "cryptoserver.rules.yml"
RULES_TESTS = MONITORING / "cryptoserver.rules.test.yml"
DASHBOARD = MONITORING / "cryptoserver-dashboard.json"
RUNBOOK = REPO / "docs/operations.md"


def tool(name):
    """Path of `prometheus` or `promtool`."""
    return program(name, "prometheus")


def rule_groups():
    return yaml.safe_load(RULES.read_text())["groups"]


def alerting_rules():
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]
