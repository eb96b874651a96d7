"""A pool of replicas behind a load balancer, for real: three cryptoserver
processes over copies of one secrets directory behind HAProxy, which checks
`GET /readyz` without a token, as an AWS Network Load Balancer's health check
does. Under load one replica is killed and another loses a key file: every
answer is the right MAC, the broken replica leaves the rotation and comes back
once repaired, and every replica names the same secrets.

MODE32, because only keys read from disk per request can fail under a running
replica (MODE0 and MODE16 keep theirs in memory: an unreadable file changes
nothing there, and such a replica rightly stays in rotation). The directory's
files are sparse, so each copy is small.

Failures: none. HAProxy retries a request whose connection failed or got no
answer (the requests in flight at the kill) and one answered 503 (a key that
cannot be read), each on another replica (`retry-on` with `option redispatch`),
as a POST /hmac can safely be computed twice. The test checks that such
retries did happen, so the zero is not for want of trying."""

import contextlib
import csv
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

import reference
from conftest import free_port, program, running_server, stop, wait_until_ready, write_tokens

REPLICAS = ["a", "b", "c"]
MESSAGES = [f"pool message {number}".encode() for number in range(64)]
# The message whose key file the broken replica loses.
BROKEN_MESSAGE = MESSAGES[0]
LOAD_THREADS = 4
# Upper bound of each wait; the whole test takes about 17 s on an idle 2-core machine.
WAIT = 10


def haproxy():
    return program("haproxy", "haproxy")


def write_origin(secret_dir):
    """A sparse MODE32 directory with random keys where MESSAGES read, and its
    manifest (the zero files' digest computed once): what a replica restores."""
    secret_dir.mkdir(mode=0o700)
    keys = reference.random_keys_for(MESSAGES, ["MODE32"])
    reference.write_sparse_mode32(secret_dir, keys)
    planted = {f"{index >> 16:04x}" for index in keys}
    zeros = hashlib.sha256(bytes(reference.FILE_LEN)).hexdigest()

    def digest(name):
        return hashlib.sha256((secret_dir / name).read_bytes()).hexdigest() if name in planted else zeros

    names = [f"{index:04x}" for index in range(reference.KEYS_PER_FILE)]
    files = [{"name": name, "size": reference.FILE_LEN, "sha256": digest(name)} for name in names]
    manifest = {"format_version": 1, "mode": "MODE32", "created": "2026-01-01T00:00:00Z", "tool_version": "test", "files": files}
    (secret_dir / reference.MANIFEST).write_text(json.dumps(manifest))


def copies_of(origin, directory):
    """One copy of `origin` per replica, holes kept, made side by side."""
    copies = {name: directory / f"secrets-{name}" for name in REPLICAS}
    copying = [subprocess.Popen(["cp", "-a", "--sparse=always", origin, target]) for target in copies.values()]
    assert [process.wait(timeout=60) for process in copying] == [0] * len(copying)
    return copies


def haproxy_config(port, stats_socket, servers):
    lines = [
        "global",
        "    maxconn 256",
        f"    stats socket {stats_socket} mode 600 level admin",
        # One line per request (no header, no body): the status and how it ended.
        "    log stdout format raw local0 info",
        "defaults",
        "    log global",
        "    option httplog",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 30s",
        "    timeout server 10s",
        "    timeout check 1s",
        # A failed or unanswered attempt, or a 503, is tried again on another
        # replica; a request is retried only if it was whole in the buffer.
        "    option http-buffer-request",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response junk-response 503",
        "frontend pool",
        f"    bind 127.0.0.1:{port}",
        "    default_backend replicas",
        "backend replicas",
        "    balance roundrobin",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        "    default-server check inter 200ms fall 2 rise 2",
        *(f"    server {name} {server.url.removeprefix('http://')}" for name, server in servers.items()),
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def running_haproxy(directory, servers):
    """HAProxy in front of `servers` on a free loopback port, stopped afterwards;
    yields its URL and a function returning its servers' rows of `show stat`."""
    port, stats_socket = free_port(), directory / "haproxy.sock"
    config = directory / "haproxy.cfg"
    config.write_text(haproxy_config(port, stats_socket, servers))
    log_path = directory / "haproxy.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([haproxy(), "-db", "-f", config], stdout=log, stderr=subprocess.STDOUT)

    def stats():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(stats_socket))
            sock.sendall(b"show stat\n")
            text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
        rows = csv.DictReader(text.removeprefix("# ").splitlines())
        return {row["svname"]: row for row in rows if row["pxname"] == "replicas" and row["svname"] in servers}

    try:
        wait_until_ready(process, "HAProxy", stats_socket.exists, WAIT, log_path.read_text)
        yield f"http://127.0.0.1:{port}", stats
    finally:
        stop(process, 10)


def wait_for(condition, what, seconds=WAIT):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds} s for {what}")
        time.sleep(0.05)


class Load:
    """Client threads sending MESSAGES in turn through the load balancer, each on
    its own keep-alive connection, until stopped (or a bounded number each).
    Anything but a 200 with the right MAC is a failure."""

    def __init__(self, url, token, expected):
        self.url, self.expected = url, expected
        self.headers = {"Authorization": f"Bearer {token}"}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered, self.failures = 0, []
        self.threads = [threading.Thread(target=self.run, args=(offset,)) for offset in range(LOAD_THREADS)]

    def run(self, offset):
        with requests.Session() as session:
            for number in range(offset, offset + 20_000):
                if self.stop.is_set():
                    return
                message = MESSAGES[number % len(MESSAGES)]
                try:
                    response = session.post(f"{self.url}/hmac", data=message, headers=self.headers, timeout=10)
                except requests.RequestException as error:
                    failure = type(error).__name__
                else:
                    if response.status_code != 200:
                        failure = f"status {response.status_code}"
                    else:
                        failure = None if response.content == self.expected[message] else "a wrong MAC"
                with self.lock:
                    self.answered += 1
                    if failure:
                        self.failures.append(failure)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def requests_counted(stats, name):
    """Requests HAProxy has sent to replica `name` (health checks not included)."""
    return int(stats()[name]["stot"])


def test_a_pool_behind_haproxy_survives_a_killed_and_a_broken_replica(tmp_path):
    haproxy()
    origin = tmp_path / "origin"
    write_origin(origin)
    expected_fingerprint = reference.fingerprint(origin)
    expected = {message: reference.mac("MODE32", origin, message) for message in MESSAGES}
    copies = copies_of(origin, tmp_path)
    token = "pool-" + os.urandom(8).hex()
    auth = {"Authorization": f"Bearer {token}"}
    env = {"CRYPTOSERVER_TOKENS_FILE": str(write_tokens(tmp_path, token))}

    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(running_server(tmp_path, "MODE32", copies[name], env)) for name in REPLICAS}
        url, stats = stack.enter_context(running_haproxy(tmp_path, servers))
        # Every replica passes the health check, which sends no token.
        wait_for(lambda: all(row["check_status"] == "L7OK" for row in stats().values()), "every replica to pass GET /readyz")
        for replica in [*(server.url for server in servers.values()), url]:
            ready = requests.get(f"{replica}/readyz", timeout=5)
            assert ready.json() == {"ready": True, "mode": "MODE32", "fingerprint": expected_fingerprint, "clients_serial": 0}

        with Load(url, token, expected) as load:
            wait_for(lambda: load.answered >= 200, "the load to start")

            # A replica dies with requests in flight.
            servers["a"].process.send_signal(signal.SIGKILL)
            wait_for(lambda: stats()["a"]["status"] == "DOWN", "HAProxy to take the killed replica out")

            # Another loses a key file: the next request that reads it gets 503,
            # and from then on so does its /readyz.
            broken_file = copies["b"] / reference.key_location("MODE32", BROKEN_MESSAGE)[0]
            os.chmod(broken_file, 0)
            wait_for(lambda: requests.get(f"{servers['b'].url}/readyz", timeout=5).status_code == 503, "the broken replica to notice")
            wait_for(lambda: stats()["b"]["status"] == "DOWN", "HAProxy to take the broken replica out")
            before = {name: requests_counted(stats, name) for name in ["b", "c"]}
            time.sleep(1)
            after = {name: requests_counted(stats, name) for name in ["b", "c"]}
            assert after["b"] == before["b"], "a replica out of rotation was sent requests"
            assert after["c"] > before["c"], "the load stopped"

            # Repaired, it is back in rotation by itself.
            os.chmod(broken_file, 0o400)
            wait_for(lambda: stats()["b"]["status"] == "UP", "the repaired replica to come back")
            back = requests_counted(stats, "b")
            wait_for(lambda: requests_counted(stats, "b") > back, "the repaired replica to be sent requests")

        assert load.answered > 1000
        assert load.failures == [], f"{len(load.failures)} of {load.answered} requests failed: {sorted(set(load.failures))}"
        # The zero is HAProxy's retries at work: requests sent to the killed
        # replica and the broken one's 503s were sent again to another replica.
        metrics = requests.get(f"{servers['b'].url}/metrics", headers=auth, timeout=5).text
        assert 'cryptoserver_requests_total{route="/hmac",status="503"}' in metrics
        assert all(int(stats()[name]["wredis"]) > 0 for name in ["a", "b"])
        for name in ["b", "c"]:
            ready = requests.get(f"{servers[name].url}/readyz", timeout=5)
            assert ready.json() == {"ready": True, "mode": "MODE32", "fingerprint": expected_fingerprint, "clients_serial": 0}
