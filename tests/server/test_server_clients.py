"""Named clients (the clients file): per-namespace MACs against the Python
reference in every mode, isolation between namespaces through every route,
routes refused with 403, GET /whoami, per-client rate limits, and files the
server refuses to start with."""

import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest
import requests

import reference
from conftest import binary, free_port, running_server
from conftest import token_digest as digest

TOKENS = {"billing": "token-billing", "billing-new": "token-billing-new", "auth": "token-auth", "plain": "token-plain"}
NAMESPACES = ["billing", "auth"]


def bearer(client):
    return {"Authorization": f"Bearer {TOKENS[client]}"}


def write_clients(directory, text):
    path = directory / "clients"
    path.write_text(text)
    return path


def clients_file(directory):
    """billing (two tokens while it rotates) and auth in their namespaces; plain in the default one."""
    return write_clients(
        directory,
        "# clients\n"
        f"{digest(TOKENS['billing'])} billing namespace=billing\n"
        f"{digest(TOKENS['auth'])} auth-app namespace=auth routes=hmac,batch,verify\n"
        f"{digest(TOKENS['plain'])}\n"
        f"{digest(TOKENS['billing-new'])} billing namespace=billing\n",
    )


def frames(messages):
    return b"".join(len(m).to_bytes(4, "big") + m for m in messages)


# What a client of one namespace might send hoping for a MAC of another: the
# HKDF inputs themselves (salt, namespace names, N || 0x01) and ordinary messages.
PROBES = [b"", b"hello world", reference.NAMESPACE_SALT, b"\x01"] + [
    form for n in NAMESPACES for form in (n.encode(), n.encode() + b"\x01", reference.NAMESPACE_SALT + n.encode())
]
MESSAGES = PROBES + [os.urandom(random.randrange(1, 100)) for _ in range(20)]


@pytest.fixture(scope="module")
def sparse_dir(tmp_path_factory):
    secret_dir = tmp_path_factory.mktemp("clients-disk") / "secrets"
    secret_dir.mkdir(mode=0o700)
    reference.write_sparse_mode32(secret_dir, reference.random_keys_for(MESSAGES))
    return secret_dir


def secrets_for(mode, tmp_path, sparse_dir):
    if mode in ("MODE32", "MODE32X"):
        return sparse_dir
    return reference.write_random_secrets(mode, tmp_path / "secrets")


@pytest.mark.parametrize("mode", ["MODE0", "MODE16", "MODE32", "MODE32X"])
def test_each_namespace_gets_the_reference_macs_through_every_route(tmp_path, sparse_dir, mode):
    secret_dir = secrets_for(mode, tmp_path, sparse_dir)
    env = {"CRYPTOSERVER_CLIENTS_FILE": str(clients_file(tmp_path))}
    with running_server(tmp_path, mode, secret_dir, env) as server, requests.Session() as session:
        for client, namespace in [("billing", "billing"), ("billing-new", "billing"), ("auth", "auth"), ("plain", None)]:
            expected = [reference.mac(mode, secret_dir, m, namespace) for m in MESSAGES]
            served = [session.post(f"{server.url}/hmac", data=m, headers=bearer(client)).content for m in MESSAGES]
            assert served == expected, client
            batch = session.post(f"{server.url}/hmac/batch", data=frames(MESSAGES), headers=bearer(client))
            assert batch.content == b"".join(expected), client
            for message, mac in zip(MESSAGES[:4], expected):
                response = session.post(
                    f"{server.url}/verify", data=message, headers={**bearer(client), "X-Cryptoserver-Mac": mac.hex()}
                )
                assert response.json() == {"valid": True}, client


@pytest.mark.parametrize("mode", ["MODE0", "MODE16", "MODE32", "MODE32X"])
def test_committed_namespace_vectors_match_the_server(tmp_path, mode):
    vectors = [v for v in json.loads(reference.VECTORS.read_text())["namespaces"]["vectors"] if v["mode"] == mode]
    secret_dir = tmp_path / "secrets"
    reference.write_vector_secrets(mode, secret_dir, reference.NAMESPACE_VECTOR_MESSAGES)
    env = {"CRYPTOSERVER_TOKENS_FILE": str(clients_file(tmp_path))}
    client_of = {"billing": "billing", "auth": "auth"}
    with running_server(tmp_path, mode, secret_dir, env) as server:
        for vector in vectors:
            message = bytes.fromhex(vector["message_hex"])
            served = requests.post(f"{server.url}/hmac", data=message, headers=bearer(client_of[vector["namespace"]]))
            assert served.content.hex() == vector["mac_hex"], vector


@pytest.mark.parametrize("mode", ["MODE0", "MODE16", "MODE32", "MODE32X"])
def test_no_route_gives_a_client_another_namespaces_macs(tmp_path, sparse_dir, mode):
    """Whatever billing sends, through any route, it never gets a MAC of the
    default namespace or of auth, and /verify never accepts one."""
    secret_dir = secrets_for(mode, tmp_path, sparse_dir)
    others = {reference.mac(mode, secret_dir, m, n) for m in MESSAGES for n in (None, "auth")}
    env = {"CRYPTOSERVER_TOKENS_FILE": str(clients_file(tmp_path))}
    with running_server(tmp_path, mode, secret_dir, env) as server, requests.Session() as session:
        single = [session.post(f"{server.url}/hmac", data=m, headers=bearer("billing")).content for m in MESSAGES]
        for encoding in ["hex", "base64"]:
            response = session.post(f"{server.url}/hmac?encoding={encoding}", data=MESSAGES[1], headers=bearer("billing"))
            assert response.status_code == 200
        batch = session.post(f"{server.url}/hmac/batch", data=frames(MESSAGES), headers=bearer("billing")).content
        got = set(single) | {batch[i : i + 32] for i in range(0, len(batch), 32)}
        assert len(got) == len(set(MESSAGES)) and not got & others
        for message in MESSAGES:
            for namespace in (None, "auth"):
                mac = reference.mac(mode, secret_dir, message, namespace)
                response = session.post(
                    f"{server.url}/verify", data=message, headers={**bearer("billing"), "X-Cryptoserver-Mac": mac.hex()}
                )
                assert response.json() == {"valid": False}


def test_routes_outside_a_clients_list_get_403_naming_the_route(tmp_path):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    text = f"{digest('v')} verifier routes=verify\n{digest('h')} minter routes=hmac,batch\n"
    env = {"CRYPTOSERVER_TOKENS_FILE": str(write_clients(tmp_path, text))}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server:
        verifier, minter = {"Authorization": "Bearer v"}, {"Authorization": "Bearer h"}
        for path, name in [("/hmac", "hmac"), ("/hmac/batch", "batch")]:
            response = requests.post(f"{server.url}{path}", data=frames([b"x"]), headers=verifier)
            assert response.status_code == 403
            assert f"the {name} route" in response.json()["error"]
        mac = requests.post(f"{server.url}/hmac", data=b"x", headers=minter).content
        response = requests.post(f"{server.url}/verify", data=b"x", headers={**minter, "X-Cryptoserver-Mac": mac.hex()})
        assert response.status_code == 403 and "the verify route" in response.json()["error"]
        response = requests.post(f"{server.url}/verify", data=b"x", headers={**verifier, "X-Cryptoserver-Mac": mac.hex()})
        assert response.json() == {"valid": True}
        # An unknown token is still 401, on every route.
        assert requests.post(f"{server.url}/verify", data=b"x", headers={"Authorization": "Bearer w"}).status_code == 401


def test_whoami_tells_a_client_what_the_file_says_never_its_digest(tmp_path):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    env = {"CRYPTOSERVER_TOKENS_FILE": str(clients_file(tmp_path)), "CRYPTOSERVER_RATE_LIMIT": "100:200"}
    text = clients_file(tmp_path).read_text()
    text = text.replace("auth-app namespace=auth routes=hmac,batch,verify", "auth-app namespace=auth routes=verify rate=5:10")
    write_clients(tmp_path, text)
    with running_server(tmp_path, "MODE0", secret_dir, env) as server:
        answers = {client: requests.get(f"{server.url}/whoami", headers=bearer(client)) for client in TOKENS}
        assert answers["billing"].json() == {
            "name": "billing",
            "namespace": "billing",
            "routes": ["hmac", "batch", "verify"],
            "rate": {"per_second": 100.0, "burst": 200.0},
        }
        assert answers["auth"].json() == {
            "name": "auth-app",
            "namespace": "auth",
            "routes": ["verify"],
            "rate": {"per_second": 5.0, "burst": 10.0},
        }
        assert answers["plain"].json()["name"] is None and answers["plain"].json()["namespace"] is None
        for client, answer in answers.items():
            assert digest(TOKENS[client]) not in answer.text and digest(TOKENS[client])[:8] not in answer.text
        assert requests.get(f"{server.url}/whoami").status_code == 401


def test_a_client_with_its_own_rate_limit_is_limited_by_it_alone(tmp_path):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    text = f"{digest('slow')} slow rate=0.01:2\n{digest('slow-new')} slow rate=0.01:2\n{digest('fast')} fast\n"
    env = {"CRYPTOSERVER_TOKENS_FILE": str(write_clients(tmp_path, text)), "CRYPTOSERVER_RATE_LIMIT": "0.01:5"}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server, requests.Session() as session:
        def statuses(token, count):
            return [session.post(f"{server.url}/hmac", data=b"x", headers={"Authorization": f"Bearer {token}"}).status_code for _ in range(count)]

        # Both tokens of a client that rotates share its bucket.
        assert statuses("slow", 1) + statuses("slow-new", 2) == [200, 200, 429]
        assert statuses("fast", 6) == [200] * 5 + [429]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{d} Billing", "bad client name 'Billing'"),
        ("{d} app colour=red", "unknown option 'colour=red'"),
        ("{d} app routes=hmac,admin", "bad value 'hmac,admin' of option routes"),
        ("{d} app rate=0", "bad value '0' of option rate"),
        ("{d} app namespace=a namespace=b", "option namespace given twice"),
        ("{d}\n{d} app", "the same digest as line 2"),
        ("{d} app routes=hmac\n{e} app", "client 'app' has other options on line 2"),
    ],
)
def test_a_bad_clients_file_stops_the_server_naming_file_line_and_option(tmp_path, line, expected):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    path = write_clients(tmp_path, "# clients\n" + line.format(d=digest("a"), e=digest("b")) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSERVER_")}
    env.update(
        CRYPTOSERVER_MODE="MODE0",
        CRYPTOSERVER_SECRETDIR=str(secret_dir),
        CRYPTOSERVER_BIND=f"127.0.0.1:{free_port()}",
        CRYPTOSERVER_CLIENTS_FILE=str(path),
    )
    result = subprocess.run([binary("cryptoserver")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{path}:" in output and expected in output, output


def test_per_client_metrics_and_throttled_audit_lines(tmp_path):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    text = f"{digest('b')} billing routes=hmac,batch rate=1000:3\n{digest('p')}\n"
    env = {"CRYPTOSERVER_TOKENS_FILE": str(write_clients(tmp_path, text)), "RUST_LOG": "info"}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server, requests.Session() as session:
        billing, plain = {"Authorization": "Bearer b"}, {"Authorization": "Bearer p"}
        assert session.post(f"{server.url}/hmac", data=b"x", headers=billing).status_code == 200
        assert session.post(f"{server.url}/hmac/batch", data=frames([b"a", b"b"]), headers=billing).status_code == 200
        assert session.post(f"{server.url}/verify", data=b"x", headers=billing).status_code == 403
        assert session.post(f"{server.url}/hmac/batch", data=frames([b"a"] * 5), headers=billing).status_code == 429
        # A caller choosing names in its path or token makes no label. Refused
        # requests each have a connection: the server closes one whose body it left unread.
        for name in ["evil", "billing-2"]:
            requests.post(f"{server.url}/hmac/{name}", data=b"x", headers=billing)
            requests.post(f"{server.url}/hmac", data=b"x", headers={"Authorization": f"Bearer {name}"})
        for _ in range(300):
            requests.get(f"{server.url}/whoami", headers={"Authorization": "Bearer nobody"})
        metrics = session.get(f"{server.url}/metrics", headers=plain).text
    lines = set(metrics.splitlines())
    for line in [
        'cryptoserver_client_requests_total{client="billing",route="/hmac",status="200"} 1',
        'cryptoserver_client_requests_total{client="billing",route="/hmac/batch",status="200"} 1',
        'cryptoserver_client_requests_total{client="billing",route="/verify",status="403"} 1',
        'cryptoserver_client_requests_total{client="billing",route="/hmac/batch",status="429"} 1',
        'cryptoserver_client_macs_total{client="billing"} 3',
        'cryptoserver_client_rate_limited_total{client="billing"} 1',
        f'cryptoserver_client_macs_total{{client="{digest("p")[:8]}"}} 0',
    ]:
        assert line in lines, line
    labels = {line.split('client="')[1].split('"')[0] for line in lines if line.startswith("cryptoserver_client_")}
    assert labels == {"billing", digest("p")[:8]}
    log = server.log()
    refused = [line for line in log.splitlines() if "request refused" in line]
    assert any("billing" in line and "/verify" in line and "403" in line for line in refused), log
    assert any("billing" in line and "/hmac/batch" in line and "429" in line for line in refused), log
    assert any("unknown token" in line for line in refused), log
    # 300 refusals within a second or two: throttled to about 10 lines a second.
    assert len(refused) < 60, len(refused)
    for secret in ["Bearer", digest("b"), digest("p"), "nobody"]:
        assert secret not in log


def wait_for(condition, seconds=5):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["MODE16", "MODE32"])
def test_sighup_reloads_the_clients_file_under_load(tmp_path, sparse_dir, mode):
    """No request of a client that stays fails across reloads; a removed token
    gets 401 at once; a bad file keeps the set in force, logged and counted."""
    secret_dir = secrets_for(mode, tmp_path, sparse_dir)
    keep, removed = f"{digest('keep')} keeper namespace=billing\n", f"{digest('old')} leaver\n"
    path = write_clients(tmp_path, keep + removed)
    failures, served, stop = [], [0], threading.Event()
    expected = reference.mac(mode, secret_dir, b"hello world", "billing")

    def load():
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(f"{server.url}/hmac", data=b"hello world", headers={"Authorization": "Bearer keep"})
                if response.status_code != 200 or response.content != expected:
                    failures.append(response.status_code)
                served[0] += 1

    with running_server(tmp_path, mode, secret_dir, {"CRYPTOSERVER_TOKENS_FILE": str(path), "RUST_LOG": "info"}) as server:
        old = {"Authorization": "Bearer old"}
        assert requests.get(f"{server.url}/whoami", headers=old).status_code == 200
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            for round in range(5):
                path.write_text(keep + (removed if round % 2 else f"{digest('new')} joiner\n"))
                server.process.send_signal(signal.SIGHUP)
                expected_status = 200 if round % 2 else 401
                wait_for(lambda: requests.get(f"{server.url}/whoami", headers=old).status_code == expected_status)
            path.write_text(keep + f"{digest('x')} Bad-Name\n")
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "the clients in force are unchanged" in server.log())
            # The last good file's set: joiner in, leaver out.
            assert requests.get(f"{server.url}/whoami", headers=old).status_code == 401
            assert requests.get(f"{server.url}/whoami", headers={"Authorization": "Bearer new"}).status_code == 200
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert not failures and served[0] > 20, (failures, served)
        metrics = requests.get(f"{server.url}/metrics", headers={"Authorization": "Bearer keep"}).text
        assert "cryptoserver_clients_reload_failures_total 1" in metrics.splitlines()
        if mode == "MODE16":
            path.write_text(keep + f"{digest('n')} newcomer namespace=brand-new\n")
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "namespace 'brand-new' is new" in server.log())
            assert requests.get(f"{server.url}/whoami", headers={"Authorization": "Bearer n"}).status_code == 401
    assert f"{path}:2: bad client name 'Bad-Name'" in server.log()
    assert server.process.returncode == 0
