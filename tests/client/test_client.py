"""The Python client (clients/python) against real cryptoserver processes: every
mode, tokens, TLS and mTLS, batches split over several requests, retries at the
concurrency and rate limits, typed errors that never carry a message or a MAC,
agreement with the seed's `requests` client, and mypy --strict."""

import asyncio
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import requests
import trustme

import reference
from conftest import REPO, free_port, ready_within, running_server, server_over_random_secrets
from cryptoserver_client import _core
from cryptoserver_client import (
    AsyncClient,
    BadRequest,
    Client,
    CryptoserverError,
    ProtocolError,
    RateLimited,
    ServerUnavailable,
    TooLarge,
    Unauthorized,
)

MESSAGES = [b"", b"x", b"hello world", b"apples and pears", bytes(range(256)) * 3] + [os.urandom(n) for n in (1, 31, 64, 1000)]


def seed_compute(url, msg):
    """The README's original client, verbatim but for the URL."""
    res = requests.post(url + "/hmac", data=msg)
    if res.status_code != 200:
        raise RuntimeError("couldn't hmac data")
    return res.content


def requests_to(server, route, status, metrics_url=None):
    """How many requests to `route` got `status`, from the server's metrics."""
    metrics = requests.get(metrics_url or f"{server.url}/metrics").text
    line = f'cryptoserver_requests_total{{route="{route}",status="{status}"}} '
    return next((int(l.removeprefix(line)) for l in metrics.splitlines() if l.startswith(line)), 0)


def assert_clean(error, *secrets):
    """The error's text holds none of `secrets`, and it keeps no reference to the request."""
    text = str(error) + repr(error)
    for secret in secrets:
        for form in (secret, secret.hex(), repr(secret)):
            assert (form not in text) if isinstance(form, str) else (form.decode(errors="replace") not in text)
    assert error.__cause__ is None and error.__context__ is None


@pytest.fixture(scope="module")
def mode0(tmp_path_factory):
    with server_over_random_secrets(tmp_path_factory, "MODE0", "mode0") as server:
        yield server


@pytest.mark.parametrize("mode", ["MODE0", "MODE16", "MODE32", "MODE32X"])
def test_every_mode_sync_and_async(tmp_path, mode):
    secret_dir = reference.write_random_secrets(mode, tmp_path / "secrets", MESSAGES)
    expected = [reference.mac(mode, secret_dir, m) for m in MESSAGES]
    with running_server(tmp_path, mode, secret_dir) as server:
        with Client(server.url) as client:
            assert [client.hmac(m) for m in MESSAGES] == expected
            assert client.hmac_many(MESSAGES) == expected
            assert client.hmac_many([]) == []
            assert all(client.verify(m, mac) for m, mac in zip(MESSAGES, expected))
            assert not client.verify(b"hello world", expected[0])
            assert client.ready()

        async def run():
            async with AsyncClient(server.url) as client:
                singles = await asyncio.gather(*(client.hmac(m) for m in MESSAGES))
                return singles, await client.hmac_many(MESSAGES), await client.verify(MESSAGES[2], expected[2]), await client.ready()

        assert asyncio.run(run()) == (expected, expected, True, True)
        if mode in ("MODE32", "MODE32X"):
            # A key file gone (in MODE32X, one of the 8 probes'): the MAC fails
            # closed (503, retried, then ServerUnavailable), and ready() turns
            # False until it is back.
            victim = secret_dir / f"{reference.key_indices(mode, MESSAGES[3])[-1] >> 16:04x}"
            saved = victim.read_bytes()
            victim.unlink()
            try:
                with Client(server.url, retries=2, backoff=0.01, max_backoff=0.02) as client:
                    with pytest.raises(ServerUnavailable) as unavailable:
                        client.hmac(MESSAGES[3])
                    assert unavailable.value.status == 503
                    assert_clean(unavailable.value, MESSAGES[3], expected[3])
                    assert client.ready() is False
            finally:
                victim.write_bytes(saved)
            assert requests_to(server, "/hmac", 503) == 3
            assert ready_within(server.url)
            with Client(server.url) as client:
                assert client.ready() is True
                assert client.hmac(MESSAGES[3]) == expected[3]


def test_agrees_byte_for_byte_with_the_seeds_requests_client(mode0):
    messages = MESSAGES + [os.urandom(1 << 20), b"\x00" * 1000]
    with Client(mode0.url) as client:
        assert [client.hmac(m) for m in messages] == [seed_compute(mode0.url, m) for m in messages]
        assert client.hmac_many(messages) == [seed_compute(mode0.url, m) for m in messages]


def test_batches_split_to_the_body_limit_and_the_frame_limit_in_order(tmp_path):
    secret_dir = reference.write_random_secrets("MODE16", tmp_path / "secrets")
    limit = 4096
    with running_server(tmp_path, "MODE16", secret_dir, {"CRYPTOSERVER_MAX_BODY": str(limit)}) as server:
        sizes = [(i * 37) % 300 for i in range(400)]
        # Messages that fit /hmac but not a frame (4 + length > limit) go alone, in place.
        messages = [os.urandom(size) for size in sizes[:150]] + [os.urandom(limit), os.urandom(limit - 3)] + [os.urandom(size) for size in sizes[150:]]
        expected = [reference.mac("MODE16", secret_dir, m) for m in messages]
        before = requests_to(server, "/hmac/batch", 200), requests_to(server, "/hmac", 200)
        with Client(server.url, max_body=limit) as client:
            assert client.hmac_many(messages) == expected
        batches = requests_to(server, "/hmac/batch", 200) - before[0]
        singles = requests_to(server, "/hmac", 200) - before[1]
        framed = sum(4 + len(m) for m in messages) - 2 * (4 + limit) + 8
        assert singles == 2
        assert -(-framed // limit) <= batches <= -(-framed // limit) + 3, batches
        with Client(server.url, max_body=limit, max_batch=7) as client:
            assert client.hmac_many(messages[:30]) == expected[:30]
        assert requests_to(server, "/hmac/batch", 200) - before[0] - batches == 5
        with Client(server.url, max_body=limit) as client, pytest.raises(TooLarge) as refused:
            client.hmac_many([b"ok", os.urandom(limit + 1)])
        assert "message 1" in str(refused.value) and str(limit + 1) in str(refused.value)
        # A client that believes the limit is larger gets the server's 413 as TooLarge.
        marker = b"do-not-echo-" + os.urandom(8).hex().encode()
        with Client(server.url) as client, pytest.raises(TooLarge) as too_large:
            client.hmac(marker * 1000)
        assert too_large.value.status == 413
        assert_clean(too_large.value, marker)


def test_more_messages_than_one_batch_holds(mode0):
    messages = [b""] * 65_536 + [b"a", b"b"] + [b""] * 10
    before = requests_to(mode0, "/hmac/batch", 200)
    with Client(mode0.url) as client:
        macs = client.hmac_many(messages)
    assert requests_to(mode0, "/hmac/batch", 200) - before == 2
    assert len(macs) == len(messages)
    assert macs[65_536] == reference.mac("MODE0", mode0.secret_dir, b"a") and macs[65_537] == reference.mac("MODE0", mode0.secret_dir, b"b")
    assert set(macs[:65_536]) == {reference.mac("MODE0", mode0.secret_dir, b"")}


def test_tokens(tmp_path):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    token = os.urandom(32).hex()
    (tmp_path / "tokens").write_text(hashlib.sha256(token.encode()).hexdigest() + "\n")
    with running_server(tmp_path, "MODE0", secret_dir, {"CRYPTOSERVER_TOKENS_FILE": str(tmp_path / "tokens")}) as server:
        with Client(server.url, token=token) as client:
            assert client.hmac(b"m") == reference.mac("MODE0", secret_dir, b"m")
            assert client.ready()
        for wrong in (None, os.urandom(32).hex()):
            with Client(server.url, token=wrong, retries=3) as client:
                started = time.monotonic()
                with pytest.raises(Unauthorized) as refused:
                    client.hmac_many([b"secret message"])
                assert time.monotonic() - started < 1, "a 401 was retried"
                assert refused.value.status == 401 and refused.value.request_id
                assert_clean(refused.value, b"secret message", token.encode(), *([wrong.encode()] if wrong else []))
        metrics = requests.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
        assert "cryptoserver_unauthorized_total 2" in metrics
    with pytest.raises(ValueError, match="token"):
        Client("http://127.0.0.1:1", token="two words")


@pytest.fixture
def certificates(tmp_path):
    ca = trustme.CA()
    paths = {name: tmp_path / f"{name}.pem" for name in ["ca", "cert", "key", "client-cert", "client-key", "client"]}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    server_cert.private_key_pem.write_to_path(str(paths["key"]))
    for blob in server_cert.cert_chain_pems:
        blob.write_to_path(str(paths["cert"]), append=True)
    client_cert = ca.issue_cert("client.example")
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    client_cert.private_key_pem.write_to_path(str(paths["client-key"]))
    for blob in client_cert.cert_chain_pems:
        blob.write_to_path(str(paths["client-cert"]), append=True)
    return paths


def test_tls_with_a_ca(tmp_path, certificates):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    env = {"CRYPTOSERVER_TLS_CERT": str(certificates["cert"]), "CRYPTOSERVER_TLS_KEY": str(certificates["key"])}
    with running_server(tmp_path, "MODE0", secret_dir, env, https_ca=str(certificates["ca"])) as server:
        with Client(server.url, ca=certificates["ca"]) as client:
            assert client.hmac_many([b"over", b"tls"]) == [reference.mac("MODE0", secret_dir, m) for m in (b"over", b"tls")]
        # The system's trust store does not know the test CA: no connection, and
        # no retry either, since the certificate will not change by waiting.
        with Client(server.url, retries=3, backoff=1.0) as client:
            started = time.monotonic()
            with pytest.raises(ServerUnavailable, match="after 1 attempt.*certificate verify failed"):
                client.hmac(b"m")
            assert time.monotonic() - started < 1.0


def test_mtls(tmp_path, certificates):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    env = {
        "CRYPTOSERVER_TLS_CERT": str(certificates["cert"]),
        "CRYPTOSERVER_TLS_KEY": str(certificates["key"]),
        "CRYPTOSERVER_TLS_CLIENT_CA": str(certificates["ca"]),
    }
    with running_server(tmp_path, "MODE0", secret_dir, env, https_ca=str(certificates["ca"]), client_cert=str(certificates["client"])) as server:
        expected = reference.mac("MODE0", secret_dir, b"m")
        with Client(server.url, ca=certificates["ca"], client_cert=certificates["client"]) as client:
            assert client.hmac(b"m") == expected
        with Client(server.url, ca=certificates["ca"], client_cert=(certificates["client-cert"], certificates["client-key"])) as client:
            assert client.verify(b"m", expected)

        # TLS 1.3 refuses a missing client certificate after the handshake, so
        # the refusal arrives on a write or on a read, whichever comes first:
        # several tries meet both, and each ends in this client's own error.
        async def without_certificate():
            async with AsyncClient(server.url, ca=certificates["ca"], retries=1, backoff=0.01, max_backoff=0.02) as client:
                await client.hmac(b"m")

        for _ in range(5):
            with pytest.raises(CryptoserverError):
                asyncio.run(without_certificate())
            with Client(server.url, ca=certificates["ca"], retries=1, backoff=0.01, max_backoff=0.02) as client:
                with pytest.raises(CryptoserverError):
                    client.hmac(b"m")


def test_a_tls_alert_outside_httpx_is_a_typed_error():
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    assert not _core.is_retryable(alert)
    error = _core.transport_error("POST /hmac", "https://127.0.0.1:1", alert, 1)
    assert isinstance(error, ProtocolError)
    assert "TLS" in str(error) and "client_cert" in str(error)


def hold_the_only_place(server, release_after):
    """Starts a request from another client address that holds the server's single
    place until `release_after` seconds."""
    slow = socket.create_connection(server.address, timeout=10, source_address=("127.0.0.2", 0))
    slow.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\na")
    time.sleep(0.2)

    def release():
        time.sleep(release_after)
        slow.sendall(b"b")
        slow.recv(4096)
        slow.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_retries_at_the_concurrency_limit(tmp_path):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    with running_server(tmp_path, "MODE0", secret_dir, {"CRYPTOSERVER_MAX_CONCURRENT": "1"}) as server:
        expected = reference.mac("MODE0", secret_dir, b"m")
        release = hold_the_only_place(server, 0.3)
        with Client(server.url, retries=3) as client:
            started = time.monotonic()
            assert client.hmac(b"m") == expected
            waited = time.monotonic() - started
        release.join()
        # Retry-After: 1 was honoured, and the retry came soon after.
        assert 1.0 <= waited < 3.0, waited
        assert requests_to(server, "/hmac", 503) == 1
        release = hold_the_only_place(server, 1.5)

        async def without_retries():
            async with AsyncClient(server.url, retries=0) as client:
                await client.hmac(b"m")

        started = time.monotonic()
        with pytest.raises(ServerUnavailable) as shed:
            asyncio.run(without_retries())
        assert time.monotonic() - started < 1.0 and shed.value.status == 503
        assert "concurrency limit" in str(shed.value)
        release.join()


def test_retries_at_the_rate_limit(tmp_path):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    # The metrics get their own address, where the rate limit does not apply.
    metrics_address = f"127.0.0.1:{free_port()}"
    env = {"CRYPTOSERVER_RATE_LIMIT": "2:2", "CRYPTOSERVER_METRICS_BIND": metrics_address}
    with running_server(tmp_path, "MODE0", secret_dir, env) as server:
        messages = [b"a", b"b", b"c", b"d"]
        expected = [reference.mac("MODE0", secret_dir, m) for m in messages]
        with Client(server.url, retries=3, max_batch=2) as client:
            started = time.monotonic()
            # Two batches of two: the second waits for the bucket to refill.
            assert client.hmac_many(messages) == expected
            assert 0.9 <= time.monotonic() - started < 4.0
        assert requests_to(server, "/hmac/batch", 429, f"http://{metrics_address}/metrics") >= 1
        time.sleep(1.1)
        with Client(server.url, retries=3) as client:
            started = time.monotonic()
            with pytest.raises(RateLimited) as refused:
                client.hmac_many([b"m"] * 4)
            # More than the burst can never pass: not retried, and told how to fix it.
            assert time.monotonic() - started < 0.5
            assert refused.value.retry_after is None and "max_batch" in str(refused.value)
        with Client(server.url, retries=0) as client:
            with pytest.raises(RateLimited) as limited:
                for _ in range(3):
                    client.hmac(b"x")
            assert limited.value.retry_after is not None and limited.value.retry_after >= 1


def test_connection_errors_are_retried_then_reported():
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retries=2, backoff=0.05, max_backoff=0.1) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="no connection to .* after 3 attempt") as failed:
            client.hmac(b"secret message")
        assert 0.05 <= time.monotonic() - started < 2
    assert_clean(failed.value, b"secret message")


def test_bad_input_gets_clear_errors(mode0):
    with Client(mode0.url) as client:
        with pytest.raises(ValueError, match="32 bytes"):
            client.verify(b"m", b"short")
        with pytest.raises(TypeError, match="message 1 is str"):
            client.hmac_many([b"ok", "text"])  # type: ignore[list-item]
    for url in ("127.0.0.1:8080", "ftp://127.0.0.1"):
        with pytest.raises(ValueError, match="base URL"):
            Client(url)
    with pytest.raises(ValueError, match="https"):
        Client(mode0.url, ca="ca.pem")
    with pytest.raises(ValueError, match="max_batch"):
        Client(mode0.url, max_batch=70_000)
    assert issubclass(BadRequest, CryptoserverError)


def test_mypy_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "mypy"),
         "clients/python/src/cryptoserver_client", "examples/pepper/pepper.py"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_chunks_fill_the_body_limit_exactly():
    from cryptoserver_client._core import Chunk, plan_chunks

    six = b"123456"  # 10 bytes framed
    assert plan_chunks([six, six], 20, 10) == [Chunk(0, 2, True)]
    assert plan_chunks([six, six, six], 20, 10) == [Chunk(0, 2, True), Chunk(2, 3, True)]
    assert plan_chunks([six] * 5, 1000, 2) == [Chunk(0, 2, True), Chunk(2, 4, True), Chunk(4, 5, True)]
    # 17 bytes fit /hmac under a 20-byte limit but not a frame: alone, in place.
    assert plan_chunks([six, b"x" * 17, six], 20, 10) == [Chunk(0, 1, True), Chunk(1, 2, False), Chunk(2, 3, True)]
    assert plan_chunks([], 20, 10) == []
