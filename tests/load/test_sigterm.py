"""SIGTERM under load: the server stops accepting, finishes the requests in
flight (here: requests still being trickled in when the signal arrives), exits
0, and every request that got a 200, before or after the signal, got exactly
the answer tests/reference.py computes."""

import random
import signal
import socket
import threading
import time

import pytest

import loadgen
import reference
from conftest import running_server

LOAD_BEFORE_SIGTERM = 3
KEEP_ALIVE_CLIENTS = 8
RAW_CLIENTS = 4
IN_FLIGHT = 6
# Bounds every client loop, whatever happens to the server.
LOAD_DEADLINE = 25


def in_flight_request(server, secret_dir, rng, half_sent, sigterm_sent, tally):
    """Sends a request's head and half its body, waits for SIGTERM, trickles the
    rest; the answer must be right, and the server must close the connection after it."""
    message = rng.randbytes(rng.randrange(200, 2000))
    request = loadgen.request_bytes("POST", "/hmac", message)
    half = len(request) - len(message) // 2
    try:
        with socket.create_connection(server.address, timeout=loadgen.SOCKET_TIMEOUT) as sock:
            sock.sendall(request[:half])
            half_sent.wait(timeout=10)
            if not sigterm_sent.wait(timeout=10):
                tally.fail("in flight: SIGTERM was never sent")
                return
            loadgen.trickle(sock, request[half:], rng, pause=(0.001, 0.005))
            answer = loadgen.read_response(sock)
            closed = answer is not None and sock.recv(1) == b""
    except OSError as error:
        tally.fail(f"in flight: {type(error).__name__}: {error}")
        return
    if answer is None:
        tally.fail("in flight: closed without an answer")
    elif (answer[0], answer[2]) != (200, reference.mac(loadgen.MODE, secret_dir, message)):
        tally.fail(f"in flight: status {answer[0]} or a wrong MAC")
    elif not closed:
        tally.fail("in flight: the connection stayed open after the answer during shutdown")
    else:
        tally.count("in flight ok")


def test_sigterm_under_load(tmp_path):
    secret_dir = reference.write_random_secrets(loadgen.MODE, tmp_path / "secrets")
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    tally = loadgen.Tally()
    sigterm_sent = threading.Event()
    stop = threading.Event()

    def on_error(description):
        # Once the server stops, connections are refused or closed: expected, unlike
        # before. Back off as a real client would, leaving the CPU to the requests in flight.
        if sigterm_sent.is_set():
            tally.count("connection error after SIGTERM")
            time.sleep(0.05)
        else:
            tally.fail(f"before SIGTERM: {description}")

    env = {**loadgen.SERVER_ENV, "RUST_LOG": "info"}
    with running_server(tmp_path, loadgen.MODE, secret_dir, env) as server:
        deadline = time.monotonic() + LOAD_DEADLINE
        client = lambda: random.Random(rng.randrange(2**32))  # noqa: E731
        load = loadgen.start_clients(
            [(loadgen.keep_alive_client, (server, secret_dir, client(), deadline, tally, stop, on_error)) for _ in range(KEEP_ALIVE_CLIENTS)]
            + [(loadgen.raw_client, (server, secret_dir, client(), deadline, tally, stop, on_error)) for _ in range(RAW_CLIENTS)]
        )
        time.sleep(LOAD_BEFORE_SIGTERM)
        half_sent = threading.Barrier(IN_FLIGHT + 1)
        in_flight = loadgen.start_clients(
            [(in_flight_request, (server, secret_dir, client(), half_sent, sigterm_sent, tally)) for _ in range(IN_FLIGHT)]
        )
        half_sent.wait(timeout=10)
        # In flight means begun by the server: give it time to accept these
        # connections and read their heads (a connection still in the kernel's
        # backlog at SIGTERM is refused, as for any server that stops listening).
        time.sleep(0.5)
        answered_before = tally.total("ok ")
        sigterm_sent.set()
        server.process.send_signal(signal.SIGTERM)
        try:
            exit_code = server.process.wait(timeout=15)
        finally:
            stop.set()
            stuck = loadgen.wait_for(load + in_flight, 10)

        assert exit_code == 0, server.log()
        assert not stuck, f"{len(stuck)} clients still running"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(server.address, timeout=2).close()

    assert tally.failures == [], f"{len(tally.failures)} failures (seed {seed}), first ones: {tally.failures[:10]}"
    print(f"seed {seed}: {answered_before} answered before SIGTERM; {sorted(tally.counts.items())}")
    assert answered_before >= 100, tally.counts
    assert tally.counts.get("in flight ok") == IN_FLIGHT, tally.counts
    log = server.log()
    assert "shutting down" in log and "cryptoserver stopped" in log, log
    assert "outlived the shutdown grace" not in log, log
