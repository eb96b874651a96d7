"""The Grafana dashboard of deploy/monitoring, checked as a file: its layout, its
variables, and that it shows every metric the server exports. Its queries are
evaluated against a real Prometheus in test_prometheus.py."""

import json
import re

from conftest import REPO
from monitoring_tools import DASHBOARD, rule_groups

VARIABLES = {"datasource", "job", "instance"}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def panels():
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def expressions():
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def test_panels_are_laid_out_on_the_grid_without_overlapping():
    taken = set()
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_panel_queries_the_chosen_prometheus():
    assert {variable["name"] for variable in dashboard()["templating"]["list"]} == VARIABLES
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel.get("description"), panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= VARIABLES | {"__rate_interval"}, target["expr"]


def test_every_exported_metric_is_shown():
    """Each metric src/metrics.rs renders appears in a panel's query, or in a
    recording rule a panel's query uses."""
    code = (REPO / "src/metrics.rs").read_text().split("#[cfg(test)]")[0]
    exported = set(re.findall(r"\b(cryptoserver_[a-z_]+)", code))
    assert {"cryptoserver_build_info", "cryptoserver_requests_total", "cryptoserver_key_read_duration_seconds"} <= exported
    assert len(exported) >= 17, exported
    used = " ".join(expressions())
    for group in rule_groups():
        for rule in group["rules"]:
            if "record" in rule and rule["record"] in used:
                used += " " + rule["expr"]
    missing = {name for name in exported if name not in used}
    assert missing == set(), "metrics no panel shows"
