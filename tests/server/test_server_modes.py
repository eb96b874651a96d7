"""MODE16, MODE32 and MODE32X against the independent Python implementation of the
layout rule (tests/reference.py), the committed test vectors against the server,
and MODE32's and MODE32X's manifests, which hold the same files."""

import contextlib
import hashlib
import json
import os
import random
import subprocess

import pytest
import requests

import reference
from conftest import binary, forbid_io_uring, free_port, running_server

MESSAGES = [b"", b"hello world", b"apples and pears"] + [os.urandom(random.randrange(1, 200)) for _ in range(200)]


def macs_from(server, messages):
    with requests.Session() as session:
        return [session.post(f"{server.url}/hmac", data=message).content for message in messages]


def test_mode16_matches_the_reference(tmp_path):
    secret_dir = reference.write_random_secrets("MODE16", tmp_path / "secrets")
    with running_server(tmp_path, "Mode16", secret_dir) as server:
        assert macs_from(server, MESSAGES) == [reference.mac("MODE16", secret_dir, m) for m in MESSAGES]


MODE32X_VECTORS = json.loads(reference.VECTORS.read_text())["mode32x"]["vectors"]
MODE32X_VECTOR_MESSAGES = [reference.mode32x_vector_message(v) for v in MODE32X_VECTORS]


@pytest.fixture(scope="module")
def sparse_dir(tmp_path_factory):
    """One sparse MODE32/MODE32X directory for this module's tests (65,536 files take
    seconds to make; both modes use the same files): random keys wherever MESSAGES
    read in either mode, the deterministic test keys at the MODE32X vectors' probes.
    It has no manifest, except while a test writes one (see `manifest`)."""
    secret_dir = tmp_path_factory.mktemp("disk") / "secrets"
    secret_dir.mkdir(mode=0o700)
    keys = reference.random_keys_for(MESSAGES)
    keys.update({i: reference.vector_key_at("MODE32X", i) for m in MODE32X_VECTOR_MESSAGES for i in reference.mode32x_probes(m)})
    reference.write_sparse_mode32(secret_dir, keys)
    return secret_dir


@pytest.mark.parametrize(
    "mode, key_reads",
    [("MODE32", "auto"), ("MODE32", "io-uring"), ("MODE32", "threads"), ("MODE32X", "io-uring"), ("MODE32X", "threads")],
)
def test_mode32_matches_the_reference(tmp_path, sparse_dir, mode, key_reads):
    env = {"CRYPTOSERVER_KEY_READS": key_reads, "RUST_LOG": "warn"}
    with running_server(tmp_path, mode.lower(), sparse_dir, env) as server:
        assert macs_from(server, MESSAGES) == [reference.mac(mode, sparse_dir, m) for m in MESSAGES]
        assert requests.get(f"{server.url}/readyz").status_code == 200
    assert "io_uring is unavailable" not in server.log()
    # Files made by hand serve in either mode: the operator chose, and is told.
    assert "no cryptoserver.manifest" in server.log()


def test_mode32_without_io_uring_falls_back_to_threads(tmp_path, sparse_dir):
    with running_server(tmp_path, "MODE32", sparse_dir, {"RUST_LOG": "warn"}, preexec_fn=forbid_io_uring) as server:
        assert macs_from(server, MESSAGES) == [reference.mac("MODE32", sparse_dir, m) for m in MESSAGES]
    assert "io_uring is unavailable" in server.log()
    assert "Operation not permitted" in server.log()


@pytest.mark.parametrize("key_reads", ["io-uring", "threads"])
def test_committed_mode32x_vectors_match_the_server(tmp_path, sparse_dir, key_reads):
    """Through /hmac, /hmac/batch and /verify, which must agree."""
    assert [len(m) for m in MODE32X_VECTOR_MESSAGES] == [0, 11, 16, 1_000_000]
    expected = [v["mac_hex"] for v in MODE32X_VECTORS]
    with running_server(tmp_path, "MODE32X", sparse_dir, {"CRYPTOSERVER_KEY_READS": key_reads}) as server:
        assert [mac.hex() for mac in macs_from(server, MODE32X_VECTOR_MESSAGES)] == expected
        batch = b"".join(len(m).to_bytes(4, "big") + m for m in MODE32X_VECTOR_MESSAGES[:3])
        assert requests.post(f"{server.url}/hmac/batch", data=batch).content.hex() == "".join(expected[:3])
        for message, mac in zip(MODE32X_VECTOR_MESSAGES, expected):
            wrong = mac[:-1] + ("0" if mac[-1] != "0" else "1")
            for presented, valid in [(mac, True), (wrong, False)]:
                response = requests.post(f"{server.url}/verify", data=message, headers={"X-Cryptoserver-Mac": presented})
                assert response.json() == {"valid": valid}
    for vector, message in zip(MODE32X_VECTORS, MODE32X_VECTOR_MESSAGES):
        assert reference.mode32x_probes(message) == vector["probe_indices"]


@contextlib.contextmanager
def manifest(secret_dir, mode):
    """A manifest of `mode` in the sparse directory while the block runs. Its digests
    are of all-zero files: nothing hashes MODE32's 128 GiB at startup."""
    zeros = hashlib.sha256(bytes(reference.FILE_LEN)).hexdigest()
    files = [{"name": f"{index:04x}", "size": reference.FILE_LEN, "sha256": zeros} for index in range(65536)]
    content = {"format_version": 1, "mode": mode, "created": "2026-01-01T00:00:00Z", "tool_version": "test", "files": files}
    path = secret_dir / "cryptoserver.manifest"
    path.write_text(json.dumps(content))
    try:
        yield path
    finally:
        path.unlink()


@pytest.mark.parametrize("holds, configured", [("MODE32", "MODE32X"), ("MODE32X", "MODE32")])
def test_a_manifest_of_the_other_key_rule_is_refused_at_startup(sparse_dir, holds, configured):
    with manifest(sparse_dir, holds):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSERVER_")}
        env.update(CRYPTOSERVER_MODE=configured, CRYPTOSERVER_SECRETDIR=str(sparse_dir), CRYPTOSERVER_BIND=f"127.0.0.1:{free_port()}")
        result = subprocess.run([binary("cryptoserver")], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert f"{sparse_dir}: was generated for {holds}" in output
        assert f"configured for {configured}" in output
        assert "every MAC would change" in output
        assert f"CRYPTOSERVER_MODE={holds}" in output


def test_a_matching_mode32x_manifest_serves_without_the_warning(tmp_path, sparse_dir):
    with manifest(sparse_dir, "MODE32X"), running_server(tmp_path, "MODE32X", sparse_dir, {"RUST_LOG": "warn"}) as server:
        assert requests.get(f"{server.url}/readyz").status_code == 200
    assert "no cryptoserver.manifest" not in server.log()


@pytest.mark.parametrize("holds, wanted", [("MODE32", "MODE32X"), ("MODE32X", "MODE32")])
def test_the_generator_refuses_the_other_key_rule(sparse_dir, holds, wanted):
    with manifest(sparse_dir, holds) as path:
        before = path.read_bytes()
        result = subprocess.run(
            [binary("cryptoserver-secrets"), "generate", "--mode", wanted, "--dir", sparse_dir],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0
        assert f"{path}: this directory holds {holds} secrets" in result.stderr
        assert "every MAC made with them would change; nothing was written" in result.stderr
        assert path.read_bytes() == before


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

