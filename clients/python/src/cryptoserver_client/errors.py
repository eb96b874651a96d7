"""What can go wrong, as exceptions. Their text says what happened and what to
do; it never holds a message, a MAC or a token, and no exception keeps a
reference to the request (whose body is the message)."""

from __future__ import annotations


class CryptoserverError(Exception):
    """Base of every error this client raises.

    `status` is the HTTP status when the server answered, `request_id` the
    server's `x-request-id` (to find the request in its log)."""

    def __init__(self, text: str, *, status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.request_id = request_id


class Unauthorized(CryptoserverError):
    """401: the server has a tokens file and the token is missing or not allowed."""


class RateLimited(CryptoserverError):
    """429 after the retries, or with a `Retry-After` longer than the client may wait.

    `retry_after` is the server's `Retry-After` in seconds; `None` means the
    request can never pass as it is (a batch costing more than the rate limit's
    burst: lower `max_batch`)."""

    def __init__(self, text: str, *, retry_after: float | None, status: int | None = 429, request_id: str | None = None) -> None:
        super().__init__(text, status=status, request_id=request_id)
        self.retry_after = retry_after


class TooLarge(CryptoserverError):
    """A message longer than the body limit: refused by the server (413) or,
    knowing the limit, before it was sent."""


class ServerUnavailable(CryptoserverError):
    """503 after the retries (concurrency limit or key storage failing), or no
    connection to the server after the retries."""


class BadRequest(CryptoserverError):
    """400: the server found the request malformed (a bug in the caller or here)."""


class Timeout(CryptoserverError):
    """No complete answer within the client's timeout (not retried: the request
    may have reached the server)."""


class ProtocolError(CryptoserverError):
    """An answer this client does not understand: wrong length, unexpected status."""
