"""Logging never carries secrets, even at TRACE; SIGTERM lets in-flight requests finish."""

import base64
import hashlib
import hmac
import signal
import socket
import time

import requests

import reference
from conftest import running_server


def make_mode0(tmp_path):
    secret_dir = reference.write_random_secrets("MODE0", tmp_path / "secrets")
    return secret_dir, (secret_dir / "secret").read_bytes()


def test_trace_logs_never_show_bodies_macs_or_keys(tmp_path):
    secret_dir, key = make_mode0(tmp_path)
    message = b"Marker-Message-7f3a9c: correct horse battery staple"
    mac = hmac.new(key, message, hashlib.sha256).digest()
    with running_server(tmp_path, "MODE0", secret_dir, {"RUST_LOG": "trace"}) as server:
        assert requests.post(f"{server.url}/hmac", data=message).content == mac
        requests.post(f"{server.url}/hmac?encoding=hex", data=message)
        requests.post(f"{server.url}/hmac?encoding=base64", data=message)
        verified = requests.post(f"{server.url}/verify", data=message, headers={"X-Cryptoserver-Mac": mac.hex()})
        assert verified.json() == {"valid": True}
        requests.post(f"{server.url}/verify", data=message, headers={"X-Cryptoserver-Mac": base64.b64encode(mac).decode()})
    log = server.log()
    assert "cryptoserver started" in log and "MODE0" in log and str(secret_dir) in log
    assert server.url.removeprefix("http://") in log
    for secret in [message.decode(), "Marker-Message", message.hex(), mac.hex(), mac.hex().upper(), base64.b64encode(mac).decode(), key.hex()]:
        assert secret not in log, f"the log shows {secret!r}"


def test_no_log_output_without_rust_log(tmp_path):
    secret_dir, _ = make_mode0(tmp_path)
    with running_server(tmp_path, "MODE0", secret_dir) as server:
        requests.post(f"{server.url}/hmac", data=b"x")
    assert server.log() == ""


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path):
    secret_dir, key = make_mode0(tmp_path)
    with running_server(tmp_path, "MODE0", secret_dir) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /hmac HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
            time.sleep(0.2)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert server.process.poll() is None, "exited with a request in flight"
            sock.sendall(b" world")
            reply = b""
            while not reply.endswith(hmac.new(key, b"hello world", hashlib.sha256).digest()):
                chunk = sock.recv(4096)
                assert chunk, f"connection closed early: {reply!r}"
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200")
        assert server.process.wait(timeout=10) == 0
