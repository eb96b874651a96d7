"""End to end: a real Prometheus (Debian's) on loopback scrapes a real MODE32
cryptoserver every second and evaluates deploy/monitoring's rules every second.
Healthy traffic raises no alert; a key file made unreadable, a flood of bad
tokens, connections over the per-client limit and the server stopping each make
their alerts fire, seen through
Prometheus's HTTP API; and every query of the Grafana dashboard parses and
returns the traffic it shows.

The rules are loaded as they are, except that every alert's `for` is cut to one
second (derived here from the rules file, nothing else changed): the tests wait
seconds, not the minutes the real durations ask for."""

import contextlib
import json
import os
import socket
import subprocess
import time

import pytest
import requests
import yaml

import reference
from conftest import free_port, running_server, stop, wait_until_ready, write_tokens
from monitoring_tools import DASHBOARD, RULES, tool

TOKEN = "monitoring-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Its key file is the one made unreadable; the healthy messages read other files.
BROKEN = b"a message whose key file breaks"
HEALTHY = [f"healthy-{n}".encode() for n in range(64)]
HEALTHY = [m for m in HEALTHY if reference.key_index("MODE32", m) >> 16 != reference.key_index("MODE32", BROKEN) >> 16]


def rules_with_short_for(directory):
    """deploy/monitoring's rules with every `for` set to 1s, written to `directory`."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and "for" in rule:
                rule["for"] = "1s"
    path = directory / "rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


class Prometheus:
    def __init__(self, url, log_path):
        self.url = url
        self.log_path = log_path

    def query(self, expr):
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def alerts(self):
        return requests.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]

    def wait_for_firing(self, wanted, seconds):
        """The active alerts once every alert name in `wanted` fires; fails after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            alerts = self.alerts()
            firing = {alert["labels"]["alertname"] for alert in alerts if alert["state"] == "firing"}
            if wanted <= firing:
                return alerts
            if time.monotonic() > deadline:
                pytest.fail(f"{sorted(wanted - firing)} not firing within {seconds} s; active: {summary(alerts)}")
            time.sleep(0.5)


def summary(alerts):
    return sorted((alert["labels"]["alertname"], alert["state"]) for alert in alerts)


@contextlib.contextmanager
def running_prometheus(directory, metrics_port):
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_with_short_for(directory))],
        "scrape_configs": [
            {"job_name": "cryptoserver", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    log_path = directory / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_ready(
            process,
            "prometheus",
            lambda: requests.get(f"{prometheus.url}/-/ready", timeout=1).status_code == 200,
            30,
            lambda: log_path.read_text(errors="replace"),
        )
        yield prometheus
    finally:
        stop(process, 10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A MODE32 server (tokens required, metrics on their own listener) and a
    Prometheus scraping it, shared by the module's tests in order."""
    secret_dir = tmp_path_factory.mktemp("monitoring") / "secrets"
    secret_dir.mkdir(mode=0o700)
    reference.write_sparse_mode32(secret_dir, reference.random_keys_for([BROKEN, *HEALTHY], modes=("MODE32",)))
    work = tmp_path_factory.mktemp("monitoring-run")
    metrics_port = free_port()
    env = {
        "CRYPTOSERVER_TOKENS_FILE": str(write_tokens(work, TOKEN)),
        "CRYPTOSERVER_METRICS_BIND": f"127.0.0.1:{metrics_port}",
        "CRYPTOSERVER_KEY_READ_TIMEOUT": "2",
        # Every connection of the test comes from 127.0.0.1, one client: the
        # healthy traffic holds one at a time, the connection flood holds many.
        "CRYPTOSERVER_MAX_CONNECTIONS_PER_CLIENT": "8",
    }
    with running_server(work, "MODE32", secret_dir, env) as server, running_prometheus(work, metrics_port) as prometheus:
        server.secret_dir = secret_dir
        yield server, prometheus


def healthy_traffic(server):
    """Single MACs, a batch and a verification, each checked against the reference."""
    with requests.Session() as session:
        session.headers.update(AUTH)
        for message in HEALTHY:
            response = session.post(f"{server.url}/hmac", data=message, timeout=10)
            assert response.status_code == 200
            assert response.content == reference.mac("MODE32", server.secret_dir, message)
        batch = b"".join(len(m).to_bytes(4, "big") + m for m in HEALTHY)
        assert session.post(f"{server.url}/hmac/batch", data=batch, timeout=10).status_code == 200
        mac = reference.mac("MODE32", server.secret_dir, HEALTHY[0]).hex()
        response = session.post(
            f"{server.url}/verify", data=HEALTHY[0], headers={"X-Cryptoserver-Mac": mac}, timeout=10
        )
        assert response.json() == {"valid": True}
        assert session.get(f"{server.url}/readyz", timeout=10).status_code == 200


def wait_for_result(prometheus, expr, seconds=20):
    """The result of `expr` once it is not empty; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (result := prometheus.query(expr)):
        if time.monotonic() > deadline:
            pytest.fail(f"{expr} still empty after {seconds} s:\n{prometheus.log_path.read_text()}")
        time.sleep(0.5)
    return result


def test_healthy_traffic_raises_no_alert(stack):
    server, prometheus = stack
    # Traffic before the first scrape would be in the first sample, with no rate.
    wait_for_result(prometheus, 'up{job="cryptoserver"} == 1')
    healthy_traffic(server)
    # Two scrapes after the traffic, and the recording rules evaluated on them.
    wait_for_result(prometheus, "instance:cryptoserver_key_read_duration_seconds:p99_5m > 0")
    # A few more evaluations: the start (before the first scrape) may have made
    # CryptoserverMetricsAbsent active for a moment.
    time.sleep(3)
    assert prometheus.query('up{job="cryptoserver"}')[0]["value"][1] == "1"
    assert summary(prometheus.alerts()) == []


def test_unreadable_key_file_fires_key_read_alerts(stack):
    server, prometheus = stack
    path = server.secret_dir / f"{reference.key_index('MODE32', BROKEN) >> 16:04x}"
    os.chmod(path, 0)
    try:
        statuses = [
            requests.post(f"{server.url}/hmac", data=BROKEN, headers=AUTH, timeout=10).status_code for _ in range(3)
        ]
        assert statuses == [503] * 3
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 503
        alerts = prometheus.wait_for_firing({"CryptoserverKeyReadErrors", "CryptoserverNotReady"}, 30)
        assert {alert["labels"]["severity"] for alert in alerts} <= {"critical", "warning"}
        assert all(alert["annotations"]["runbook_url"].startswith("docs/operations.md#") for alert in alerts)
    finally:
        os.chmod(path, 0o400)
    deadline = time.monotonic() + 10
    while requests.get(f"{server.url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the server did not become ready again"
        time.sleep(0.2)


def test_flood_of_bad_tokens_fires_the_unauthorized_surge(stack):
    server, prometheus = stack
    # 1,000 refusals: over 3 a second across the rule's 5-minute window. Without
    # a body: after a 401 whose body it left unread, the server now and then
    # closes the kept-alive connection without saying so (no `Connection: close`),
    # and the client's next request on it fails.
    with requests.Session() as session:
        session.headers["Authorization"] = "Bearer not-a-valid-token"
        statuses = {session.post(f"{server.url}/hmac", timeout=10).status_code for _ in range(1000)}
    assert statuses == {401}
    alerts = prometheus.wait_for_firing({"CryptoserverUnauthorizedSurge"}, 30)
    surge = next(alert for alert in alerts if alert["labels"]["alertname"] == "CryptoserverUnauthorizedSurge")
    assert surge["labels"]["job"] == "cryptoserver"
    assert "not-a-valid-token" not in json.dumps(alerts)


def closed_by_server(sock):
    """Whether the server has closed this connection (it sends nothing on its own)."""
    sock.settimeout(0.5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_connections_over_the_limit_fire_connections_refused(stack):
    server, prometheus = stack
    # 32 connections held at once from one client allowed 8: the server closes
    # the others as soon as it accepts them.
    sockets = [socket.create_connection(server.address, timeout=5) for _ in range(32)]
    try:
        closed = sum(map(closed_by_server, sockets))
        assert closed >= 16, f"only {closed} of 32 connections were closed"
        prometheus.wait_for_firing({"CryptoserverConnectionsRefused"}, 30)
    finally:
        for sock in sockets:
            sock.close()


def dashboard_queries():
    """(panel title, query) of every panel of the Grafana dashboard, with its
    variables replaced as Grafana would for this Prometheus: the one job, every
    instance, and a rate interval of a minute (four times the scrape interval
    would be Grafana's own choice; a minute holds every sample of the test)."""
    dashboard = json.loads(DASHBOARD.read_text())
    values = {"$__rate_interval": "1m", "$job": "cryptoserver", "$instance": ".*"}
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in values.items():
                expr = expr.replace(name, value)
            queries.append((panel["title"], expr))
    return queries


def test_every_dashboard_query_parses_and_shows_the_traffic(stack):
    """Runs after the traffic and the faults above, which every panel describes:
    each query must parse and return at least one series."""
    server, prometheus = stack
    queries = dashboard_queries()
    assert len(queries) >= 15
    empty = []
    for title, expr in queries:
        # Parse errors fail here, with Prometheus's message.
        if not prometheus.query(expr):
            empty.append((title, expr))
    assert empty == [], "dashboard queries with no result although their traffic happened"
    # Not only present but showing what happened.
    assert float(prometheus.query('sum(instance:cryptoserver_unauthorized:rate5m{job="cryptoserver"})')[0]["value"][1]) > 0
    assert float(prometheus.query('sum(instance:cryptoserver_key_read_errors:rate5m{job="cryptoserver"})')[0]["value"][1]) > 0
    assert float(prometheus.query('sum(job_client:cryptoserver_macs:rate5m{job="cryptoserver"})')[0]["value"][1]) > 0


def test_stopped_server_fires_down(stack):
    server, prometheus = stack
    stop(server.process, 15)
    alerts = prometheus.wait_for_firing({"CryptoserverDown"}, 30)
    down = next(alert for alert in alerts if alert["labels"]["alertname"] == "CryptoserverDown")
    assert down["labels"]["severity"] == "critical"
