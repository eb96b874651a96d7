"""Client for cryptoserver, HMAC-SHA256 with the keys held by the server.

    from cryptoserver_client import Client

    with Client("https://cryptoserver.internal:8443", token=TOKEN, ca="ca.pem") as client:
        mac = client.hmac(b"hello world")
        macs = client.hmac_many(messages)          # batched, in order
        assert client.verify(b"hello world", mac)

`AsyncClient` has the same methods, awaited. Errors are subclasses of
`CryptoserverError`; none of them carries a message or a MAC.
"""

from ._async import AsyncClient
from ._core import DEFAULT_MAX_BODY, MAC_LEN, MAX_FRAMES, frame
from ._sync import Client
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

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "CryptoserverError",
    "DEFAULT_MAX_BODY",
    "MAC_LEN",
    "MAX_FRAMES",
    "ProtocolError",
    "RateLimited",
    "ServerUnavailable",
    "Timeout",
    "TooLarge",
    "Unauthorized",
    "frame",
]
