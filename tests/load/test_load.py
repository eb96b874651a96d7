"""A bounded load test: many concurrent clients against a MODE16 server on
loopback for a fixed time, some sending malformed requests or hanging up half
way, some trickling their bytes. Every well-formed request must get 200 with
exactly the answer tests/reference.py computes, every malformed one its own 4xx,
and the server must serve normally afterwards."""

import random
import time

import requests

import loadgen
import reference
from conftest import running_server

LOAD_SECONDS = 10
# Slow clients finish the request they are trickling after the deadline.
STRAGGLER_SECONDS = 8
KEEP_ALIVE_CLIENTS = 16
RAW_CLIENTS = 6
SLOW_CLIENTS = 8
MALFORMED_CLIENTS = 6


def test_many_clients_some_malformed_some_slow(tmp_path):
    secret_dir = reference.write_random_secrets(loadgen.MODE, tmp_path / "secrets")
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    tally = loadgen.Tally()
    with running_server(tmp_path, loadgen.MODE, secret_dir, loadgen.SERVER_ENV) as server:
        deadline = time.monotonic() + LOAD_SECONDS
        client = lambda: random.Random(rng.randrange(2**32))  # noqa: E731
        targets = (
            [(loadgen.keep_alive_client, (server, secret_dir, client(), deadline, tally)) for _ in range(KEEP_ALIVE_CLIENTS)]
            + [(loadgen.raw_client, (server, secret_dir, client(), deadline, tally)) for _ in range(RAW_CLIENTS)]
            + [(loadgen.slow_client, (server, secret_dir, client(), deadline, tally)) for _ in range(SLOW_CLIENTS)]
            + [(loadgen.malformed_client, (server, client(), deadline, tally)) for _ in range(MALFORMED_CLIENTS)]
        )
        stuck = loadgen.wait_for(loadgen.start_clients(targets), LOAD_SECONDS + STRAGGLER_SECONDS)
        assert not stuck, f"{len(stuck)} clients still running after {LOAD_SECONDS + STRAGGLER_SECONDS}s"

        assert server.process.poll() is None, f"the server died under load:\n{server.log()}"
        assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200
        message = b"after the load"
        after = requests.post(f"{server.url}/hmac", data=message, timeout=5)
        assert after.status_code == 200 and after.content == reference.mac(loadgen.MODE, secret_dir, message)

    assert tally.failures == [], f"{len(tally.failures)} failures (seed {seed}), first ones: {tally.failures[:10]}"
    counts = tally.counts
    print(f"seed {seed}: {sorted(counts.items())}")
    assert tally.total("ok ") >= 500, counts
    for kind in loadgen.KINDS:
        assert counts.get(f"ok {kind}", 0) > 0 and counts.get(f"ok slow {kind}", 0) > 0, (kind, counts)
    assert tally.total("ok slow ") >= SLOW_CLIENTS, counts
    for name, _, _ in loadgen.malformed_requests(rng):
        assert counts.get(f"refused {name}", 0) > 0, (name, counts)
    assert counts.get("refused abandoned request", 0) > 0, counts
