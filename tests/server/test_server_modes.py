"""MODE16 and MODE32 against the independent Python implementation of the layout
rule (tests/reference.py), and the committed test vectors against the server."""

import json
import os
import random

import pytest
import requests

import reference
from conftest import forbid_io_uring, running_server

MESSAGES = [b"", b"hello world", b"apples and pears"] + [os.urandom(random.randrange(1, 200)) for _ in range(200)]


def macs_from(server, messages):
    with requests.Session() as session:
        return [session.post(f"{server.url}/hmac", data=message).content for message in messages]


def test_mode16_matches_the_reference(tmp_path):
    secret_dir = reference.write_random_secrets("MODE16", tmp_path / "secrets")
    with running_server(tmp_path, "Mode16", secret_dir) as server:
        assert macs_from(server, MESSAGES) == [reference.mac("MODE16", secret_dir, m) for m in MESSAGES]


@pytest.mark.parametrize("key_reads", ["auto", "io-uring", "threads"])
def test_mode32_matches_the_reference(tmp_path, key_reads):
    secret_dir = reference.write_random_secrets("MODE32", tmp_path / "secrets", MESSAGES)
    env = {"CRYPTOSERVER_KEY_READS": key_reads, "RUST_LOG": "warn"}
    with running_server(tmp_path, "mode32", secret_dir, env) as server:
        assert macs_from(server, MESSAGES) == [reference.mac("MODE32", secret_dir, m) for m in MESSAGES]
        assert requests.get(f"{server.url}/readyz").status_code == 200
    assert "io_uring is unavailable" not in server.log()


def test_mode32_without_io_uring_falls_back_to_threads(tmp_path):
    secret_dir = reference.write_random_secrets("MODE32", tmp_path / "secrets", MESSAGES)
    with running_server(tmp_path, "MODE32", secret_dir, {"RUST_LOG": "warn"}, preexec_fn=forbid_io_uring) as server:
        assert macs_from(server, MESSAGES) == [reference.mac("MODE32", secret_dir, m) for m in MESSAGES]
    assert "io_uring is unavailable" in server.log()
    assert "Operation not permitted" in server.log()


def test_committed_vectors_match_the_reference():
    assert json.loads(reference.VECTORS.read_text()) == reference.compute_vectors()


@pytest.mark.parametrize("mode", ["MODE0", "MODE16", "MODE32"])
def test_committed_vectors_match_the_server(tmp_path, mode):
    vectors = [v for v in json.loads(reference.VECTORS.read_text())["vectors"] if v["mode"] == mode]
    secret_dir = tmp_path / "secrets"
    reference.write_vector_secrets(mode, secret_dir)
    with running_server(tmp_path, mode, secret_dir) as server:
        served = macs_from(server, [bytes.fromhex(v["message_hex"]) for v in vectors])
    assert [mac.hex() for mac in served] == [v["mac_hex"] for v in vectors]
