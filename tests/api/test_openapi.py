"""api/openapi.yaml is the server's contract: its routes and methods are the
router's (read from the source and asked of a running server), and schemathesis
finds no disagreement between the document and a live server, open or with
tokens; the statuses fuzzing cannot reach (limits, timeouts) are checked against
the document one by one."""

import datetime
import os
import re
import socket
import struct
import subprocess
import sys
import time

import httpx
import pytest
import requests
import schemathesis
import yaml

import reference
from conftest import REPO, running_server, write_tokens

DOCUMENT = REPO / "api" / "openapi.yaml"
HOOKS = REPO / "tests" / "api"
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")
# Bounded and reproducible: a fixed seed, a fixed number of examples per operation.
SCHEMATHESIS_EXAMPLES = 50
SCHEMATHESIS_SEED = 17


@pytest.fixture(scope="module")
def document():
    return yaml.safe_load(DOCUMENT.read_text())


def documented_operations(document):
    return {(path, method.upper()) for path, item in document["paths"].items() for method in item if method.upper() in METHODS}


def closing_paren(text, start):
    """Index of the parenthesis closing the one open before `start`."""
    depth = 1
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index
    raise AssertionError(f"unbalanced parentheses after offset {start}")


def router_operations():
    """(path, METHOD) of every `.route("/path", get(..).post(..))` in src/, in whichever file it lives."""
    operations = set()
    for source in sorted((REPO / "src").rglob("*.rs")):
        text = source.read_text()
        name = source.relative_to(REPO)
        # Every route must be readable here, or the comparison would miss it.
        assert ".nest(" not in text and ".nest_service(" not in text, f"{name}: nested routers: teach router_operations() their prefix"
        literal = re.findall(r'\.route\(\s*"', text)
        assert len(literal) == len(re.findall(r"\.route\(", text)), f"{name}: a route path that is not a string literal"
        for route in re.finditer(r'\.route\(\s*"([^"]+)"\s*,', text):
            method_router = text[route.end() : closing_paren(text, route.end())]
            methods = re.findall(r"\b(get|post|put|delete|patch|head|options|trace|any)\s*\(", method_router)
            assert methods and "any" not in methods, (
                f"{name}: cannot read the methods of route {route.group(1)} from "
                f"{method_router.strip()!r}; teach router_operations() this form"
            )
            operations |= {(route.group(1), method.upper()) for method in methods}
    return operations


def test_the_router_in_the_source_has_exactly_the_documented_operations(document):
    in_source = router_operations()
    documented = documented_operations(document)
    assert in_source - documented == set(), "routes the server has but api/openapi.yaml does not describe"
    assert documented - in_source == set(), "operations api/openapi.yaml describes but the router does not have"


@pytest.fixture(scope="module")
def mode0_dir(tmp_path_factory):
    return reference.write_random_secrets("MODE0", tmp_path_factory.mktemp("api") / "secrets")


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, mode0_dir):
    with running_server(tmp_path_factory.mktemp("open"), "MODE0", mode0_dir) as server:
        yield server


def test_the_running_server_has_exactly_the_documented_operations(document, open_server):
    """Every documented operation is served (neither 404 nor 405), every other
    method on a documented path is 405 with an Allow header naming exactly the
    documented methods (HEAD comes with GET), and an unknown path is 404."""
    with requests.Session() as session:
        for path, item in document["paths"].items():
            documented = {method.upper() for method in item if method.upper() in METHODS}
            served = documented | ({"HEAD"} if "GET" in documented else set())
            for method in METHODS:
                response = session.request(method, f"{open_server.url}{path}", data=b"")
                if method in served:
                    assert response.status_code not in (404, 405), f"{method} {path}: {response.status_code}"
                else:
                    assert response.status_code == 405, f"{method} {path} is served but not documented"
                    allowed = {m.strip() for m in response.headers["allow"].split(",")}
                    assert allowed == served, f"{path}: the server allows {allowed}, the document {served}"
        unknown = session.get(f"{open_server.url}/hmac/sha1")
        assert unknown.status_code == 404
        # The 404 text lists the routes: exactly the documented ones.
        listed = set(re.findall(r"\b(GET|POST|PUT) (/[a-z0-9/{}]+)", unknown.json()["error"]))
        assert {(path, method) for method, path in listed} == documented_operations(document)


def run_schemathesis(tmp_path, document_path, url, *headers):
    """Runs the schemathesis CLI against `url`; fails with its report on any failure."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", str(document_path),
        "--url", url,
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(SCHEMATHESIS_EXAMPLES),
        "--seed", str(SCHEMATHESIS_SEED),
        "--generation-database", "none",
        "--workers", "1",
        "--request-timeout", "10",
        "--no-color",
    ]
    for header in headers:
        command += ["--header", header]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(HOOKS)}
    # The working directory is empty so that no schemathesis.toml from elsewhere applies.
    # (--max-time is no bound: fuzzing repeats until it is spent.)
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated and int(generated.group(1)) >= 100, f"schemathesis ran too few cases:\n{result.stdout[-3000:]}"


def test_schemathesis_finds_no_failure_on_an_open_server(tmp_path, document, open_server):
    # An open server (no tokens file) ignores Authorization: it is the document
    # without its security requirement.
    document = {key: value for key, value in document.items() if key != "security"}
    open_document = tmp_path / "open.yaml"
    open_document.write_text(yaml.safe_dump(document))
    run_schemathesis(tmp_path, open_document, open_server.url)


def test_exactly_the_operations_documented_without_security_answer_without_a_token(tmp_path, document, mode0_dir):
    """`security: []` in the document is what the router does: with a tokens
    file, those operations answer a request without a token, every other gets 401
    (Vault's routes, which take `vaultToken`, Vault's 403)."""
    env = {"CRYPTOSERVER_TOKENS_FILE": str(write_tokens(tmp_path, "open-" + os.urandom(8).hex()))}
    with running_server(tmp_path, "MODE0", mode0_dir, env) as server, requests.Session() as session:
        for path, method in sorted(documented_operations(document)):
            operation = document["paths"][path][method.lower()]
            security = operation.get("security", document["security"])
            refused = 403 if {"vaultToken": []} in security else 401
            response = session.request(method, f"{server.url}{path}", data=b"")
            assert (response.status_code != refused) == (security == []), f"{method} {path}: {response.status_code}"


def test_schemathesis_finds_no_failure_with_tokens(tmp_path, mode0_dir):
    token = "schemathesis-" + os.urandom(8).hex()
    env = {"CRYPTOSERVER_TOKENS_FILE": str(write_tokens(tmp_path, token))}
    with running_server(tmp_path, "MODE0", mode0_dir, env) as server:
        run_schemathesis(tmp_path, DOCUMENT, server.url, f"Authorization: Bearer {token}")
        metrics = requests.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    assert re.search(r"^cryptoserver_unauthorized_total [1-9]", metrics, re.M), "schemathesis never checked a request without the token"


def resolve(document, node):
    while "$ref" in node:
        target = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def assert_documented(document, method, path, response):
    """The status is documented for the operation, every header the document
    gives for it is there when required and has the documented form, and the body
    matches the documented schema (checked by schemathesis)."""
    operation = document["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method} {path}: {status} is not documented"
    definition = resolve(document, operation["responses"][status])
    for name, header in definition.get("headers", {}).items():
        header = resolve(document, header)
        value = response.headers.get(name)
        if value is None:
            assert not header.get("required"), f"{method} {path} {status}: no {name} header"
            continue
        if "const" in header["schema"]:
            assert value == header["schema"]["const"], f"{method} {path} {status}: {name}: {value}"
        if "pattern" in header["schema"]:
            assert re.search(header["schema"]["pattern"], value), f"{method} {path} {status}: {name}: {value}"
    schemathesis.openapi.from_dict(document)[path][method].validate_response(response)
    return response


def test_the_statuses_fuzzing_cannot_reach_are_documented(tmp_path, document, mode0_dir):
    """401, 429 with and without Retry-After, 413, 408 and 503 at the concurrency
    limit, each from a real server and checked against the document."""
    token = "conformance-" + os.urandom(8).hex()
    env = {
        "CRYPTOSERVER_TOKENS_FILE": str(write_tokens(tmp_path, token)),
        "CRYPTOSERVER_RATE_LIMIT": "0.1:3",
        "CRYPTOSERVER_MAX_BODY": "1KiB",
        "CRYPTOSERVER_BODY_TIMEOUT": "1",
        "CRYPTOSERVER_MAX_CONCURRENT": "1",
    }
    auth = {"Authorization": f"Bearer {token}"}
    with running_server(tmp_path, "MODE0", mode0_dir, env) as server:
        url = server.url
        assert assert_documented(document, "POST", "/hmac", requests.post(f"{url}/hmac", data=b"x")).status_code == 401
        assert assert_documented(document, "GET", "/readyz", requests.get(f"{url}/readyz")).status_code == 200
        # Another client's slow body holds the only place: meanwhile /hmac gets 503
        # (before its token is spent), then the slow one 408.
        with socket.create_connection(server.address, timeout=10, source_address=("127.0.0.2", 0)) as slow:
            slow.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() + b"\r\nContent-Length: 2\r\n\r\na")
            time.sleep(0.3)
            shed = assert_documented(document, "POST", "/hmac", requests.post(f"{url}/hmac", data=b"x", headers=auth))
            assert shed.status_code == 503
            assert assert_documented(document, "POST", "/hmac", read_response(slow)).status_code == 408
        too_large = requests.post(f"{url}/hmac", data=b"x" * 2048, headers=auth)
        assert assert_documented(document, "POST", "/hmac", too_large).status_code == 413
        # Two of the burst of 3 are spent; a batch of 5 messages costs more than the burst.
        batch = b"".join(struct.pack(">I", 1) + b"m" for _ in range(5))
        larger_than_burst = assert_documented(document, "POST", "/hmac/batch", requests.post(f"{url}/hmac/batch", data=batch, headers=auth))
        assert larger_than_burst.status_code == 429 and "retry-after" not in larger_than_burst.headers
        mac = {**auth, "X-Cryptoserver-Mac": "00" * 32}
        limited = assert_documented(document, "POST", "/verify", requests.post(f"{url}/verify", data=b"x", headers=mac))
        assert limited.status_code == 429 and "retry-after" in limited.headers


def read_response(sock):
    """One HTTP/1.1 response from `sock`, as an httpx.Response."""
    sock.settimeout(10)
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(4096)
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        body += sock.recv(4096)
    response = httpx.Response(int(lines[0].split()[1]), headers=headers, content=body, request=httpx.Request("POST", "http://x/hmac"))
    response.elapsed = datetime.timedelta(0)
    return response
