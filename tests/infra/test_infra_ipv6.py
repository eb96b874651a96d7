"""The dual-stack bind the module writes when it admits IPv6 clients (`[::]`) serves
IPv4 and IPv6 clients alike. The server runs in a private network namespace, whose
only interface is loopback: binding every address there reaches nothing else."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import binary
from infra_tools import TERRAFORM

# Runs inside the namespace: brings loopback up, starts the server, and asks /readyz
# over 127.0.0.1 and ::1 until both answer (or 30 s pass); prints what each answered.
CLIENTS = r"""
import subprocess, sys, time, urllib.request
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
server = subprocess.Popen([sys.argv[1]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
answers = {}
try:
    deadline = time.monotonic() + 30
    while len(answers) < 2 and time.monotonic() < deadline and server.poll() is None:
        for name, host in (("ipv4", "127.0.0.1"), ("ipv6", "[::1]")):
            try:
                answers[name] = urllib.request.urlopen(f"http://{host}:{sys.argv[2]}/readyz", timeout=1).status
            except OSError:
                time.sleep(0.05)
finally:
    server.terminate()
    server.wait(timeout=15)
print(" ".join(f"{name}={status}" for name, status in sorted(answers.items())))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
                    reason="a private network namespace needs root, unshare and ip (CI runs as root)")
def test_the_dual_stack_bind_serves_ipv4_and_ipv6_clients(tmp_path):
    assert 'bind_host = local.ipv6 ? "[::]" : "0.0.0.0"' in (TERRAFORM / "main.tf").read_text()
    secret_dir = tmp_path / "secrets"
    generated = subprocess.run([binary("cryptoserver-secrets"), "generate", "--mode", "MODE0", "--dir", secret_dir],
                               capture_output=True, text=True, timeout=60)
    assert generated.returncode == 0, generated.stderr
    port = "8080"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRYPTOSERVER_")}
    env.update(CRYPTOSERVER_MODE="MODE0", CRYPTOSERVER_SECRETDIR=str(secret_dir), CRYPTOSERVER_BIND=f"[::]:{port}")
    result = subprocess.run(["unshare", "--net", sys.executable, "-c", CLIENTS, binary("cryptoserver"), port],
                            env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ipv4=200", "ipv6=200"], result.stdout + result.stderr
