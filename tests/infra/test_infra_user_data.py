"""deploy/cryptoserver-user-data.py, the only reader of user data on the image: it
writes the module's two settings files, once per instance, and nothing else. The
VM boots (test_vm_boot.py) show cloud-init itself running nothing from user data."""

import email.mime.multipart
import email.mime.text
import os
import subprocess
import sys

import pytest
import requests

import reference
from conftest import running_server
from infra_tools import DEPLOY
from vm import origin_settings, rendered_user_data

SCRIPT = DEPLOY / "cryptoserver-user-data.py"


@pytest.fixture
def root(tmp_path):
    """A system tree with the service user's group, as install.sh leaves it."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\ncryptoserver:x:800:800::/nonexistent:/usr/sbin/nologin\n")
    (root / "etc/group").write_text("root:x:0:\ncryptoserver:x:800:\n")
    return root


@pytest.fixture(scope="module")
def module_user_data(tmp_path_factory):
    return rendered_user_data(tmp_path_factory.mktemp("module"), mode="MODE16",
                              settings=origin_settings("vol-0123456789abcdef0"), token_sha256_digests=["cd" * 32])


def read_user_data(tmp_path, root, text):
    source = tmp_path / "user-data.txt"
    source.write_text(text)
    # Run by the Python of the image's kind: Debian's, which has PyYAML (cloud-init needs it).
    return subprocess.run([sys.executable, SCRIPT, source, root], capture_output=True, text=True, timeout=30)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives the files to root and the service user (CI runs as root)")


@needs_root
def test_writes_the_module_s_two_files_with_their_owners_and_modes(tmp_path, root, module_user_data):
    result = read_user_data(tmp_path, root, module_user_data)
    assert result.returncode == 0, result.stderr
    env, tokens = root / "etc/cryptoserver/env", root / "etc/cryptoserver/tokens"
    assert "CRYPTOSERVER_SECRETS_VOLUME_ID=vol-0123456789abcdef0\n" in env.read_text()
    assert tokens.read_text() == "cd" * 32 + "\n"
    assert (env.stat().st_uid, env.stat().st_gid, env.stat().st_mode & 0o777) == (0, 0, 0o644)
    assert (tokens.stat().st_uid, tokens.stat().st_gid, tokens.stat().st_mode & 0o777) == (0, 800, 0o640)
    assert sorted(path.name for path in (root / "etc/cryptoserver").iterdir()) == ["env", "tokens"]


@needs_root
def test_writes_once_per_instance(tmp_path, root, module_user_data):
    assert read_user_data(tmp_path, root, module_user_data).returncode == 0
    changed = module_user_data.replace("vol-0123456789abcdef0", "vol-0fffffffffffffff0")
    result = read_user_data(tmp_path, root, changed)
    assert result.returncode == 0, result.stderr
    assert "read once per instance" in result.stderr
    assert "vol-0123456789abcdef0" in (root / "etc/cryptoserver/env").read_text()


@needs_root
def test_everything_else_is_named_and_ignored(tmp_path, root, module_user_data):
    config = module_user_data + "bootcmd: [touch /tmp/ran]\nruncmd: [touch /tmp/ran]\n"
    # Terraform's yamlencode quotes every key.
    config = config.replace('"write_files":\n', '"write_files":\n- path: /etc/cron.d/evil\n  content: "* * * * * root touch /tmp/ran"\n')
    assert "/etc/cron.d/evil" in config
    message = email.mime.multipart.MIMEMultipart()
    message.attach(email.mime.text.MIMEText(config, "cloud-config"))
    message.attach(email.mime.text.MIMEText("#cloud-boothook\n#!/bin/sh\ntouch /tmp/ran\n", "cloud-boothook"))
    result = read_user_data(tmp_path, root, message.as_string())
    assert result.returncode == 0, result.stderr
    assert "ignoring a text/cloud-boothook part" in result.stderr
    assert "ignoring bootcmd, runcmd in the user data" in result.stderr
    assert "ignoring a write_files entry for '/etc/cron.d/evil'" in result.stderr
    assert not (root / "etc/cron.d").exists()
    assert (root / "etc/cryptoserver/env").exists()


@pytest.mark.parametrize("text, says", [
    ("#!/bin/sh\ntouch /tmp/ran\n", "not a #cloud-config document"),
    ("#cloud-config\nwrite_files: []\n", "writes no /etc/cryptoserver/env"),
    ("#cloud-config\n: [\n", "not YAML"),
    ("#cloud-config\nwrite_files:\n- path: /etc/cryptoserver/env\n  encoding: b64\n  content: QQ==\n", "not plain text"),
], ids=["script", "no-settings", "not-yaml", "encoded"])
def test_refuses_user_data_without_the_module_s_settings(tmp_path, root, text, says):
    result = read_user_data(tmp_path, root, text)
    assert result.returncode == 1
    assert "cryptoserver-user-data: error: " in result.stderr and says in result.stderr, result.stderr
    assert not (root / "etc/cryptoserver/env").exists()


SIGNER = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"
UNNAMED, BILLING, BILLING_NEXT, AUTH = "cd" * 32, "ab" * 32, "ef" * 32, "01" * 32
CLIENTS = [
    {"name": "billing", "token_sha256_digests": [BILLING, BILLING_NEXT], "namespace": "billing",
     "routes": ["hmac", "verify"], "rate": {"per_second": 50, "burst": 200}},
    {"name": "auth", "token_sha256_digests": [AUTH], "rate": {"per_second": 0.5, "burst": 1}},
]


def signed_user_data(tmp_path, clients=CLIENTS, serial=7, signer=SIGNER, output="user_data"):
    return rendered_user_data(tmp_path, mode="MODE0", settings=origin_settings("vol-0123456789abcdef0"),
                              token_sha256_digests=[UNNAMED], clients=clients, clients_serial=serial,
                              clients_signer=signer, output=output)


@needs_root
def test_writes_named_clients_after_the_serial_line_and_the_signer_the_server_accepts(tmp_path, root):
    result = read_user_data(tmp_path, root, signed_user_data(tmp_path))
    assert result.returncode == 0, result.stderr
    env, clients = root / "etc/cryptoserver/env", root / "etc/cryptoserver/tokens"
    assert clients.read_text() == (
        "serial=7\n"
        f"{UNNAMED}\n"
        f"{BILLING} billing namespace=billing routes=hmac,verify rate=50:200\n"
        f"{BILLING_NEXT} billing namespace=billing routes=hmac,verify rate=50:200\n"
        f"{AUTH} auth rate=0.5:1\n"
    )
    settings = env.read_text().splitlines()
    assert f"CRYPTOSERVER_CLIENTS_SIGNER={SIGNER}" in settings
    assert "CRYPTOSERVER_TOKENS_FILE=/etc/cryptoserver/tokens" in settings
    # The server reads the file the module writes, serial included.
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    server_env = {"CRYPTOSERVER_TOKENS_FILE": str(clients), "CRYPTOSERVER_CLIENTS_SIGNER": SIGNER,
                  "CRYPTOSERVER_STATE_DIR": str(state_dir)}
    with running_server(tmp_path, "MODE0", secret_dir, server_env) as server:
        assert requests.get(f"{server.url}/readyz", timeout=5).json()["clients_serial"] == 7


def test_with_a_signer_only_what_is_not_the_clients_file_replaces_a_host(tmp_path):
    before = signed_user_data(tmp_path, output="replacement_user_data")
    after = signed_user_data(tmp_path, clients=CLIENTS[:1], serial=8, output="replacement_user_data")
    assert before == after
    assert signed_user_data(tmp_path, clients=CLIENTS[:1], serial=8) != signed_user_data(tmp_path)
    assert '"path": "/etc/cryptoserver/tokens"' not in before and f"CRYPTOSERVER_CLIENTS_SIGNER={SIGNER}" in before
    # A new signer, or no signer at all: every change of the user data replaces the host.
    other = signed_user_data(tmp_path, signer="RW" + "A" * 54, output="replacement_user_data")
    assert other != before
    unsigned = signed_user_data(tmp_path, signer=None, output="replacement_user_data")
    assert unsigned == signed_user_data(tmp_path, signer=None)
