"""Access control, abuse limits, timeouts, TLS, metrics and logs (issue 7), each
against a real server process over real TCP on loopback."""

import hashlib
import hmac
import json
import resource
import socket
import struct
import time

import pytest
import requests
import trustme

import reference
from conftest import cpu_seconds, free_port, running_server, write_tokens


@pytest.fixture
def mode0(tmp_path):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    return secret_dir, (secret_dir / "secret").read_bytes()


def expected_mac(key, message):
    return hmac.new(key, message, hashlib.sha256).digest()


def test_bearer_tokens(tmp_path, mode0):
    secret_dir, key = mode0
    tokens = write_tokens(tmp_path, "token-one", "token-two")
    with running_server(tmp_path, "MODE0", secret_dir, {"CRYPTOSERVER_TOKENS_FILE": str(tokens)}) as server:
        for headers in [{}, {"Authorization": "Bearer token-three"}, {"Authorization": "Basic dG9rZW4tb25l"}]:
            response = requests.post(f"{server.url}/hmac", data=b"x", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "token-" not in response.text
        for token in ["token-one", "token-two"]:
            response = requests.post(f"{server.url}/hmac", data=b"x", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200 and response.content == expected_mac(key, b"x")
        assert requests.get(f"{server.url}/healthz").status_code == 200
        assert requests.get(f"{server.url}/metrics").status_code == 401
        metrics = requests.get(f"{server.url}/metrics", headers={"Authorization": "Bearer token-one"}).text
        assert "cryptoserver_unauthorized_total 4" in metrics


def test_readiness_needs_no_token_and_no_rate(tmp_path, mode0):
    """A load balancer's health check (an AWS NLB's) sends no token and comes
    from a few addresses: /readyz answers it like /healthz, never 401 or 429."""
    secret_dir, _ = mode0
    env = {"CRYPTOSERVER_TOKENS_FILE": str(write_tokens(tmp_path, "token-one")), "CRYPTOSERVER_RATE_LIMIT": "0.5:2"}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server, requests.Session() as session:
        for _ in range(10):
            response = session.get(f"{server.url}/readyz")
            assert response.status_code == 200
            assert response.json() == {"ready": True, "mode": "MODE0", "fingerprint": None, "clients_serial": 0}
        # The token's own rate limit is untouched by them.
        auth = {"Authorization": "Bearer token-one"}
        assert [session.post(f"{server.url}/hmac", data=b"x", headers=auth).status_code for _ in range(3)] == [200, 200, 429]


def test_a_tokens_file_with_a_token_in_clear_is_refused(tmp_path, mode0):
    secret_dir, _ = mode0
    (tmp_path / "tokens").write_text("token-one\n")
    env = {"CRYPTOSERVER_TOKENS_FILE": str(tmp_path / "tokens")}
    with pytest.raises(pytest.fail.Exception, match="tokens:1: not a SHA-256 hex digest"):
        with running_server(tmp_path, "MODE0", secret_dir, env):
            pass


def read_response(sock):
    """One response from a raw socket: (status, lower-cased headers, body); None
    when the server closed or reset the connection instead of answering."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict((name.strip().lower(), value.strip()) for name, value in (line.split(":", 1) for line in lines[1:]))
        while len(body) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
    except ConnectionResetError:
        return None
    return int(lines[0].split()[1]), headers, body


def post_in_two_parts(sock, target, headers, body):
    """Sends the head, then the body once the server had time to answer the head
    alone: what a client whose body follows its head in a later segment does."""
    head = f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    try:
        sock.sendall(head.encode())
        time.sleep(0.05)
        sock.sendall(body)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return read_response(sock)


def test_a_request_refused_before_its_body_is_read_leaves_the_connection_open(tmp_path, mode0):
    """Refused from its head alone (401, 404, 405, 400), a request's body, up to
    the size limit, is read and discarded: the next request on the connection is
    served. Without that the response came without `Connection: close` and the
    connection was closed under the client's next request."""
    secret_dir, key = mode0
    env = {"CRYPTOSERVER_TOKENS_FILE": str(write_tokens(tmp_path, "token-one")), "CRYPTOSERVER_MAX_BODY": "64KiB"}
    good = "Authorization: Bearer token-one\r\n"
    refusals = [
        ("/hmac", "", 401),
        ("/hmac", "Authorization: Bearer token-two\r\n", 401),
        ("/hmac/sha1", good, 404),
        ("/healthz", good, 405),
        ("/hmac?encoding=rot13", good, 400),
        ("/verify", good, 400),
    ]
    with running_server(tmp_path, "MODE0", secret_dir, env) as server:
        with socket.create_connection(server.address, timeout=10) as sock:
            for size in (1, 4096, 65536):
                for target, headers, status in refusals:
                    body = b"b" * size
                    refused = post_in_two_parts(sock, target, headers, body)
                    assert refused is not None, f"{status} for {target} with {size} bytes: connection closed"
                    assert refused[0] == status and "connection" not in refused[1], (target, size, refused[:2])
                    served = post_in_two_parts(sock, "/hmac", good, body)
                    assert served is not None, f"after {status} for {target} with {size} bytes: connection closed"
                    assert served[0] == 200 and served[2] == expected_mac(key, body)


def test_a_refused_body_that_cannot_be_read_closes_the_connection_with_its_answer(tmp_path, mode0):
    """A body larger than the limit, slower than the body timeout, or awaiting
    `100 Continue` is not read: its refusal says `Connection: close` and the
    connection closes, so the client sends its next request on a new one."""
    secret_dir, _ = mode0
    env = {
        "CRYPTOSERVER_TOKENS_FILE": str(write_tokens(tmp_path, "token-one")),
        "CRYPTOSERVER_MAX_BODY": "1KiB",
        "CRYPTOSERVER_BODY_TIMEOUT": "1",
    }
    with running_server(tmp_path, "MODE0", secret_dir, env) as server:
        for head, body in [
            ("Content-Length: 2000\r\n", b"a" * 2000),
            ("Transfer-Encoding: chunked\r\n", b"800\r\n" + b"a" * 2048 + b"\r\n0\r\n\r\n"),
            ("Content-Length: 100\r\n", b"a"),
            ("Content-Length: 100\r\nExpect: 100-continue\r\n", b""),
        ]:
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(f"POST /hmac HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
                started = time.monotonic()
                refused = read_response(sock)
                assert refused is not None and refused[0] == 401 and refused[1]["connection"] == "close", (head, refused)
                assert time.monotonic() - started < 5, "the body timeout did not bound the wait"
                assert read_response(sock) is None
        assert requests.post(f"{server.url}/hmac", data=b"x", headers={"Authorization": "Bearer token-one"}).status_code == 200


def test_a_body_with_broken_chunked_framing_closes_the_connection_with_its_400(tmp_path, mode0):
    """Nothing after a broken chunk can be read: the 400 says so, as the connection closes."""
    secret_dir, _ = mode0
    with running_server(tmp_path, "MODE0", secret_dir) as server:
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            refused = read_response(sock)
            assert refused is not None and refused[0] == 400 and refused[1]["connection"] == "close", refused
            assert read_response(sock) is None


def test_a_keep_alive_client_refused_over_and_over_never_sees_a_connection_error(tmp_path, mode0):
    """The report: a requests.Session alternating refused and served requests on
    its kept-alive connection got a connection error after 20 to 480 requests."""
    secret_dir, key = mode0
    env = {"CRYPTOSERVER_TOKENS_FILE": str(write_tokens(tmp_path, "token-one")), "CRYPTOSERVER_MAX_BODY": "16KiB"}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server, requests.Session() as session:
        deadline = time.monotonic() + 30
        for i in range(500):
            body = b"m" * (16, 4096, 16384)[i % 3]
            refused = session.post(f"{server.url}/hmac", data=body, headers={"Authorization": "Bearer token-two"} if i % 2 else {})
            assert refused.status_code == 401
            served = session.post(f"{server.url}/hmac", data=body, headers={"Authorization": "Bearer token-one"})
            assert served.status_code == 200 and served.content == expected_mac(key, body)
            if time.monotonic() > deadline:
                break


def test_rate_limited_and_shed_requests_leave_the_connection_open(tmp_path, mode0):
    secret_dir, key = mode0
    env = {"CRYPTOSERVER_RATE_LIMIT": "0.001:1"}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server:
        with socket.create_connection(server.address, timeout=10) as sock:
            assert post_in_two_parts(sock, "/hmac", "", b"x")[0] == 200
            for _ in range(3):
                limited = post_in_two_parts(sock, "/hmac", "", b"y" * 4096)
                assert limited is not None and limited[0] == 429 and "connection" not in limited[1]
    with running_server(tmp_path, "MODE0", secret_dir, {"CRYPTOSERVER_MAX_CONCURRENT": "1"}) as server:
        with socket.create_connection(server.address, timeout=10) as sock:
            with socket.create_connection(server.address, timeout=10, source_address=("127.0.0.2", 0)) as slow:
                slow.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\na")
                time.sleep(0.3)
                shed = post_in_two_parts(sock, "/hmac", "", b"y" * 4096)
                assert shed is not None and shed[0] == 503 and "connection" not in shed[1]
                slow.sendall(b"b")
                assert read_response(slow)[2] == expected_mac(key, b"ab")
            served = post_in_two_parts(sock, "/hmac", "", b"z")
            assert served is not None and served[2] == expected_mac(key, b"z")


def test_rate_limit_per_client_and_per_message(tmp_path, mode0):
    secret_dir, _ = mode0
    with running_server(tmp_path, "MODE0", secret_dir, {"CRYPTOSERVER_RATE_LIMIT": "0.5:5"}) as server:
        with requests.Session() as session:
            statuses = [session.post(f"{server.url}/hmac", data=b"x").status_code for _ in range(6)]
            assert statuses == [200] * 5 + [429]
            limited = session.post(f"{server.url}/hmac", data=b"x")
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
            batch = b"".join(struct.pack(">I", 1) + b"m" for _ in range(10))
            assert session.post(f"{server.url}/hmac/batch", data=batch).status_code == 429


def test_batch_messages_count_against_the_rate_limit(tmp_path, mode0):
    secret_dir, _ = mode0
    with running_server(tmp_path, "MODE0", secret_dir, {"CRYPTOSERVER_RATE_LIMIT": "0.1:10"}) as server:
        batch = b"".join(struct.pack(">I", 1) + b"m" for _ in range(8))
        assert requests.post(f"{server.url}/hmac/batch", data=batch).status_code == 200
        assert requests.post(f"{server.url}/hmac/batch", data=batch).status_code == 429
        assert requests.post(f"{server.url}/hmac", data=b"x").status_code == 200


def test_load_is_shed_at_the_concurrency_limit(tmp_path, mode0):
    secret_dir, key = mode0
    with running_server(tmp_path, "MODE0", secret_dir, {"CRYPTOSERVER_MAX_CONCURRENT": "1"}) as server:
        with socket.create_connection(server.address, timeout=10, source_address=("127.0.0.2", 0)) as slow:
            slow.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\na")
            time.sleep(0.3)
            started = time.monotonic()
            shed = requests.post(f"{server.url}/hmac", data=b"x")
            assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
            assert time.monotonic() - started < 5, "the excess request was queued, not shed"
            slow.sendall(b"b")
            assert expected_mac(key, b"ab") in slow.recv(4096)
        assert requests.post(f"{server.url}/hmac", data=b"x").status_code == 200


def slow_bodies_from(server, source, count):
    """`count` connections from `source`, each sending the head of a POST /hmac and
    one byte of its two-byte body; those refused are closed without an answer."""
    connections = connections_from(server, source, count)
    for sock in connections:
        try:
            sock.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\na")
        except (ConnectionResetError, BrokenPipeError):
            pass
    return connections


def test_health_checks_take_no_place_under_the_concurrency_limit(tmp_path, mode0):
    """Requests filling every place make /hmac 503, never the health checks: a load
    balancer would take the busy server out of service and its Auto Scaling group replace it."""
    secret_dir, _ = mode0
    env = {"CRYPTOSERVER_MAX_CONCURRENT": "4", "CRYPTOSERVER_MAX_CONNECTIONS_PER_CLIENT": "8"}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server:
        hogs = slow_bodies_from(server, "127.0.0.2", 4)
        try:
            time.sleep(0.3)
            assert requests.post(f"{server.url}/hmac", data=b"x").status_code == 503
            for _ in range(20):
                assert requests.get(f"{server.url}/healthz").status_code == 200
                assert requests.get(f"{server.url}/readyz").status_code == 200
        finally:
            for hog in hogs:
                hog.close()


def test_a_few_client_addresses_cannot_hold_every_place(tmp_path, mode0):
    """Four addresses, each opening a quarter as many slow-body connections as
    there are places, hold a quarter of them with the default per-client limit."""
    secret_dir, _ = mode0
    with running_server(tmp_path, "MODE0", secret_dir, {"CRYPTOSERVER_MAX_CONCURRENT": "256"}) as server:
        hogs = []
        try:
            for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"):
                hogs += slow_bodies_from(server, source, 64)
            time.sleep(0.3)
            with socket.create_connection(server.address, timeout=5, source_address=("127.0.0.5", 0)) as other:
                other.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
                reply = other.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200"), reply
        finally:
            for hog in hogs:
                hog.close()


def served_or_closed(sock):
    """Sends one keep-alive request: True if it is answered, False if the
    connection is closed without an answer."""
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = sock.recv(4096)
    except ConnectionResetError:
        return False
    assert reply == b"" or reply.startswith(b"HTTP/1.1 200"), reply
    return reply != b""


def connections_from(server, source, count):
    return [socket.create_connection(server.address, timeout=5, source_address=(source, 0)) for _ in range(count)]


def test_connections_beyond_the_limits_are_closed_at_once(tmp_path, mode0):
    secret_dir, key = mode0
    env = {"CRYPTOSERVER_MAX_CONNECTIONS": "12", "CRYPTOSERVER_MAX_CONNECTIONS_PER_CLIENT": "5"}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server:
        time.sleep(0.2)  # the startup probe's connection is closed
        hogs = []
        try:
            hogs += connections_from(server, "127.0.0.2", 8)
            started = time.monotonic()
            assert [served_or_closed(hog) for hog in hogs] == [True] * 5 + [False] * 3
            assert time.monotonic() - started < 3, "refused connections were not closed at once"
            with requests.Session() as other:
                assert other.post(f"{server.url}/hmac", data=b"x").content == expected_mac(key, b"x")
                # Two more clients fill the server: every connection beyond 12 is refused.
                more = connections_from(server, "127.0.0.3", 5) + connections_from(server, "127.0.0.4", 5)
                hogs += more
                assert sorted(served_or_closed(hog) for hog in more) == [False] * 4 + [True] * 6
                assert other.post(f"{server.url}/hmac", data=b"y").content == expected_mac(key, b"y")
                metrics = other.get(f"{server.url}/metrics").text.splitlines()
        finally:
            for hog in hogs:
                hog.close()
        assert "cryptoserver_connections_refused_total 7" in metrics
        assert "cryptoserver_open_connections 12" in metrics
        time.sleep(0.2)
        assert requests.post(f"{server.url}/hmac", data=b"z").content == expected_mac(key, b"z")


def test_out_of_descriptors_the_waiting_connections_are_closed_without_spinning(tmp_path, mode0):
    """A connection limit set above what RLIMIT_NOFILE allows: accept fails with
    EMFILE, and each waiting connection is closed at once instead of waiting."""
    secret_dir, key = mode0

    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    env = {"CRYPTOSERVER_MAX_CONNECTIONS": "1000", "CRYPTOSERVER_MAX_CONNECTIONS_PER_CLIENT": "1000", "RUST_LOG": "warn"}
    with running_server(tmp_path, "MODE0", secret_dir, env, preexec_fn=low_fd_limit) as server:
        assert "leaves too few file descriptors" in server.log()
        hogs = connections_from(server, "127.0.0.2", 70)
        try:
            time.sleep(0.5)
            before = cpu_seconds(server.process.pid)
            with socket.create_connection(server.address, timeout=5) as late:
                started = time.monotonic()
                assert not served_or_closed(late)
                assert time.monotonic() - started < 2, "the waiting connection was left in the queue"
            time.sleep(1)
            assert cpu_seconds(server.process.pid) - before < 0.3, "the accept loop spins"
        finally:
            for hog in hogs:
                hog.close()
        time.sleep(0.5)
        assert requests.post(f"{server.url}/hmac", data=b"x").content == expected_mac(key, b"x")
        assert "out of file descriptors" in server.log()


def read_until_closed(sock, limit_seconds):
    sock.settimeout(limit_seconds)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_timeouts_for_head_body_and_idle_connections(tmp_path, mode0):
    secret_dir, _ = mode0
    env = {"CRYPTOSERVER_HEADER_TIMEOUT": "1", "CRYPTOSERVER_BODY_TIMEOUT": "1"}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server:
        with socket.create_connection(server.address) as sock:
            sock.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            read_until_closed(sock, 10)
            assert time.monotonic() - started < 5
        with socket.create_connection(server.address) as sock:
            sock.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            for _ in range(3):
                sock.sendall(b"a")
                time.sleep(0.5)
            reply = read_until_closed(sock, 10)
            assert reply.startswith(b"HTTP/1.1 408")
        with socket.create_connection(server.address) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            reply = read_until_closed(sock, 10)
            assert reply.startswith(b"HTTP/1.1 200") and time.monotonic() - started < 5, "idle keep-alive stayed open"
        assert requests.post(f"{server.url}/hmac", data=b"x").status_code == 200


def test_oversized_request_head_is_431(tmp_path, mode0):
    secret_dir, _ = mode0
    with running_server(tmp_path, "MODE0", secret_dir) as server:
        response = requests.post(f"{server.url}/hmac", data=b"x", headers={"X-Padding": "p" * 20000})
        assert response.status_code == 431
        assert requests.post(f"{server.url}/hmac", data=b"x").status_code == 200


@pytest.fixture
def certificates(tmp_path):
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("client.example")
    paths = {name: tmp_path / f"{name}.pem" for name in ["ca", "cert", "key", "client"]}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.private_key_pem.write_to_path(str(paths["key"]))
    for blob in server_cert.cert_chain_pems:
        blob.write_to_path(str(paths["cert"]), append=True)
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return paths


def test_https(tmp_path, mode0, certificates):
    secret_dir, key = mode0
    env = {"CRYPTOSERVER_TLS_CERT": str(certificates["cert"]), "CRYPTOSERVER_TLS_KEY": str(certificates["key"])}
    with running_server(tmp_path, "MODE0", secret_dir, env, https_ca=str(certificates["ca"])) as server:
        response = requests.post(f"{server.url}/hmac", data=b"over tls", verify=str(certificates["ca"]))
        assert response.content == expected_mac(key, b"over tls")
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.post(server.url.replace("https", "http") + "/hmac", data=b"plain", timeout=5)


def test_mutual_tls(tmp_path, mode0, certificates):
    secret_dir, key = mode0
    env = {
        "CRYPTOSERVER_TLS_CERT": str(certificates["cert"]),
        "CRYPTOSERVER_TLS_KEY": str(certificates["key"]),
        "CRYPTOSERVER_TLS_CLIENT_CA": str(certificates["ca"]),
    }
    client = str(certificates["client"])
    with running_server(tmp_path, "MODE0", secret_dir, env, https_ca=str(certificates["ca"]), client_cert=client) as server:
        response = requests.post(f"{server.url}/hmac", data=b"m", verify=str(certificates["ca"]), cert=client)
        assert response.content == expected_mac(key, b"m")
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.post(f"{server.url}/hmac", data=b"m", verify=str(certificates["ca"]), timeout=5)
        other_ca = trustme.CA().issue_cert("intruder.example")
        other_ca.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "intruder.pem"))
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.post(f"{server.url}/hmac", data=b"m", verify=str(certificates["ca"]), cert=str(tmp_path / "intruder.pem"), timeout=5)


def test_bad_tls_files_stop_the_server(tmp_path, mode0):
    secret_dir, _ = mode0
    (tmp_path / "empty.pem").write_text("")
    env = {"CRYPTOSERVER_TLS_CERT": str(tmp_path / "empty.pem"), "CRYPTOSERVER_TLS_KEY": str(tmp_path / "empty.pem")}
    with pytest.raises(pytest.fail.Exception, match="holds no PEM certificate"):
        with running_server(tmp_path, "MODE0", secret_dir, env):
            pass


def test_metrics(tmp_path, mode0):
    secret_dir, _ = mode0
    metrics_port = free_port()
    env = {"CRYPTOSERVER_METRICS_BIND": f"127.0.0.1:{metrics_port}", "CRYPTOSERVER_TOKENS_FILE": str(write_tokens(tmp_path, "t"))}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server:
        auth = {"Authorization": "Bearer t"}
        for message in [b"a", b"bb", b"ccc"]:
            requests.post(f"{server.url}/hmac", data=message, headers=auth)
        requests.post(f"{server.url}/hmac/batch", data=struct.pack(">I", 4) + b"dddd", headers=auth)
        requests.get(f"{server.url}/nowhere")
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    lines = set(text.splitlines())
    assert 'cryptoserver_requests_total{route="/hmac",status="200"} 3' in lines
    assert 'cryptoserver_requests_total{route="/hmac/batch",status="200"} 1' in lines
    assert 'cryptoserver_requests_total{route="unmatched",status="404"} 1' in lines
    assert "cryptoserver_hashed_bytes_total 10" in lines
    assert "cryptoserver_macs_total 4" in lines
    assert any(line.startswith('cryptoserver_build_info{version="') and 'mode="MODE0"' in line for line in lines)
    count = next(line for line in lines if line.startswith("cryptoserver_request_duration_seconds_count "))
    assert int(count.split()[1]) >= 5, "every request is timed (health probes too)"
    assert "cryptoserver_in_flight_requests 0" in lines


def test_json_logs_with_request_spans_and_no_secrets(tmp_path, mode0):
    secret_dir, key = mode0
    message = b"json-log-marker-message"
    with running_server(tmp_path, "MODE0", secret_dir, {"RUST_LOG": "trace", "CRYPTOSERVER_LOG_FORMAT": "json"}) as server:
        mac = requests.post(f"{server.url}/hmac", data=message).content
    log = server.log()
    records = [json.loads(line) for line in log.splitlines()]
    finished = [r for r in records if r.get("fields", {}).get("message") == "request finished"]
    assert finished and finished[0]["span"]["name"] == "request" and "id" in finished[0]["span"]
    for secret in [message.decode(), mac.hex(), key.hex()]:
        assert secret not in log


def test_core_dumps_are_off(tmp_path, mode0):
    secret_dir, _ = mode0
    with running_server(tmp_path, "MODE0", secret_dir) as server:
        limits = open(f"/proc/{server.process.pid}/limits").read()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core
