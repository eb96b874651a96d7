"""The server serves what cryptoserver-secrets generates, and refuses a directory whose
manifest is of another mode even when the files it would need are there.
(MODE32: see test_mode32.py, which serves the directory its scenario generates.)"""

import os
import subprocess

import pytest
import requests

import reference
from conftest import binary, free_port, running_server
from secret_tools import FILE_LEN, MANIFEST, generate, verify

MESSAGES = [b"", b"hello world", b"apples and pears", os.urandom(4096)]


def generated(secret_dir, mode):
    result = generate(secret_dir, mode)
    assert result.returncode == 0, result.stderr
    return secret_dir


@pytest.mark.parametrize("mode", ["MODE0", "MODE16"])
def test_the_server_serves_generated_secrets(tmp_path, mode):
    secret_dir = generated(tmp_path / "secrets", mode)
    with running_server(tmp_path, mode, secret_dir, extra_env={"RUST_LOG": "info"}) as server:
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
        for message in MESSAGES:
            response = requests.post(f"{server.url}/hmac", data=message, timeout=10)
            assert response.status_code == 200
            assert response.content == reference.mac(mode, secret_dir, message)
    assert f"no {MANIFEST}" not in server.log(), "the server did not find the generated manifest"


def test_every_tool_reports_the_same_fingerprint(tmp_path):
    """verify prints it, the server logs it, /readyz and the build-info metric carry it;
    a second set of secrets has another one."""
    secret_dir = generated(tmp_path / "secrets", "MODE16")
    expected = reference.fingerprint(secret_dir)
    checked = verify(secret_dir)
    assert checked.returncode == 0, checked.stderr
    assert f"secrets fingerprint {expected}" in checked.stderr
    with running_server(tmp_path, "MODE16", secret_dir, extra_env={"RUST_LOG": "info"}) as server:
        ready = requests.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "mode": "MODE16", "fingerprint": expected, "clients_serial": None}
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
        assert f'mode="MODE16",fingerprint="{expected}"' in metrics
    assert expected in server.log()
    other = generated(tmp_path / "other", "MODE16")
    assert reference.fingerprint(other) != expected


def test_secrets_made_by_hand_have_no_fingerprint(tmp_path):
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "secret").write_bytes(os.urandom(32))
    os.chmod(secret_dir / "secret", 0o400)
    with running_server(tmp_path, "MODE0", secret_dir) as server:
        assert requests.get(f"{server.url}/readyz", timeout=10).json() == {
            "ready": True,
            "mode": "MODE0",
            "fingerprint": None,
            "clients_serial": None,
        }


@pytest.mark.parametrize(
    "generated_mode, served_mode, extra_file, extra_len",
    [("MODE16", "MODE0", "secret", 32), ("MODE0", "MODE16", "0000", FILE_LEN)],
)
def test_the_server_refuses_a_manifest_of_another_mode(tmp_path, generated_mode, served_mode, extra_file, extra_len):
    secret_dir = generated(tmp_path / "secrets", generated_mode)
    # The files the served mode needs are there too: only the manifest tells the modes apart.
    (secret_dir / extra_file).write_bytes(os.urandom(extra_len))
    os.chmod(secret_dir / extra_file, 0o400)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSERVER_")}
    env.update(
        CRYPTOSERVER_MODE=served_mode,
        CRYPTOSERVER_SECRETDIR=str(secret_dir),
        CRYPTOSERVER_BIND=f"127.0.0.1:{free_port()}",
    )
    result = subprocess.run([binary("cryptoserver")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert generated_mode in result.stderr and MANIFEST in result.stderr, result.stderr
