"""The HTTP API of a real cryptoserver process over real TCP, checked against
Python's hmac; every bad request gets its status and the next one still works."""

import ast
import base64
import hashlib
import hmac
import os
import socket
import subprocess
import sys

import pytest
import requests

import reference
from conftest import running_server

ORIGINAL_CLIENT = '''
from requests import post
CRYPTO_SERVER_URL = "http://localhost:8080/hmac"
def compute(msg):
    res = post(CRYPTO_SERVER_URL, data=msg)
    if res.status_code != 200:
        raise RuntimeError("couldn't hmac data")
    return res.content
if __name__ == '__main__':
    # Compute some digests
    print(compute(b"hello world"))
    print(compute(b"apples and pears"))
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path_factory.mktemp("mode0") / "secrets")
    with running_server(tmp_path_factory.mktemp("log"), "MODE0", secret_dir) as server:
        server.key = (secret_dir / "secret").read_bytes()
        yield server


def expected_mac(server, message):
    return hmac.new(server.key, message, hashlib.sha256).digest()


def assert_still_serves(server):
    response = requests.post(f"{server.url}/hmac", data=b"still here")
    assert response.status_code == 200
    assert response.content == expected_mac(server, b"still here")


def test_the_original_python_client_works_unchanged(server, tmp_path):
    # Only the URL's port differs from the original design's client (README).
    script = tmp_path / "client.py"
    script.write_text(ORIGINAL_CLIENT.replace("http://localhost:8080/hmac", f"{server.url.replace('127.0.0.1', 'localhost')}/hmac"))
    output = subprocess.run([sys.executable, script], capture_output=True, check=True, timeout=60).stdout.decode()
    printed = [ast.literal_eval(line) for line in output.splitlines()]
    assert printed == [expected_mac(server, b"hello world"), expected_mac(server, b"apples and pears")]


@pytest.mark.parametrize(
    "message",
    [b"", b"x", b"hello world", b"apples and pears", os.urandom(1 << 20)],
    ids=["empty", "one-byte", "hello-world", "apples-and-pears", "1MiB-random"],
)
def test_mac_equals_pythons_hmac(server, message):
    response = requests.post(f"{server.url}/hmac", data=message)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == expected_mac(server, message)


def test_chunked_body(server):
    parts = [b"apples ", b"and ", b"pears"]
    response = requests.post(f"{server.url}/hmac", data=iter(parts))
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.content == expected_mac(server, b"apples and pears")


def test_text_encodings(server):
    expected = expected_mac(server, b"hello world")
    hex_response = requests.post(f"{server.url}/hmac?encoding=hex", data=b"hello world")
    assert hex_response.status_code == 200 and hex_response.text == expected.hex()
    b64_response = requests.post(f"{server.url}/hmac?encoding=base64", data=b"hello world")
    assert b64_response.status_code == 200 and base64.b64decode(b64_response.text) == expected
    bad = requests.post(f"{server.url}/hmac?encoding=rot13", data=b"hello world")
    assert bad.status_code == 400 and "encoding" in bad.json()["error"]
    assert_still_serves(server)


def test_verify(server):
    mac = expected_mac(server, b"hello world")
    for header in [mac.hex(), mac.hex().upper(), base64.b64encode(mac).decode(), base64.b64encode(mac).decode().rstrip("=")]:
        response = requests.post(f"{server.url}/verify", data=b"hello world", headers={"X-Cryptoserver-Mac": header})
        assert response.status_code == 200 and response.json() == {"valid": True}, header
    wrong = bytes([mac[0] ^ 1]) + mac[1:]
    response = requests.post(f"{server.url}/verify", data=b"hello world", headers={"X-Cryptoserver-Mac": wrong.hex()})
    assert response.status_code == 200 and response.json() == {"valid": False}
    response = requests.post(f"{server.url}/verify", data=b"hello worle", headers={"X-Cryptoserver-Mac": mac.hex()})
    assert response.json() == {"valid": False}


@pytest.mark.parametrize("header", [None, "", "zz" * 32, "abcd", base64.b64encode(b"x" * 31).decode()])
def test_verify_rejects_missing_or_undecodable_mac(server, header):
    headers = {} if header is None else {"X-Cryptoserver-Mac": header}
    response = requests.post(f"{server.url}/verify", data=b"secret message body", headers=headers)
    assert response.status_code == 400
    assert "X-Cryptoserver-Mac" in response.json()["error"]
    assert "secret message body" not in response.text
    assert_still_serves(server)


def test_body_over_the_limit_is_413_and_the_connection_closes(server):
    marker = b"do-not-echo-me"
    response = requests.post(f"{server.url}/hmac", data=marker + b"a" * (1 << 20))
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    assert "limit" in response.json()["error"] and "do-not-echo" not in response.text
    chunked = requests.post(f"{server.url}/hmac", data=iter([b"a" * (1 << 19)] * 3))
    assert chunked.status_code == 413
    assert_still_serves(server)


def test_a_huge_declared_length_is_refused_without_reading_it(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n" + b"a" * 65536)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    assert_still_serves(server)


@pytest.mark.parametrize(
    "method, path, allow",
    [("GET", "/hmac", "POST"), ("PUT", "/verify", "POST"), ("POST", "/healthz", "GET,HEAD"), ("DELETE", "/readyz", "GET,HEAD")],
)
def test_other_methods_get_405_with_allow(server, method, path, allow):
    response = requests.request(method, f"{server.url}{path}")
    assert response.status_code == 405
    assert response.headers["allow"].replace(" ", "") == allow
    assert "error" in response.json()
    assert_still_serves(server)


def test_unknown_path_is_404(server):
    response = requests.post(f"{server.url}/hmac/sha1", data=b"x")
    assert response.status_code == 404 and "error" in response.json()
    assert_still_serves(server)


def test_health_and_readiness(server):
    assert requests.get(f"{server.url}/healthz").status_code == 200
    assert requests.get(f"{server.url}/readyz").status_code == 200
