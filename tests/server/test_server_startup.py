"""Bad configuration stops the server before it binds, with one line naming the problem."""

import hashlib
import json
import os
import subprocess

import pytest
import requests

import reference
from conftest import binary, forbid_io_uring, free_port, running_server


def start(mode, secret_dir, extra_env=None, args=(), preexec_fn=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSERVER_") and k != "RUST_LOG"}
    env.update(CRYPTOSERVER_MODE=mode, CRYPTOSERVER_SECRETDIR=str(secret_dir), CRYPTOSERVER_BIND=f"127.0.0.1:{free_port()}")
    env.update(extra_env or {})
    return subprocess.run(
        [binary("cryptoserver"), *args], env=env, capture_output=True, timeout=60, preexec_fn=preexec_fn
    )


def assert_refused(result, *fragments):
    stderr = result.stderr.decode()
    assert result.returncode != 0, stderr
    assert len(stderr.strip().splitlines()) == 1, f"expected one line, got:\n{stderr}"
    for fragment in fragments:
        assert fragment in stderr, f"{fragment!r} not in {stderr!r}"


@pytest.fixture
def mode0_dir(tmp_path):
    return reference.write_random_secrets("MODE0", tmp_path / "secrets")


@pytest.fixture
def mode16_dir(tmp_path):
    return reference.write_random_secrets("MODE16", tmp_path / "secrets16")


def test_unknown_mode(mode0_dir):
    assert_refused(start("MODE8", mode0_dir), "MODE8", "MODE0, MODE16, MODE32 and MODE32X")


def test_bad_bind_address(mode0_dir):
    assert_refused(start("MODE0", mode0_dir, {"CRYPTOSERVER_BIND": "not-an-address"}), "not-an-address")


def test_missing_directory(tmp_path):
    assert_refused(start("MODE0", tmp_path / "nowhere"), str(tmp_path / "nowhere"))


def test_missing_file(tmp_path):
    (tmp_path / "empty").mkdir(mode=0o700)
    assert_refused(start("MODE0", tmp_path / "empty"), str(tmp_path / "empty" / "secret"), "missing")


def test_wrong_size(mode16_dir):
    with open(mode16_dir / "0000", "r+b") as file:
        file.truncate(reference.FILE_LEN - 1)
    assert_refused(start("MODE16", mode16_dir), str(mode16_dir / "0000"), "2097151 bytes", "2097152")


def test_mode32_missing_beef(tmp_path):
    secret_dir = tmp_path / "secrets32"
    secret_dir.mkdir(mode=0o700)
    reference.write_sparse_mode32(secret_dir, {})
    (secret_dir / "beef").unlink()
    assert_refused(start("MODE32", secret_dir), str(secret_dir / "beef"), "missing")


def test_unknown_key_reads(mode0_dir):
    assert_refused(start("MODE0", mode0_dir, {"CRYPTOSERVER_KEY_READS": "mmap"}), "mmap", "io-uring", "threads")


@pytest.mark.parametrize(
    "env, fragments",
    [
        ({"CRYPTOSERVER_BATCH_READS": "8:16"}, ["'8:16'", "PER_BATCH at most ALL"]),
        ({"CRYPTOSERVER_BATCH_READS": "64:4", "CRYPTOSERVER_MODE": "MODE32X"}, ["4 key reads per batch", "at least 8"]),
        ({"CRYPTOSERVER_BATCH_READS": "64", "CRYPTOSERVER_MAX_CONCURRENT": "64"}, ["CRYPTOSERVER_MAX_CONCURRENT (64)", "lower it"]),
        ({"CRYPTOSERVER_KEY_READ_TIMEOUT": "0"}, ["'0'", "whole number of seconds from 1 to 3600"]),
    ],
    ids=["per-batch-above-all", "fewer-than-a-mode32x-message", "not-below-max-concurrent", "zero-timeout"],
)
def test_bad_key_read_limits(mode0_dir, env, fragments):
    # Refused before the secrets are looked at: a MODE0 directory serves for every mode.
    assert_refused(start(env.pop("CRYPTOSERVER_MODE", "MODE0"), mode0_dir, env), *fragments)


@pytest.mark.parametrize(
    "variable, value, flag, fragment",
    [
        ("CRYPTOSERVER_RATE_LIMIT", "1e-300:10", "--rate-limit", "RATE from 0.001 to 1000000000"),
        ("CRYPTOSERVER_KEY_READ_TIMEOUT", "18446744073709551615", "--key-read-timeout", "from 1 to 3600"),
        ("CRYPTOSERVER_HEADER_TIMEOUT", "0", "--header-timeout", "from 1 to 3600"),
        ("CRYPTOSERVER_BODY_TIMEOUT", "0", "--body-timeout", "from 1 to 3600"),
        ("CRYPTOSERVER_MAX_CONCURRENT", "0", "--max-concurrent", "from 1 to 1048576"),
        ("CRYPTOSERVER_MAX_BODY", "2GiB", "--max-body", "from 1 byte to 1GiB"),
    ],
)
def test_numbers_out_of_range_stop_the_server_naming_the_setting(mode0_dir, variable, value, flag, fragment):
    result = start("MODE0", mode0_dir, {variable: value})
    assert result.returncode not in (0, 101), "a panic, not a configuration error"
    assert_refused(result, flag, f"'{value}'", fragment)


def test_io_uring_required_but_forbidden(tmp_path):
    secret_dir = tmp_path / "secrets32"
    secret_dir.mkdir(mode=0o700)
    reference.write_sparse_mode32(secret_dir, {})
    result = start("MODE32", secret_dir, {"CRYPTOSERVER_KEY_READS": "io-uring"}, preexec_fn=forbid_io_uring)
    assert_refused(result, "io_uring", "Operation not permitted", "CRYPTOSERVER_KEY_READS=auto or threads")


def test_all_zero_mode0_key(mode0_dir):
    os.chmod(mode0_dir / "secret", 0o600)
    (mode0_dir / "secret").write_bytes(bytes(32))
    assert_refused(start("MODE0", mode0_dir), str(mode0_dir / "secret"), "all zeros")


def test_all_zero_slot_in_mode16(mode16_dir):
    with open(mode16_dir / "0000", "r+b") as file:
        file.seek(32 * 1234)
        file.write(bytes(32))
    assert_refused(start("MODE16", mode16_dir), "key slot 1234", "all zeros")


def test_group_writable_file(mode0_dir):
    os.chmod(mode0_dir / "secret", 0o620)
    assert_refused(start("MODE0", mode0_dir), str(mode0_dir / "secret"), "writable by group or others")


def test_world_writable_directory(mode0_dir):
    os.chmod(mode0_dir, 0o707)
    assert_refused(start("MODE0", mode0_dir), str(mode0_dir), "writable by group or others")


def test_a_directory_where_the_secret_should_be(tmp_path):
    (tmp_path / "secrets").mkdir(mode=0o700)
    (tmp_path / "secrets" / "secret").mkdir()
    assert_refused(start("MODE0", tmp_path / "secrets"), "not a regular file")


def write_manifest(secret_dir, mode, files):
    manifest = {
        "format_version": 1,
        "mode": mode,
        "created": "2026-01-01T00:00:00Z",
        "tool_version": "test",
        "files": [{"name": name, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()} for name, content in files],
    }
    (secret_dir / "cryptoserver.manifest").write_text(json.dumps(manifest))


def test_manifest_of_another_mode(mode16_dir):
    write_manifest(mode16_dir, "MODE0", [("secret", os.urandom(32))])
    assert_refused(start("MODE16", mode16_dir), "holds MODE0 secrets", "configured for MODE16")


def test_secret_changed_since_the_manifest(mode0_dir):
    write_manifest(mode0_dir, "MODE0", [("secret", os.urandom(32))])
    assert_refused(start("MODE0", mode0_dir), str(mode0_dir / "secret"), "does not match its SHA-256")


def test_matching_manifest_serves_without_a_warning(tmp_path, mode0_dir):
    write_manifest(mode0_dir, "MODE0", [("secret", (mode0_dir / "secret").read_bytes())])
    with running_server(tmp_path, "MODE0", mode0_dir, {"RUST_LOG": "warn"}) as server:
        assert requests.post(f"{server.url}/hmac", data=b"x").status_code == 200
    assert "WARN" not in server.log()


def test_readable_by_others_is_a_warning(tmp_path, mode0_dir):
    os.chmod(mode0_dir / "secret", 0o444)
    with running_server(tmp_path, "MODE0", mode0_dir, {"RUST_LOG": "warn"}) as server:
        assert requests.post(f"{server.url}/hmac", data=b"x").status_code == 200
    assert "readable by other users" in server.log()
    assert "no cryptoserver.manifest" in server.log()


def test_a_flag_beats_the_variable(tmp_path, mode0_dir):
    with running_server(tmp_path, "MODE16", mode0_dir, args=["--mode", "MODE0"]) as server:
        assert requests.post(f"{server.url}/hmac", data=b"x").status_code == 200


def test_help_lists_the_variables():
    result = subprocess.run([binary("cryptoserver"), "--help"], capture_output=True, timeout=30)
    assert result.returncode == 0
    for variable in ["CRYPTOSERVER_MODE", "CRYPTOSERVER_SECRETDIR", "CRYPTOSERVER_BIND", "CRYPTOSERVER_MAX_BODY"]:
        assert variable in result.stdout.decode()
