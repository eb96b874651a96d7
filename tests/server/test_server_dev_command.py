"""The README's first command: `cargo xtask dev` serves development secrets."""

import os
import signal
import subprocess
import time

import pytest
import requests

import reference
from conftest import REPO, binary, free_port


def test_dev_command_serves_marked_development_secrets(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSERVER_")}
    log = open(tmp_path / "dev.log", "wb")
    process = subprocess.Popen([binary("xtask"), "dev", "--bind", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, (tmp_path / "dev.log").read_text()
            try:
                response = requests.post(f"http://127.0.0.1:{port}/hmac", data=b"hello world", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, (tmp_path / "dev.log").read_text()
                time.sleep(0.2)
        secret_dir = REPO / "dev-secrets" / "mode16"
        assert response.content == reference.mac("MODE16", secret_dir, b"hello world")
        assert (secret_dir / "DEVELOPMENT-SECRETS-NOT-FOR-PRODUCTION.txt").exists()
        assert "curl" in (tmp_path / "dev.log").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


@pytest.mark.parametrize("mode", ["MODE32", "mode32x"])
def test_dev_command_refuses_the_128_gib_modes(mode):
    result = subprocess.run([binary("xtask"), "dev", "--mode", mode], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{mode.upper()} needs 128 GiB of secrets" in result.stderr
    assert "--mode MODE16" in result.stderr
