"""What the sync and async clients share and that does no I/O: settings, how a
request is framed, when to retry and how long to wait, how answers map to results
and errors. api/openapi.yaml in the repository is the contract this follows."""

from __future__ import annotations

import email.utils
import json
import os
import random
import ssl
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Union

import httpx

from .errors import (
    BadRequest,
    CryptoserverError,
    ProtocolError,
    RateLimited,
    ServerUnavailable,
    Timeout,
    TooLarge,
    Unauthorized,
)

Message = Union[bytes, bytearray, memoryview]
StrPath = Union[str, "os.PathLike[str]"]
ClientCert = Union[StrPath, tuple[StrPath, StrPath]]

MAC_LEN = 32
#: Most frames one /hmac/batch request may hold (the server's limit).
MAX_FRAMES = 65_536
#: The server's default CRYPTOSERVER_MAX_BODY.
DEFAULT_MAX_BODY = 1 << 20
_FRAME_HEADER = struct.Struct(">I")
#: Transport errors that happen before the server could have answered: the
#: request is sent again (every operation is a pure function of its input).
RETRYABLE_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


#: Failures of a request that got no answer. httpx wraps most in its own
#: exceptions, but a TLS alert read on an established connection (TLS 1.3
#: refuses a missing client certificate after the handshake) can reach the
#: async client as the bare `ssl.SSLError`.
TRANSPORT_FAILURES = (httpx.HTTPError, ssl.SSLError)


def is_retryable(error: Exception) -> bool:
    """A failed connection is worth another attempt, unless TLS refused the
    server's certificate: that stays wrong until the configuration changes."""
    return isinstance(error, RETRYABLE_TRANSPORT_ERRORS) and not _caused_by(error, ssl.SSLCertVerificationError)


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


@dataclass(frozen=True)
class Settings:
    base_url: str
    headers: dict[str, str]
    verify: ssl.SSLContext | bool
    timeout: float
    retries: int
    backoff: float
    max_backoff: float
    max_body: int
    max_batch: int


def make_settings(
    url: str,
    *,
    token: str | None,
    ca: StrPath | None,
    client_cert: ClientCert | None,
    timeout: float,
    retries: int,
    backoff: float,
    max_backoff: float,
    max_body: int,
    max_batch: int,
) -> Settings:
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"url must be http://HOST:PORT or https://HOST:PORT, the server's base URL; got {url!r}")
    headers = {}
    if token is not None:
        if not token or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
            raise ValueError("token must be non-empty printable ASCII without spaces (as `cargo xtask gen-token` prints it)")
        headers["Authorization"] = f"Bearer {token}"
    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more; got {retries}")
    if backoff <= 0 or max_backoff < backoff:
        raise ValueError(f"need 0 < backoff <= max_backoff; got backoff={backoff}, max_backoff={max_backoff}")
    if max_body < 1:
        raise ValueError(f"max_body must match the server's CRYPTOSERVER_MAX_BODY in bytes; got {max_body}")
    if not 1 <= max_batch <= MAX_FRAMES:
        raise ValueError(f"max_batch must be 1 to {MAX_FRAMES}; got {max_batch}")
    return Settings(
        base_url=url.rstrip("/"),
        headers=headers,
        verify=_tls_context(parsed.scheme, ca, client_cert),
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_backoff=max_backoff,
        max_body=max_body,
        max_batch=max_batch,
    )


def _tls_context(scheme: str, ca: StrPath | None, client_cert: ClientCert | None) -> ssl.SSLContext | bool:
    if ca is None and client_cert is None:
        return True
    if scheme != "https":
        raise ValueError("ca and client_cert need an https:// url")
    context = ssl.create_default_context(cafile=os.fspath(ca) if ca is not None else None)
    if isinstance(client_cert, tuple):
        context.load_cert_chain(os.fspath(client_cert[0]), os.fspath(client_cert[1]))
    elif client_cert is not None:
        context.load_cert_chain(os.fspath(client_cert))
    return context


def frame(messages: Sequence[Message]) -> bytes:
    """The /hmac/batch body: each message after its 4-byte big-endian length."""
    parts: list[bytes | bytearray | memoryview] = []
    for message in messages:
        parts.append(_FRAME_HEADER.pack(len(message)))
        parts.append(message)
    return b"".join(parts)


@dataclass(frozen=True)
class Chunk:
    """Messages [start, end) go in one request: a batch, or `POST /hmac` for a
    message too long to fit a frame in the body limit."""

    start: int
    end: int
    batched: bool


def plan_chunks(messages: Sequence[Message], max_body: int, max_batch: int) -> list[Chunk]:
    """Consecutive runs of messages that each fit one request, in order. Every
    message is checked against the body limit before anything is sent."""
    for index, message in enumerate(messages):
        if len(message) > max_body:
            raise TooLarge(
                f"message {index} is {len(message)} bytes, over the {max_body}-byte body limit "
                "(the client's max_body, which should match the server's CRYPTOSERVER_MAX_BODY)"
            )
    chunks: list[Chunk] = []
    start = size = 0
    for index, message in enumerate(messages):
        framed = _FRAME_HEADER.size + len(message)
        if framed > max_body:
            if index > start:
                chunks.append(Chunk(start, index, True))
            chunks.append(Chunk(index, index + 1, False))
            start, size = index + 1, 0
            continue
        if index - start == max_batch or size + framed > max_body:
            chunks.append(Chunk(start, index, True))
            start, size = index, 0
        size += framed
    if len(messages) > start:
        chunks.append(Chunk(start, len(messages), True))
    return chunks


def as_messages(messages: Iterable[Message]) -> list[Message]:
    listed = list(messages)
    for index, message in enumerate(listed):
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(f"message {index} is {type(message).__name__}, not bytes")
    return listed


def check_message(message: Message, max_body: int) -> None:
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise TypeError(f"the message is {type(message).__name__}, not bytes")
    if len(message) > max_body:
        raise TooLarge(
            f"the message is {len(message)} bytes, over the {max_body}-byte body limit "
            "(the client's max_body, which should match the server's CRYPTOSERVER_MAX_BODY)"
        )


def mac_header(mac: Message) -> dict[str, str]:
    if not isinstance(mac, (bytes, bytearray, memoryview)) or len(mac) != MAC_LEN:
        raise ValueError(f"a MAC is {MAC_LEN} bytes, as hmac() returns it")
    return {"X-Cryptoserver-Mac": bytes(mac).hex()}


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date), if present and readable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(settings: Settings, attempt: int) -> float:
    """Capped exponential backoff with jitter: half the step fixed, half random,
    so waits grow and clients that failed together do not retry together."""
    step = min(settings.max_backoff, settings.backoff * 2.0**attempt)
    return step / 2 + random.uniform(0, step / 2)


def retry_delay(settings: Settings, response: httpx.Response, attempt: int, *, unready_is_an_answer: bool = False) -> float | None:
    """Seconds to wait before sending the request again, or None when
    `response` is final. Only 429 and 503 are retried; a `Retry-After` longer
    than `max_backoff` is not waited for (the caller gets the error and decides)."""
    if attempt >= settings.retries or response.status_code not in (429, 503):
        return None
    wait = retry_after(response)
    if wait is None:
        # 429 without Retry-After: the batch costs more than the burst, it can never pass.
        # 503 without it: key storage failing, which /readyz reports rather than waits out.
        if response.status_code == 429 or unready_is_an_answer:
            return None
        return backoff_delay(settings, attempt)
    if wait > settings.max_backoff:
        return None
    return wait + random.uniform(0, settings.backoff)


def _server_says(response: httpx.Response) -> str:
    """The server's `{"error": ...}` text, which never holds a message or a MAC."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return "no error text"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:500]
    return "no error text"


def error_for(what: str, response: httpx.Response) -> CryptoserverError:
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    text = f"{what}: HTTP {status}: {_server_says(response)}"
    if request_id is not None:
        text += f" (x-request-id {request_id})"
    if status == 401:
        return Unauthorized(text + "; pass token= with a token the server's tokens file allows", status=status, request_id=request_id)
    if status == 429:
        wait = retry_after(response)
        hint = "; lower max_batch below the rate limit's burst" if wait is None else f"; retry after {wait:g} s"
        return RateLimited(text + hint, retry_after=wait, status=status, request_id=request_id)
    if status == 413:
        return TooLarge(text + "; set max_body to the server's CRYPTOSERVER_MAX_BODY", status=status, request_id=request_id)
    if status == 503:
        return ServerUnavailable(text, status=status, request_id=request_id)
    if status in (400, 408):
        return BadRequest(text, status=status, request_id=request_id)
    return ProtocolError(text, status=status, request_id=request_id)


def transport_error(what: str, url: str, error: Exception, attempts: int) -> CryptoserverError:
    """The error for a request that got no answer; built from the text of
    `error` only, so no reference to the request (and its body) survives."""
    reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, ssl.SSLError):
        return ProtocolError(
            f"{what}: TLS with {url} failed ({reason}): check the client's ca and client_cert "
            "against the server's certificate and its CRYPTOSERVER_TLS_CLIENT_CA"
        )
    if isinstance(error, RETRYABLE_TRANSPORT_ERRORS):
        return ServerUnavailable(f"{what}: no connection to {url} after {attempts} attempt(s) ({reason})")
    if isinstance(error, httpx.TimeoutException):
        return Timeout(f"{what}: no answer from {url} within the timeout ({reason})")
    return ProtocolError(f"{what}: request to {url} failed ({reason})")


def mac_result(what: str, response: httpx.Response) -> bytes:
    if response.status_code != 200:
        raise error_for(what, response)
    if len(response.content) != MAC_LEN:
        raise ProtocolError(f"{what}: expected {MAC_LEN} bytes, got {len(response.content)}")
    return response.content


def batch_result(what: str, response: httpx.Response, count: int) -> list[bytes]:
    if response.status_code != 200:
        raise error_for(what, response)
    content = response.content
    if len(content) != MAC_LEN * count:
        raise ProtocolError(f"{what}: expected {count} MACs ({MAC_LEN * count} bytes), got {len(content)} bytes")
    return [content[i : i + MAC_LEN] for i in range(0, len(content), MAC_LEN)]


def verify_result(what: str, response: httpx.Response) -> bool:
    if response.status_code != 200:
        raise error_for(what, response)
    try:
        valid = response.json().get("valid")
    except (ValueError, AttributeError):
        valid = None
    if not isinstance(valid, bool):
        raise ProtocolError(f'{what}: expected {{"valid": true|false}}')
    return valid


def ready_result(what: str, response: httpx.Response) -> bool:
    if response.status_code == 200:
        return True
    if response.status_code == 503 and response.headers.get("retry-after") is None:
        return False
    raise error_for(what, response)
