"""Load generation for the bounded load tests: well-formed requests whose exact
answer is known from tests/reference.py, malformed requests with the status each
must get, and clients that send them over real TCP on loopback, on keep-alive
sessions, fresh raw sockets (some chunked) or trickled a few bytes at a time.

Every client loop stops at a deadline and after a bounded number of requests."""

import base64
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass

import requests

import reference

MODE = "MODE16"
MAX_BODY = 64 * 1024
SERVER_ENV = {"CRYPTOSERVER_MAX_BODY": str(MAX_BODY)}
# A cap on each client loop, far above what a client reaches in its time.
MAX_REQUESTS_PER_CLIENT = 100_000
SOCKET_TIMEOUT = 10
MAX_RESPONSE_HEAD = 64 * 1024


@dataclass
class Call:
    """A well-formed request and the exact body its 200 must carry."""

    kind: str
    path: str
    body: bytes
    headers: dict
    expected: object  # bytes, or the decoded JSON for /verify

    def check(self, status, content):
        """None when the answer is right, else what is wrong (never the MAC itself)."""
        if status != 200:
            return f"{self.kind}: status {status}: {content[:200]!r}"
        got = json.loads(content) if isinstance(self.expected, dict) else content
        if got != self.expected:
            return f"{self.kind}: wrong answer for a {len(self.body)}-byte body"
        return None


def random_message(rng):
    size = rng.choice([0, 1, rng.randrange(2, 64), rng.randrange(64, 1024), rng.randrange(1024, 8192)])
    return rng.randbytes(size)


KINDS = ["hmac", "hex", "base64", "batch", "verify", "verify-wrong"]


def well_formed_call(rng, secret_dir, kind=None):
    """One of the API's well-formed requests (of `kind` if given), with the answer the reference gives."""

    def mac(message):
        return reference.mac(MODE, secret_dir, message)

    kind = kind or rng.choice(KINDS)
    message = random_message(rng)
    if kind == "hmac":
        return Call(kind, "/hmac", message, {}, mac(message))
    if kind == "hex":
        return Call(kind, "/hmac?encoding=hex", message, {}, mac(message).hex().encode())
    if kind == "base64":
        return Call(kind, "/hmac?encoding=base64", message, {}, base64.b64encode(mac(message)))
    if kind == "batch":
        messages = [random_message(rng)[:512] for _ in range(rng.randrange(0, 40))]
        body = b"".join(struct.pack(">I", len(m)) + m for m in messages)
        return Call(kind, "/hmac/batch", body, {}, b"".join(mac(m) for m in messages))
    presented = bytearray(mac(message))
    if kind == "verify-wrong":
        presented[rng.randrange(32)] ^= 1 << rng.randrange(8)
    return Call(kind, "/verify", message, {"X-Cryptoserver-Mac": presented.hex()}, {"valid": kind == "verify"})


def request_bytes(method, path, body=b"", headers=None, chunks=None):
    """An HTTP/1.1 request; with `chunks` (a list of byte strings joining to
    `body`), sent with chunked transfer encoding."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if chunks is None:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    else:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks if c) + b"0\r\n\r\n"
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + payload


def read_response(sock):
    """(status, headers, body) of one response, or None when the server closed
    the connection without answering."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_RESPONSE_HEAD:
            raise OSError(f"no end to the response head after {len(data)} bytes")
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def split_randomly(rng, data, pieces):
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(pieces - 1))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


class Tally:
    """What the clients saw, shared between threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.failures = []

    def count(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, problem):
        with self.lock:
            self.failures.append(problem)

    def total(self, prefix):
        with self.lock:
            return sum(n for what, n in self.counts.items() if what.startswith(prefix))


def keep_alive_client(server, secret_dir, rng, deadline, tally, stop=None, on_error=None):
    """Well-formed requests on one keep-alive session, each answer checked.
    `on_error(description)` takes connection errors instead of counting them as
    failures (after SIGTERM they are expected)."""
    on_error = on_error or tally.fail
    with requests.Session() as session:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() > deadline or (stop and stop.is_set()):
                return
            call = well_formed_call(rng, secret_dir)
            try:
                response = session.post(server.url + call.path, data=call.body, headers=call.headers, timeout=SOCKET_TIMEOUT)
            except requests.RequestException as error:
                on_error(f"{call.kind}: {type(error).__name__}: {error}")
                continue
            record(tally, call, response.status_code, response.content)


def raw_client(server, secret_dir, rng, deadline, tally, stop=None, on_error=None):
    """Well-formed requests, each on a fresh connection, half of them chunked in random pieces."""
    on_error = on_error or tally.fail
    for _ in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() > deadline or (stop and stop.is_set()):
            return
        call = well_formed_call(rng, secret_dir)
        chunks = split_randomly(rng, call.body, rng.randrange(1, 6)) if rng.random() < 0.5 else None
        request = request_bytes("POST", call.path, call.body, {**call.headers, "Connection": "close"}, chunks)
        try:
            with socket.create_connection(server.address, timeout=SOCKET_TIMEOUT) as sock:
                sock.sendall(request)
                answer = read_response(sock)
        except OSError as error:
            on_error(f"{call.kind} (raw): {type(error).__name__}: {error}")
            continue
        if answer is None:
            on_error(f"{call.kind} (raw): closed without an answer")
            continue
        record(tally, call, answer[0], answer[2])


def trickle(sock, data, rng, pause=(0.002, 0.02)):
    """Sends `data` a few bytes at a time with short pauses."""
    at = 0
    while at < len(data):
        step = rng.randrange(1, 8)
        sock.sendall(data[at : at + step])
        at += step
        time.sleep(rng.uniform(*pause))


def slow_call(rng, secret_dir):
    """A small well-formed call, so that trickling it takes about a second. The
    kind is drawn first: a batch is rarely small, and would otherwise hardly
    ever be trickled."""
    kind = rng.choice(KINDS)
    while True:
        call = well_formed_call(rng, secret_dir, kind)
        if len(call.body) <= 200:
            return call


def slow_client(server, secret_dir, rng, deadline, tally):
    """Well-formed requests whose every byte is trickled; the answers must be right all the same."""
    for _ in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() > deadline:
            return
        call = slow_call(rng, secret_dir)
        try:
            with socket.create_connection(server.address, timeout=SOCKET_TIMEOUT) as sock:
                trickle(sock, request_bytes("POST", call.path, call.body, {**call.headers, "Connection": "close"}), rng)
                answer = read_response(sock)
        except OSError as error:
            tally.fail(f"{call.kind} (slow): {type(error).__name__}: {error}")
            continue
        if answer is None:
            tally.fail(f"{call.kind} (slow): closed without an answer")
            continue
        record(tally, call, answer[0], answer[2], prefix="slow ")


def record(tally, call, status, content, prefix=""):
    problem = call.check(status, content)
    if problem:
        tally.fail(prefix + problem)
    else:
        tally.count(f"ok {prefix}{call.kind}")


# Refused by the HTTP layer itself, with an empty body rather than the API's JSON error.
EMPTY_BODY_STATUSES = {431}


def malformed_requests(rng):
    """(name, request bytes, expected status) for requests the server must refuse,
    and how; None means a 400 or the connection just closing (unparseable HTTP)."""
    message = random_message(rng)
    good_frame = struct.pack(">I", len(message)) + message
    return [
        ("batch cut short", request_bytes("POST", "/hmac/batch", good_frame + struct.pack(">I", 10) + b"abc"), 400),
        ("batch trailing bytes", request_bytes("POST", "/hmac/batch", good_frame + b"\x00\x01"), 400),
        ("verify bad MAC header", request_bytes("POST", "/verify", message, {"X-Cryptoserver-Mac": "not-a-mac"}), 400),
        ("verify without MAC header", request_bytes("POST", "/verify", message), 400),
        ("unknown encoding", request_bytes("POST", "/hmac?encoding=rot13", message), 400),
        ("body over the limit", request_bytes("POST", "/hmac", rng.randbytes(MAX_BODY + 1 + rng.randrange(MAX_BODY))), 413),
        ("huge declared length", b"POST /hmac HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\nabc", 413),
        ("head over the limit", request_bytes("POST", "/hmac", b"x", {"X-Padding": "p" * 20_000}), 431),
        ("wrong method", request_bytes("DELETE", "/hmac"), 405),
        ("unknown path", request_bytes("POST", "/hmac2", message), 404),
        ("garbage request line", b"\x16\x03\x01 this is not HTTP\r\n\r\n", None),
        ("bad header line", b"POST /hmac HTTP/1.1\r\nHost: x\r\nno colon here\r\nContent-Length: 1\r\n\r\nx", None),
        ("bad chunked framing", b"POST /hmac HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", None),
    ]


def malformed_client(server, rng, deadline, tally):
    """Malformed requests, each on its own connection, and requests abandoned half sent."""
    for _ in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() > deadline:
            return
        if rng.random() < 0.1:
            abandon_request(server, rng, tally)
            continue
        name, request, expected = rng.choice(malformed_requests(rng))
        try:
            with socket.create_connection(server.address, timeout=SOCKET_TIMEOUT) as sock:
                sock.sendall(request)
                answer = read_response(sock)
        except (ConnectionResetError, BrokenPipeError) as error:
            # The server may close while a rejected request is still being sent.
            answer = None if expected is None else error
        except OSError as error:
            tally.fail(f"malformed {name}: {type(error).__name__}: {error}")
            continue
        if expected is None and (answer is None or answer[0] == 400):
            tally.count(f"refused {name}")
        elif isinstance(answer, tuple) and answer[0] == expected and (expected in EMPTY_BODY_STATUSES or "error" in json.loads(answer[2])):
            tally.count(f"refused {name}")
        else:
            tally.fail(f"malformed {name}: expected {expected}, got {answer if not isinstance(answer, tuple) else answer[:2]}")


def abandon_request(server, rng, tally):
    """Sends part of a request and hangs up."""
    request = request_bytes("POST", "/hmac", rng.randbytes(1000))
    try:
        with socket.create_connection(server.address, timeout=SOCKET_TIMEOUT) as sock:
            sock.sendall(request[: rng.randrange(1, len(request))])
    except OSError as error:
        tally.fail(f"abandoned request: {type(error).__name__}: {error}")
        return
    tally.count("refused abandoned request")


def start_clients(targets):
    """Starts one thread per (function, args)."""
    threads = [threading.Thread(target=function, args=args, daemon=True) for function, args in targets]
    for thread in threads:
        thread.start()
    return threads


def wait_for(threads, timeout):
    """Waits at most `timeout` seconds in all; returns the threads still running."""
    end = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0, end - time.monotonic()))
    return [thread for thread in threads if thread.is_alive()]
