"""The Prometheus rules of deploy/monitoring checked and unit-tested with promtool,
and held to the monitoring mixins' conventions."""

import re
import subprocess

import yaml

from monitoring_tools import RULES, RULES_TESTS, RUNBOOK, alerting_rules, rule_groups, tool


def promtool(*args):
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent)


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", RULES_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_silent():
    """Each alert has a test group in which it fires, and every such group has a
    series that must not fire (promtool compares the whole list of firing alerts,
    so any healthy series of the group staying silent is checked too)."""
    tests = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    fired, silent = set(), set()
    for group in tests:
        for case in group.get("alert_rule_test", []):
            (fired if case["exp_alerts"] else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alerting_rules()}
    assert names - fired == set(), "alerts no unit test sees firing"
    assert names - silent == set(), "alerts no unit test sees silent (pending or healthy)"
    assert fired | silent <= names, "tests of alerts that do not exist"


def test_alerts_follow_the_mixin_conventions():
    for rule in alerting_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Cryptoserver[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= annotations.keys(), name
        assert annotations["runbook_url"] == f"docs/operations.md#{name.lower()}", name


def test_recording_rules_are_named_level_metric_operations():
    for group in rule_groups():
        for rule in group["rules"]:
            if "record" in rule:
                assert re.fullmatch(r"[a-z_]+:cryptoserver_[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_the_runbook_has_a_section_for_every_alert():
    """Each runbook_url's anchor is a heading of docs/operations.md (GitHub makes
    the anchor from the heading in lower case)."""
    headings = {line.removeprefix("### ").strip() for line in RUNBOOK.read_text().splitlines() if line.startswith("### ")}
    for rule in alerting_rules():
        assert rule["alert"] in headings, f"docs/operations.md has no section ### {rule['alert']}"
