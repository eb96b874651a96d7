"""Vault's transit API (issue 25) with the real clients and the real peer: hvac's
generate_hmac and verify_signed_data, single and batch, in every mode against
the Python reference's namespace rule; the `bao` CLI pointed at cryptoserver;
and the same calls, good and malformed, against a real `bao server -dev` whose
answers (status, keys, types, error shape, item by item) cryptoserver's must
match, each followed by a request that must still work."""

import base64
import contextlib
import hashlib
import json
import os
import pathlib
import secrets
import subprocess
import sys

import hvac
import pytest
import requests

import reference
from conftest import free_port, running_server, stop, wait_until_ready

MODES = ["MODE0", "MODE16", "MODE32", "MODE32X"]
BAO = pathlib.Path(sys.executable).parent / "bao"
TOKENS = {name: secrets.token_hex(16) for name in ["billing", "auth", "plain", "minter", "limited"]}
MESSAGES = [b"", b"hello", b"hello world", b"\x00\xff" * 40] + [os.urandom(n) for n in (1, 31, 64, 200)]


def b64(data):
    return base64.b64encode(data).decode()


def digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def clients_file(directory):
    path = directory / "clients"
    path.write_text(
        f"{digest(TOKENS['billing'])} billing namespace=billing\n"
        f"{digest(TOKENS['auth'])} auth-app namespace=auth\n"
        f"{digest(TOKENS['plain'])} plain\n"
        f"{digest(TOKENS['minter'])} minter namespace=billing routes=hmac\n"
        f"{digest(TOKENS['limited'])} limited namespace=billing rate=0.01:5\n"
    )
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """`servers(mode)`: one cryptoserver per mode, started at its first use, with
    the clients above; MODE32 and MODE32X share one sparse directory."""
    started = {}
    base = tmp_path_factory.mktemp("vault")
    sparse = reference.write_random_secrets("MODE32", base / "sparse", MESSAGES)
    env = {"CRYPTOSERVER_CLIENTS_FILE": str(clients_file(base)), "CRYPTOSERVER_MAX_BODY": "64KiB"}
    with contextlib.ExitStack() as stack:

        def server(mode):
            if mode not in started:
                secret_dir = sparse if mode in ("MODE32", "MODE32X") else reference.write_random_secrets(mode, base / mode)
                started[mode] = stack.enter_context(running_server(base, mode, secret_dir, env))
                started[mode].secret_dir = secret_dir
            return started[mode]

        yield server


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    """A real OpenBao dev server on loopback (in memory) with transit and an hmac
    key `billing`, stopped by its pid afterwards."""
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("bao") / "bao.log"
    env = {**os.environ, "BAO_ADDR": url, "BAO_TOKEN": token, "HOME": str(log_path.parent)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [BAO, "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{port}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(
            process, "bao", lambda: requests.get(f"{url}/v1/sys/health", timeout=1).status_code == 200, 30, log_path.read_text
        )
        for command in (["secrets", "enable", "transit"], ["write", "-f", "transit/keys/billing", "type=hmac", "key_size=32"]):
            subprocess.run([BAO, *command], env=env, check=True, capture_output=True, timeout=30)
        yield type("Bao", (), {"url": url, "token": token, "env": env})
    finally:
        stop(process, 10)


def transit(server, token=None):
    return hvac.Client(url=server.url, token=token or TOKENS["billing"])


@pytest.mark.parametrize("mode", MODES)
def test_hvac_gets_the_reference_namespace_macs_single_and_batch(servers, mode):
    server = servers(mode)
    for client, namespace in [("billing", "billing"), ("auth", "auth")]:
        vault = transit(server, TOKENS[client])
        expected = [reference.mac(mode, server.secret_dir, m, namespace) for m in MESSAGES]
        for message, mac in zip(MESSAGES, expected):
            answer = vault.secrets.transit.generate_hmac(name=namespace, hash_input=b64(message))
            assert answer["data"]["hmac"] == "vault:v1:" + b64(mac)
            checked = vault.secrets.transit.verify_signed_data(name=namespace, hash_input=b64(message), hmac=answer["data"]["hmac"])
            assert checked["data"]["valid"] is True
            wrong = vault.secrets.transit.verify_signed_data(name=namespace, hash_input=b64(message + b"!"), hmac=answer["data"]["hmac"])
            assert wrong["data"]["valid"] is False
        items = [{"input": b64(m), "reference": f"r{i}"} for i, m in enumerate(MESSAGES)]
        batch = vault.adapter.post(f"/v1/transit/hmac/{namespace}", json={"batch_input": items})["data"]["batch_results"]
        assert batch == [{"hmac": "vault:v1:" + b64(mac), "reference": f"r{i}"} for i, mac in enumerate(expected)]
        # Every other MAC tampered: those items are not valid, and say so by leaving `valid` out, as Vault does.
        checks = [
            {"input": b64(m), "hmac": "vault:v1:" + b64(mac if i % 2 == 0 else bytes(32)), "reference": f"r{i}"}
            for i, (m, mac) in enumerate(zip(MESSAGES, expected))
        ]
        verified = vault.adapter.post(f"/v1/transit/verify/{namespace}", json={"batch_input": checks})["data"]["batch_results"]
        assert verified == [{"valid": True, "reference": f"r{i}"} if i % 2 == 0 else {"reference": f"r{i}"} for i in range(len(MESSAGES))]


def test_a_name_other_than_the_callers_namespace_is_refused_with_403(servers):
    server = servers("MODE0")
    for token, name, reason in [
        (TOKENS["billing"], "auth", "not this client's namespace"),
        (TOKENS["plain"], "plain", "this client has no namespace"),
        ("not-a-token", "billing", "missing or unknown token"),
    ]:
        with pytest.raises(hvac.exceptions.Forbidden) as refused:
            transit(server, token).secrets.transit.generate_hmac(name=name, hash_input=b64(b"x"))
        assert refused.value.errors[0].startswith("permission denied") and reason in refused.value.errors[0]
    # The bearer header is the same token.
    response = requests.post(
        f"{server.url}/v1/transit/hmac/billing", json={"input": b64(b"x")}, headers={"Authorization": f"Bearer {TOKENS['billing']}"}
    )
    assert response.status_code == 200 and response.json()["data"]["hmac"].startswith("vault:v1:")


def test_routes_rate_limits_and_body_size_hold_on_the_vault_routes(servers):
    server = servers("MODE16")
    minter = transit(server, TOKENS["minter"])
    assert minter.secrets.transit.generate_hmac(name="billing", hash_input=b64(b"x"))["data"]["hmac"]
    for path, body, route in [
        ("/v1/transit/hmac/billing", {"batch_input": [{"input": ""}]}, "batch"),
        ("/v1/transit/verify/billing", {"input": "", "hmac": "vault:v1:AAAA"}, "verify"),
    ]:
        response = requests.post(server.url + path, json=body, headers={"X-Vault-Token": TOKENS["minter"]})
        assert response.status_code == 403 and f"the {route} route" in response.json()["errors"][0]
    limited = {"X-Vault-Token": TOKENS["limited"]}
    # Each batch item counts: 5 items take the whole burst of 5.
    response = requests.post(f"{server.url}/v1/transit/hmac/billing", json={"batch_input": [{"input": ""}] * 5}, headers=limited)
    assert response.status_code == 200
    for body in ({"input": ""}, {"batch_input": [{"input": ""}] * 2}):
        response = requests.post(f"{server.url}/v1/transit/hmac/billing", json=body, headers=limited)
        assert response.status_code == 429 and "Retry-After" in response.headers
        assert list(response.json()) == ["errors"] and "rate limit exceeded" in response.json()["errors"][0]
    big = {"input": b64(bytes(50_000))}
    response = requests.post(f"{server.url}/v1/transit/hmac/billing", json=big, headers={"X-Vault-Token": TOKENS["billing"]})
    assert response.status_code == 413 and "CRYPTOSERVER_MAX_BODY" in response.json()["errors"][0]
    assert transit(server).secrets.transit.generate_hmac(name="billing", hash_input=b64(b"x"))["data"]["hmac"]
    metrics = requests.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKENS['billing']}"}).text
    for line in [
        'cryptoserver_requests_total{route="/v1/transit/hmac/:name",status="200"}',
        'cryptoserver_requests_total{route="/v1/transit/hmac/:name",status="429"}',
        'cryptoserver_requests_total{route="/v1/transit/verify/:name",status="403"}',
    ]:
        assert line in metrics


def test_a_server_without_a_clients_file_refuses_every_name(tmp_path):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    with running_server(tmp_path, "MODE0", secret_dir) as server:
        response = requests.post(f"{server.url}/v1/transit/hmac/billing", json={"input": ""})
        assert response.status_code == 403 and "no clients file" in response.json()["errors"][0]
        health = requests.get(f"{server.url}/v1/sys/health")
        assert health.status_code == 200 and health.json()["sealed"] is False


def run_bao(env, *args):
    done = subprocess.run([BAO, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_bao_cli_works_unchanged_against_both(servers, bao):
    server = servers("MODE16")
    ours = {**bao.env, "BAO_ADDR": server.url, "BAO_TOKEN": TOKENS["billing"]}
    message = b"apples and pears"
    for env in (ours, bao.env):
        mac = run_bao(env, "write", "-format=json", "transit/hmac/billing", f"input={b64(message)}")["data"]["hmac"]
        if env is ours:
            assert mac == "vault:v1:" + b64(reference.mac("MODE16", server.secret_dir, message, "billing"))
        verified = run_bao(env, "write", "-format=json", "transit/verify/billing", f"input={b64(message)}", f"hmac={mac}")
        assert verified["data"]["valid"] is True


def shape(value):
    """The structure of a JSON value: keys kept, values replaced by their type."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


HELLO = b64(b"hello")
# (method, path under /v1, body: JSON, or bytes sent as they are). "{mac}" is the
# server's own MAC of "hello" (the two servers' keys differ).
CALLS = [
    ("POST", "transit/hmac/billing", {"input": HELLO}),
    ("PUT", "transit/hmac/billing", {"input": HELLO}),
    ("POST", "transit/hmac/billing/sha2-256", {"input": HELLO}),
    ("POST", "transit/hmac/billing", {"input": HELLO, "algorithm": "sha2-256"}),
    ("POST", "transit/hmac/billing", {"input": ""}),
    ("POST", "transit/hmac/billing", {"input": None}),
    ("POST", "transit/hmac/billing", {"input": "aGVs\nbG8="}),
    ("POST", "transit/hmac/billing", {"input": HELLO, "key_version": 0}),
    ("POST", "transit/hmac/billing", {"input": HELLO, "key_version": 1}),
    ("POST", "transit/hmac/billing", {"input": HELLO, "key_version": "1"}),
    ("POST", "transit/hmac/billing", {"input": HELLO, "key_version": None}),
    ("POST", "transit/hmac/billing", {"input": HELLO, "key_version": 2}),
    ("POST", "transit/hmac/billing", {"input": HELLO, "key_version": -1}),
    ("POST", "transit/hmac/billing", {"input": HELLO, "key_version": "x"}),
    ("POST", "transit/hmac/billing", {"input": HELLO, "key_version": 1.5}),
    ("POST", "transit/hmac/billing", {"input": HELLO, "algorithm": "md5"}),
    ("POST", "transit/hmac/billing/md5", {"input": HELLO}),
    ("POST", "transit/hmac/billing", {}),
    ("POST", "transit/hmac/billing", b""),
    ("POST", "transit/hmac/billing", {"input": "!!!"}),
    ("POST", "transit/hmac/billing", {"input": "aGVsbG8"}),
    ("POST", "transit/hmac/billing", {"input": "aGVsbA="}),
    ("POST", "transit/hmac/billing", {"input": "aGVsbA==="}),
    ("POST", "transit/hmac/billing", {"input": "aGVs_G8="}),
    ("POST", "transit/hmac/billing", {"input": 5}),
    ("POST", "transit/hmac/billing", b'{"input": "aGVsbG8="'),
    ("POST", "transit/hmac/billing", b'{"input": "aGVsbG8="} x'),
    ("POST", "transit/hmac/billing", b"[1]"),
    ("POST", "transit/hmac/billing", b"{,}"),
    (
        "POST",
        "transit/hmac/billing",
        {"batch_input": [{"input": HELLO, "reference": "a"}, {"input": "!!", "reference": "b"}, {"input": ""}, {"reference": "d"}, {"input": 5}]},
    ),
    ("POST", "transit/hmac/billing", {"batch_input": [{"input": HELLO, "reference": 7}], "input": HELLO}),
    ("POST", "transit/hmac/billing", {"batch_input": []}),
    ("POST", "transit/hmac/billing", {"batch_input": [{"input": HELLO}], "key_version": 2}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "{mac}"}),
    ("PUT", "transit/verify/billing/sha2-256", {"input": HELLO, "hmac": "{mac}"}),
    ("POST", "transit/verify/billing", {"input": b64(b"hell"), "hmac": "{mac}"}),
    ("POST", "transit/verify/billing", {"hmac": "{mac}"}),
    ("POST", "transit/verify/billing", {"input": HELLO}),
    ("POST", "transit/verify/billing", {"input": "!!", "hmac": "{mac}"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "{mac}", "algorithm": "md5"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "signature": "{mac}"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "{bare}"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "vault:v2:{bare}"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "vault:v0:{bare}"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "vault:vx:{bare}"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "vault:v1:!!!"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "vault:v1:AAAA"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "vault:v1:"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "vault:v1"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "vault:"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": "foo:v1:{bare}"}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": ""}),
    ("POST", "transit/verify/billing", {"input": HELLO, "hmac": 5}),
    (
        "POST",
        "transit/verify/billing",
        {
            "batch_input": [
                {"input": HELLO, "hmac": "{mac}", "reference": "r1"},
                {"input": b64(b"hell"), "hmac": "{mac}", "reference": "r2"},
                {"input": "!!", "hmac": "{mac}", "reference": "r3"},
                {"input": HELLO, "hmac": "vault:v2:{bare}", "reference": "r4"},
                {"input": HELLO, "hmac": "nope", "reference": "r5"},
                {"hmac": "{mac}", "reference": "r6"},
                {"input": HELLO, "hmac": "vault:v1:!!", "reference": "r7"},
                {"input": HELLO, "hmac": "vault:v0:{bare}"},
            ]
        },
    ),
    ("POST", "transit/verify/billing", {"batch_input": [{"input": HELLO, "hmac": "{mac}"}, {"input": HELLO}]}),
    ("POST", "transit/verify/billing", {"batch_input": [{"input": HELLO, "hmac": "{mac}"}, {"input": HELLO, "signature": "{mac}"}]}),
    ("POST", "transit/verify/billing", {"batch_input": []}),
    ("GET", "transit/hmac/billing", None),
    ("DELETE", "transit/verify/billing", None),
    ("POST", "transit/nothere/billing", {}),
    ("POST", "nothere", {}),
    ("GET", "sys/health", None),
    ("GET", "sys/health?standbyok=true&activecode=299", None),
]


def substitute(body, mac):
    text = json.dumps(body).replace("{mac}", mac).replace("{bare}", mac.removeprefix("vault:v1:"))
    return text.encode()


def call(url, token, method, path, body, mac):
    data = body if isinstance(body, bytes) else None if body is None else substitute(body, mac)
    headers = {"X-Vault-Token": token, "Content-Type": "application/json"}
    return requests.request(method, f"{url}/v1/{path}", data=data, headers=headers, timeout=30)


def test_every_call_gets_the_answer_openbao_gives_and_the_next_request_works(servers, bao):
    server = servers("MODE16")
    token = TOKENS["billing"]
    good = {"input": HELLO}
    macs = {
        url: requests.post(f"{url}/v1/transit/hmac/billing", json=good, headers={"X-Vault-Token": t}).json()["data"]["hmac"]
        for url, t in [(server.url, token), (bao.url, bao.token)]
    }
    assert macs[server.url] == "vault:v1:" + b64(reference.mac("MODE16", server.secret_dir, b"hello", "billing"))
    for method, path, body in CALLS:
        ours = call(server.url, token, method, path, body, macs[server.url])
        theirs = call(bao.url, bao.token, method, path, body, macs[bao.url])
        what = f"{method} {path} {body!r}"
        assert ours.status_code == theirs.status_code, f"{what}: {ours.text} against OpenBao's {theirs.text}"
        if "health" not in path:
            assert shape(ours.json()) == shape(theirs.json()), f"{what}: {ours.text} against OpenBao's {theirs.text}"
        else:
            assert shape(ours.json()) == shape(theirs.json()), what
        if ours.status_code >= 400:
            assert list(ours.json()) == ["errors"] and ours.json()["errors"][0], what
        assert token not in ours.text, what
        after = requests.post(f"{server.url}/v1/transit/hmac/billing", json=good, headers={"X-Vault-Token": token})
        assert after.json()["data"]["hmac"] == macs[server.url], what


def test_where_cryptoserver_differs_from_openbao_it_says_why(servers):
    """Only HMAC-SHA256 is served: another algorithm is a clear 400 (OpenBao
    computes it), and the MAC bytes of a verify never leak into an error."""
    server = servers("MODE0")
    for body, path in [({"input": HELLO, "algorithm": "sha2-512"}, "hmac/billing"), ({"input": HELLO}, "hmac/billing/sha2-512")]:
        response = requests.post(f"{server.url}/v1/transit/{path}", json=body, headers={"X-Vault-Token": TOKENS["billing"]})
        assert response.status_code == 400 and "HMAC-SHA256 only; use sha2-256" in response.json()["errors"][0]
    health = requests.get(f"{server.url}/v1/sys/health?sealedcode=abc")
    assert health.status_code == 400 and "status codes" in health.json()["errors"][0]
