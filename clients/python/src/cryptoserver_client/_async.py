"""The asyncio client: the same methods as Client, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType

import httpx

from . import _core
from ._core import DEFAULT_MAX_BODY, MAX_FRAMES, ClientCert, Message, StrPath
from .errors import CryptoserverError


class AsyncClient:
    """Client for asyncio: the same arguments and methods, awaited; share it
    between tasks. `await aclose()` it, or use it with `async with`.

    `url` is the server's base URL (`http://127.0.0.1:8080`); `token` its bearer
    token; `ca` a PEM bundle to trust instead of the system's; `client_cert` a PEM
    file with certificate and key, or a (certificate, key) pair, for mTLS;
    `timeout` seconds per attempt; `retries` how many times a request is sent
    again after 503, 429 or a failed connection, waiting `backoff` seconds
    doubling up to `max_backoff` or what `Retry-After` says; `max_body` the
    server's CRYPTOSERVER_MAX_BODY and `max_batch` the most messages per batch
    request (lower it below a rate limit's burst). Proxy settings from the
    environment are ignored: requests go to `url` and nowhere else."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ca: StrPath | None = None,
        client_cert: ClientCert | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_body: int = DEFAULT_MAX_BODY,
        max_batch: int = MAX_FRAMES,
    ) -> None:
        self._settings = _core.make_settings(
            url,
            token=token,
            ca=ca,
            client_cert=client_cert,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_body=max_body,
            max_batch=max_batch,
        )
        self._http = httpx.AsyncClient(
            base_url=self._settings.base_url,
            headers=self._settings.headers,
            verify=self._settings.verify,
            timeout=timeout,
            trust_env=False,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def hmac(self, message: Message) -> bytes:
        """The 32-byte HMAC-SHA256 of `message` under the server's key for it."""
        _core.check_message(message, self._settings.max_body)
        return _core.mac_result("POST /hmac", await self._send("POST", "/hmac", content=bytes(message)))

    async def hmac_many(self, messages: Iterable[Message]) -> list[bytes]:
        """The MACs of `messages`, in order, in as few requests as the server's
        frame and body limits allow (`POST /hmac/batch`)."""
        listed = _core.as_messages(messages)
        macs: list[bytes] = []
        for chunk in _core.plan_chunks(listed, self._settings.max_body, self._settings.max_batch):
            if chunk.batched:
                part = listed[chunk.start : chunk.end]
                response = await self._send("POST", "/hmac/batch", content=_core.frame(part))
                macs.extend(_core.batch_result("POST /hmac/batch", response, len(part)))
            else:
                macs.append(await self.hmac(listed[chunk.start]))
        return macs

    async def verify(self, message: Message, mac: Message) -> bool:
        """Whether `mac` is the MAC of `message`, compared in constant time by the server."""
        headers = _core.mac_header(mac)
        _core.check_message(message, self._settings.max_body)
        response = await self._send("POST", "/verify", content=bytes(message), headers=headers)
        return _core.verify_result("POST /verify", response)

    async def ready(self) -> bool:
        """Whether the server can read every key (`GET /readyz`)."""
        response = await self._send("GET", "/readyz", unready_is_an_answer=True)
        return _core.ready_result("GET /readyz", response)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        unready_is_an_answer: bool = False,
    ) -> httpx.Response:
        settings = self._settings
        attempt = 0
        while True:
            failure: CryptoserverError | None = None
            try:
                response = await self._http.request(method, path, content=content, headers=headers)
            except _core.TRANSPORT_FAILURES as error:
                if attempt >= settings.retries or not _core.is_retryable(error):
                    failure = _core.transport_error(f"{method} {path}", settings.base_url, error, attempt + 1)
                delay = _core.backoff_delay(settings, attempt)
            else:
                wait = _core.retry_delay(settings, response, attempt, unready_is_an_answer=unready_is_an_answer)
                if wait is None:
                    return response
                delay = wait
            # Raised here, outside the except clause, so it does not chain the
            # httpx error that holds the request and its body.
            if failure is not None:
                raise failure
            await asyncio.sleep(delay)
            attempt += 1
