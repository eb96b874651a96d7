"""POST /hmac/batch agrees with /hmac for every message, in every mode, and
refuses malformed framing before computing anything."""

import http.client
import os
import random
import re
import socket
import struct
import threading
import time

import pytest
import requests

import reference
from conftest import cpu_seconds, free_port, running_server, server_over_random_secrets

MESSAGES = [b"", b"hello world", b"apples and pears"] + [os.urandom(random.randrange(0, 300)) for _ in range(500)]


def frames(messages):
    return b"".join(struct.pack(">I", len(m)) + m for m in messages)


@pytest.fixture(scope="module")
def disk_dir(tmp_path_factory):
    """One sparse directory for MODE32 and MODE32X, which use the same files
    (65,536 take seconds to make), with keys where MESSAGES read in either."""
    secret_dir = tmp_path_factory.mktemp("disk") / "secrets"
    secret_dir.mkdir(mode=0o700)
    reference.write_sparse_mode32(secret_dir, reference.random_keys_for(MESSAGES))
    return secret_dir


@pytest.mark.parametrize(
    "mode, key_reads",
    [("MODE0", None), ("MODE16", None)] + [(mode, reads) for mode in ("MODE32", "MODE32X") for reads in ("io-uring", "threads")],
    ids=["MODE0", "MODE16", "MODE32-io-uring", "MODE32-threads", "MODE32X-io-uring", "MODE32X-threads"],
)
def test_batch_agrees_with_single_requests(tmp_path, disk_dir, mode, key_reads):
    secret_dir = disk_dir if key_reads else reference.write_random_secrets(mode, tmp_path / "secrets", MESSAGES)
    env = {"CRYPTOSERVER_KEY_READS": key_reads} if key_reads else {}
    with running_server(tmp_path, mode, secret_dir, env) as server, requests.Session() as session:
        response = session.post(f"{server.url}/hmac/batch", data=frames(MESSAGES))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        batch = [response.content[i : i + 32] for i in range(0, len(response.content), 32)]
        singles = [session.post(f"{server.url}/hmac", data=m).content for m in MESSAGES]
        assert batch == singles
        assert batch == [reference.mac(mode, secret_dir, m) for m in MESSAGES]


def post_from(server, source, path, body):
    """POST `body` from the loopback address `source`: (status, body)."""
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=60, source_address=(source, 0))
    try:
        connection.request("POST", path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_one_clients_batches_do_not_make_anothers_wait(tmp_path, disk_dir):
    """Two connections of one address loop 65,536-message MODE32X batches, which
    between them could hold every batch read; another address's one-message
    batches are served in their turn, after a few reads, not after a whole batch."""
    env = {"CRYPTOSERVER_BATCH_READS": "16:8", "CRYPTOSERVER_KEY_READ_TIMEOUT": "2"}
    big = frames([i.to_bytes(4, "big") for i in range(65536)])
    message = MESSAGES[1]
    with running_server(tmp_path, "MODE32X", disk_dir, env) as server:
        started = time.monotonic()
        assert post_from(server, "127.0.0.2", "/hmac/batch", big)[0] == 200
        whole = time.monotonic() - started
        assert whole > 1.0, f"a batch took {whole:.2f}s: too fast to wait behind"
        stop = threading.Event()
        flood_statuses = []

        def flood():
            for _ in range(20):
                if stop.is_set():
                    return
                flood_statuses.append(post_from(server, "127.0.0.2", "/hmac/batch", big)[0])

        flooders = [threading.Thread(target=flood) for _ in range(2)]
        for flooder in flooders:
            flooder.start()
        try:
            time.sleep(0.3)
            waits = []
            for _ in range(5):
                started = time.monotonic()
                status, body = post_from(server, "127.0.0.3", "/hmac/batch", frames([message]))
                waits.append(time.monotonic() - started)
                assert status == 200, body
                assert body == reference.mac("MODE32X", disk_dir, message)
                time.sleep(0.1)
        finally:
            stop.set()
            for flooder in flooders:
                flooder.join()
        assert max(waits) < min(0.5, whole / 4), f"one-message batches waited {max(waits):.2f}s; a big one takes {whole:.2f}s"
        assert set(flood_statuses) == {200}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with server_over_random_secrets(tmp_path_factory, "MODE16", "batch") as server:
        yield server


def assert_still_serves(server):
    response = requests.post(f"{server.url}/hmac/batch", data=frames([b"a", b"b"]))
    assert response.content == reference.mac("MODE16", server.secret_dir, b"a") + reference.mac("MODE16", server.secret_dir, b"b")


def test_empty_batch(server):
    response = requests.post(f"{server.url}/hmac/batch", data=b"")
    assert response.status_code == 200 and response.content == b""


@pytest.mark.parametrize(
    "body, offset",
    [
        (frames([b"abc"]) + struct.pack(">I", 9) + b"x", "byte offset 7"),
        (frames([b"abc"]) + b"\x00\x00", "byte offset 7"),
        (struct.pack(">I", 0xFFFFFFFF), "byte offset 0"),
        (frames([b""] * 65537), f"byte offset {4 * 65536}"),
    ],
    ids=["length-past-end", "trailing-bytes", "huge-length", "too-many-frames"],
)
def test_malformed_batch_is_400_naming_the_offset(server, body, offset):
    response = requests.post(f"{server.url}/hmac/batch", data=body)
    assert response.status_code == 400
    assert offset in response.json()["error"]
    assert_still_serves(server)


def test_batch_over_the_body_limit_is_413(server):
    response = requests.post(f"{server.url}/hmac/batch", data=frames([b"x" * (1 << 20)]))
    assert response.status_code == 413
    assert_still_serves(server)


def test_a_batch_its_client_abandons_stops_early_and_holds_its_slot_until_then(tmp_path):
    """MODE32 without io_uring: 65,536 key reads on the blocking threads. The
    client resets the connection mid-batch; the work must stop long before it
    would have finished, and count as in flight until it has."""
    messages = [i.to_bytes(4, "big") for i in range(65536)]
    secret_dir = reference.write_random_secrets("MODE32", tmp_path / "secrets")
    metrics_port = free_port()
    env = {"CRYPTOSERVER_KEY_READS": "threads", "CRYPTOSERVER_METRICS_BIND": f"127.0.0.1:{metrics_port}"}
    body = frames(messages)
    request = b"POST /hmac/batch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    def in_flight():
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        return int(re.search(r"^cryptoserver_in_flight_requests (\d+)$", metrics, re.M).group(1))

    with running_server(tmp_path, "MODE32", secret_dir, env) as server:
        started = time.monotonic()
        assert len(requests.post(f"{server.url}/hmac/batch", data=body, timeout=60).content) == 32 * len(messages)
        whole = time.monotonic() - started
        assert whole > 0.3, f"a batch took {whole:.2f}s: too fast to abandon midway"
        with socket.create_connection(server.address) as sock:
            sock.sendall(request)
            time.sleep(whole / 4)
            assert in_flight() >= 1
            # Reset, not a clean close: the server learns at once that nobody waits.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset = time.monotonic()
        while in_flight() > 0:
            assert time.monotonic() - reset < whole, "the abandoned batch still holds its slot"
            time.sleep(0.01)
        freed = time.monotonic() - reset
        cpu = cpu_seconds(server.process.pid)
        time.sleep(0.5)
        spent = cpu_seconds(server.process.pid) - cpu
        assert spent < 0.15, f"{spent:.2f}s of CPU after the slot was freed: the work went on"
        assert freed < whole / 2, f"the work stopped {freed:.2f}s after the reset; a whole batch takes {whole:.2f}s"
        assert len(requests.post(f"{server.url}/hmac/batch", data=body, timeout=60).content) == 32 * len(messages)
