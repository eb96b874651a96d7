"""Signed clients updates (PUT /admin/clients, CRYPTOSERVER_CLIENTS_SIGNER): keys
and signatures made by minisign itself, as an operator makes them; a good update
in force at once, every refusal changing nothing, the kept document across a
restart, and the settings the server refuses to start with."""

import concurrent.futures
import os
import signal
import subprocess
import time

import pytest
import requests
import yaml

import reference
from conftest import REPO, binary, free_port, running_server
from signed_clients import Signer, bearer, clients_text

OPERATION = yaml.safe_load((REPO / "api" / "openapi.yaml").read_text())["paths"]["/admin/clients"]["put"]


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
    """PUT /admin/clients; its status and JSON fields are api/openapi.yaml's."""
    response = requests.put(f"{server.url}/admin/clients", data=document, timeout=30)
    documented = OPERATION["responses"].get(str(response.status_code))
    assert documented is not None, f"{response.status_code} is not documented for PUT /admin/clients"
    schema = documented.get("content", {}).get("application/json", {}).get("schema", {})
    if "properties" in schema:
        assert set(response.json()) == set(schema["properties"]), response.text
    return response


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


def flip(document, at):
    """`document` with the base64 character at `at` changed to another one."""
    changed = b"B" if document[at : at + 1] == b"A" else b"A"
    return document[:at] + changed + document[at + 1 :]


def test_every_refusal_changes_nothing_and_the_next_request_works(setup):
    tmp_path, secret_dir, signer, state_dir, clients_file, env = setup
    clients_file.write_text(clients_text(5, FIRST))
    other = Signer(tmp_path / "keys", "other")
    good_text = clients_text(6, SECOND[:1] + FIRST[1:])
    good = signer.sign(tmp_path / "F", good_text, comment="clients v6")
    lines = good.split(b"\n")
    signature_at = len(lines[0]) + 1 + len(lines[1]) // 2
    file_at = good.index(b"serial=6") + len(b"serial=")
    refusals = [
        ("another key", other.sign(tmp_path / "G", good_text), 403, "another key"),
        ("a flipped byte in the file", good[:file_at] + b"7" + good[file_at + 1 :], 403, "does not verify"),
        ("a flipped byte in the signature", flip(good, signature_at), 403, "does not verify"),
        ("a changed trusted comment", good.replace(b"clients v6", b"clients v9"), 403, "does not verify"),
        ("an equal serial", signer.sign(tmp_path / "H", clients_text(5, SECOND[:1])), 409, "not above the serial in force, 5"),
        ("a lower serial", signer.sign(tmp_path / "I", clients_text(4, SECOND[:1])), 409, "not above the serial in force, 5"),
        ("no serial", signer.sign(tmp_path / "J", clients_text(None, SECOND[:1])), 409, "serial 0 is not above"),
        (
            "a line the parser refuses",
            signer.sign(tmp_path / "K", "serial=7\nmy-secret-token app\n"),
            400,
            "the signed clients file's line 2: not a SHA-256 hex digest",
        ),
        ("a bad option", signer.sign(tmp_path / "L", clients_text(7, [("t", "app rate=0")])), 400, "line 2: bad value '0' of option rate"),
        ("no digest", signer.sign(tmp_path / "M", "serial=7\n"), 400, "holds no token digest"),
        ("a new namespace", signer.sign(tmp_path / "N", clients_text(7, [("t", "app namespace=new")])), 400, "namespace 'new' is new, and MODE16"),
        ("the file alone", good_text.encode(), 400, "not a signed clients document"),
        ("the signature alone", good[: good.index(b"serial=")], 400, "not a signed clients document"),
        ("nothing", b"", 400, "not a signed clients document"),
        ("four lines of text", b"a\nb\nc\nd\n" + good_text.encode(), 400, "not a minisign signature"),
        ("too large a body", good + b"#" * (1 << 20), 413, "at most 1048576 bytes"),
    ]
    with running_server(tmp_path, "MODE16", secret_dir, env) as server:
        before = mac(server, "token-billing", b"hello world")
        assert before[0] == 200
        for name, document, status, error in refusals:
            response = put(server, document)
            assert response.status_code == status, (name, response.text)
            assert error in response.json()["error"], (name, response.json())
            if status == 409:
                assert response.json()["serial_in_force"] == 5, name
            assert mac(server, "token-billing", b"hello world") == before, name
            assert mac(server, "token-billing-2", b"x")[0] == 401, name
            assert serial_of(server) == 5, name
        assert not (state_dir / "clients.signed").exists()
        assert list(state_dir.iterdir()) == []
        metrics = requests.get(f"{server.url}/metrics", headers=bearer("token-plain"), timeout=5).text.splitlines()
        assert f"cryptoserver_clients_updates_refused_total {len(refusals)}" in metrics
        assert "cryptoserver_clients_updates_total 0" in metrics
        # After all that, the good document still applies.
        response = put(server, good)
        assert response.json() == {"serial": 6, "clients": 2}, response.text
        assert mac(server, "token-billing-2", b"hello world") == before
    log = server.log()
    assert "signed clients update refused" in log
    assert "my-secret-token" not in log and "token-billing" not in log


def test_the_kept_document_is_in_force_after_a_restart_unless_the_file_is_newer(setup):
    tmp_path, secret_dir, signer, state_dir, clients_file, env = setup
    document = signer.sign(tmp_path / "F", clients_text(3, SECOND[:1]))
    with running_server(tmp_path, "MODE16", secret_dir, env) as server:
        assert put(server, document).status_code == 200
    # The user data still holds serial 1: the kept serial 3 is in force.
    with running_server(tmp_path, "MODE16", secret_dir, env) as server:
        assert serial_of(server) == 3
        assert mac(server, "token-billing-2", b"x")[0] == 200
        assert mac(server, "token-billing", b"x")[0] == 401
        # SIGHUP chooses the same way: the file at serial 2 is older, at serial 4 newer.
        clients_file.write_text(clients_text(2, FIRST))
        assert reload(server) == 3
        clients_file.write_text(clients_text(4, FIRST))
        assert reload(server) == 4
        assert mac(server, "token-billing", b"x")[0] == 200
    # A newer user data file wins at start too.
    with running_server(tmp_path, "MODE16", secret_dir, env) as server:
        assert serial_of(server) == 4
        assert put(server, document).json()["serial_in_force"] == 4
    assert "the kept signed clients document is newer" in "".join(p.read_text() for p in tmp_path.glob("server-*.log"))


RELOADED = "SIGHUP: clients file read again"


def reload(server):
    """Sends SIGHUP; the serial in force once the server has logged the reload."""
    done = server.log().count(RELOADED)
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while server.log().count(RELOADED) == done:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    return serial_of(server)


def test_a_tampered_kept_document_is_ignored_with_a_log_line(setup):
    tmp_path, secret_dir, signer, state_dir, _, env = setup
    document = signer.sign(tmp_path / "F", clients_text(3, SECOND[:1]))
    (state_dir / "clients.signed").write_bytes(document.replace(b"serial=3", b"serial=9"))
    with running_server(tmp_path, "MODE16", secret_dir, env) as server:
        assert serial_of(server) == 1
        assert mac(server, "token-billing", b"x")[0] == 200
        assert mac(server, "token-billing-2", b"x")[0] == 401
        # It is no obstacle to the next update either.
        assert put(server, document).json() == {"serial": 3, "clients": 1}
    log = server.log()
    assert "the kept signed clients document is invalid and ignored" in log and "does not verify" in log, log


def test_without_a_signer_the_route_does_not_exist(setup):
    tmp_path, secret_dir, signer, _, _, env = setup
    del env["CRYPTOSERVER_CLIENTS_SIGNER"]
    document = signer.sign(tmp_path / "F", clients_text(3, SECOND[:1]))
    with running_server(tmp_path, "MODE16", secret_dir, env) as server:
        response = put(server, document)
        assert response.status_code == 404 and "no such route" in response.json()["error"]
        assert serial_of(server) == 1
        assert mac(server, "token-billing", b"x")[0] == 200


def start_failure(secret_dir, env):
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSERVER_")}
    full.update(CRYPTOSERVER_MODE="MODE16", CRYPTOSERVER_SECRETDIR=str(secret_dir), CRYPTOSERVER_BIND=f"127.0.0.1:{port}")
    full.update(env)
    result = subprocess.run([binary("cryptoserver")], env=full, capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


def test_the_server_refuses_to_start_with_a_bad_signer_setting(setup):
    tmp_path, secret_dir, signer, state_dir, _, env = setup
    secret_line = signer.secret_path.read_text().splitlines()[1]
    cases = [
        ({"CRYPTOSERVER_CLIENTS_SIGNER": signer.public_key[:-4]}, "CRYPTOSERVER_CLIENTS_SIGNER is not a minisign public key"),
        ({"CRYPTOSERVER_CLIENTS_SIGNER": "untrusted comment: minisign public key"}, "starting with RW"),
        ({"CRYPTOSERVER_CLIENTS_SIGNER": secret_line}, "looks like a minisign SECRET key"),
        ({"CRYPTOSERVER_TOKENS_FILE": None}, "CRYPTOSERVER_CLIENTS_SIGNER is set without a clients file"),
        ({"CRYPTOSERVER_STATE_DIR": str(state_dir / "absent")}, "CRYPTOSERVER_STATE_DIR"),
    ]
    for change, expected in cases:
        case = {k: v for k, v in {**env, **change}.items() if v is not None}
        code, output = start_failure(secret_dir, case)
        assert code != 0, (change, output)
        assert expected in output, (change, output)
        assert secret_line not in output and "cryptoserver started" not in output


def test_updates_sent_at_once_end_with_the_highest_serial_in_force_and_kept(setup):
    """Each update compares its serial with the set it replaces while no other
    changes it: whatever order concurrent updates land in, a lower serial never
    replaces a higher one, in force or kept."""
    tmp_path, secret_dir, signer, state_dir, _, env = setup
    documents = {
        serial: signer.sign(tmp_path / f"F{serial}", clients_text(serial, [(f"token-{serial}", "app")]))
        for serial in range(2, 10)
    }
    with running_server(tmp_path, "MODE16", secret_dir, env) as server:
        with concurrent.futures.ThreadPoolExecutor(len(documents)) as pool:
            answers = dict(zip(documents, pool.map(lambda document: put(server, document), documents.values())))
        assert {answer.status_code for answer in answers.values()} <= {200, 409}
        assert answers[9].status_code == 200
        assert serial_of(server) == 9
        assert mac(server, "token-9", b"x")[0] == 200
        assert mac(server, "token-2", b"x")[0] == 401
    assert (state_dir / "clients.signed").read_bytes() == documents[9]
