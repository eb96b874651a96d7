"""Signed clients updates (PUT /admin/clients, CRYPTOSERVER_CLIENTS_SIGNER): keys
and signatures made by minisign itself, as an operator makes them; a good update
in force at once, every refusal changing nothing, the kept document across a
restart, and the settings the server refuses to start with."""

import hashlib
import shutil
import subprocess

import pytest
import requests

import reference
from conftest import binary, free_port, running_server



def minisign():
    """minisign's path; the test fails without it, as CI installs it."""
    path = shutil.which("minisign")
    if path is None:
        pytest.fail("minisign is missing: install Debian's minisign package (`cargo xtask ci` does)")
    return path


def digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


class Signer:
    """A minisign key pair without a password (`minisign -G -W`) in `directory`."""

    def __init__(self, directory, name="signer"):
        directory.mkdir(exist_ok=True)
        self.public_path = directory / f"{name}.pub"
        self.secret_path = directory / f"{name}.key"
        subprocess.run(
            [minisign(), "-G", "-W", "-p", self.public_path, "-s", self.secret_path],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.public_key = self.public_path.read_text().splitlines()[1]

    def sign(self, path, text, comment=None):
        """F.signed for a clients file F of `text`, as docs/clients.md says to make it."""
        path.write_text(text)
        command = [minisign(), "-S", "-s", self.secret_path, "-m", path]
        if comment:
            command += ["-t", comment]
        subprocess.run(command, check=True, capture_output=True, timeout=30)
        return path.with_name(path.name + ".minisig").read_bytes() + path.read_bytes()


def clients_text(serial, clients):
    """`clients`: (token, rest of the line) pairs."""
    head = "" if serial is None else f"serial={serial}\n"
    return head + "".join(f"{digest(token)} {rest}\n" for token, rest in clients)


FIRST = [("token-billing", "billing namespace=billing"), ("token-plain", "plain")]
SECOND = [("token-billing-2", "billing namespace=billing"), ("token-auth", "auth namespace=auth"), ("token-plain", "plain")]


@pytest.fixture
def setup(tmp_path):
    """A MODE16 server's secrets, a signer, a state directory and the first clients (serial 1)."""
    secret_dir = reference.write_random_secrets("MODE16", tmp_path / "secrets")
    signer = Signer(tmp_path / "keys")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    clients_file = tmp_path / "clients"
    clients_file.write_text(clients_text(1, FIRST))
    env = {
        "CRYPTOSERVER_TOKENS_FILE": str(clients_file),
        "CRYPTOSERVER_CLIENTS_SIGNER": signer.public_key,
        "CRYPTOSERVER_STATE_DIR": str(state_dir),
        "RUST_LOG": "info",
    }
    return tmp_path, secret_dir, signer, state_dir, clients_file, env


def put(server, document):
    return requests.put(f"{server.url}/admin/clients", data=document, timeout=30)


def serial_of(server):
    return requests.get(f"{server.url}/readyz", timeout=5).json()["clients_serial"]


def mac(server, token, message):
    response = requests.post(f"{server.url}/hmac", data=message, headers=bearer(token), timeout=10)
    return response.status_code, response.content


def test_a_good_update_is_in_force_at_once_and_kept(setup):
    tmp_path, secret_dir, signer, state_dir, _, env = setup
    # MODE16 derives namespaces at start: auth must be there already for the update to add a client of it.
    env["CRYPTOSERVER_TOKENS_FILE"] = str(tmp_path / "clients-with-auth")
    (tmp_path / "clients-with-auth").write_text(clients_text(1, FIRST + [("token-auth-old", "auth-old namespace=auth")]))
    document = signer.sign(tmp_path / "F", clients_text(2, SECOND))
    with running_server(tmp_path, "MODE16", secret_dir, env) as server:
        assert serial_of(server) == 1
        assert mac(server, "token-billing", b"x")[0] == 200
        response = put(server, document)
        assert response.status_code == 200, response.text
        assert response.json() == {"serial": 2, "clients": 3}
        assert serial_of(server) == 2
        assert mac(server, "token-billing", b"x")[0] == 401
        for token, namespace in [("token-billing-2", "billing"), ("token-auth", "auth"), ("token-plain", None)]:
            for message in [b"", b"hello world"]:
                assert mac(server, token, message) == (200, reference.mac("MODE16", secret_dir, message, namespace))
        metrics = requests.get(f"{server.url}/metrics", headers=bearer("token-plain"), timeout=5).text.splitlines()
        assert "cryptoserver_clients_updates_total 1" in metrics
        assert 'cryptoserver_requests_total{route="/admin/clients",status="200"} 1' in metrics
    assert (state_dir / "clients.signed").read_bytes() == document
    assert "signed clients update applied" in server.log()
