"""Password storage with a pepper held by cryptoserver, as the OWASP Password
Storage Cheat Sheet advises it ("hash then HMAC"): Argon2id with a per-user
salt, then the MAC of its output from cryptoserver. The database keeps the
Argon2 parameters, the salt and the MAC; the raw Argon2 output and the password
are never stored, and the password never leaves this process.

README.md next to this file says why the MAC comes after the slow hash, what to
store and how to upgrade existing hashes.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass

from argon2 import Parameters, PasswordHasher, Type, extract_parameters, low_level, profiles
from argon2.exceptions import InvalidHashError, VerificationError

from cryptoserver_client import Client

SCHEME = "argon2id-cryptoserver"
_ENCODED = re.compile(
    r"^\$(?P<scheme>[a-z0-9-]+)\$v=19\$m=(?P<m>\d+),t=(?P<t>\d+),p=(?P<p>\d+)(?:,l=(?P<l>\d+))?"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<tail>[A-Za-z0-9+/]+)$"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Record:
    """What the database holds for one user, encoded as one PHC-style string:
    `$argon2id-cryptoserver$v=19$m=<KiB>,t=<passes>,p=<lanes>,l=<hash length>$<salt>$<MAC>`."""

    memory_cost: int
    time_cost: int
    parallelism: int
    hash_len: int
    salt: bytes
    mac: bytes

    def encode(self) -> str:
        return (
            f"${SCHEME}$v=19$m={self.memory_cost},t={self.time_cost},p={self.parallelism},l={self.hash_len}"
            f"${_b64(self.salt)}${_b64(self.mac)}"
        )

    @classmethod
    def decode(cls, stored: str) -> Record:
        match = _ENCODED.match(stored)
        if match is None or match["scheme"] != SCHEME or match["l"] is None:
            raise ValueError(f"not a {SCHEME} record (expected ${SCHEME}$v=19$m=..,t=..,p=..,l=..$salt$mac)")
        return cls(int(match["m"]), int(match["t"]), int(match["p"]), int(match["l"]), _unb64(match["salt"]), _unb64(match["tail"]))

    def weaker_than(self, parameters: Parameters) -> bool:
        """Whether any cost or length is below `parameters`'."""
        return any(
            mine < wanted
            for mine, wanted in [
                (self.memory_cost, parameters.memory_cost),
                (self.time_cost, parameters.time_cost),
                (self.hash_len, parameters.hash_len),
                (len(self.salt), parameters.salt_len),
            ]
        )


class PepperedPasswords:
    """Registration, login and the upgrade of existing hashes. `parameters`
    are the Argon2id costs for new records; the default is RFC 9106's
    second recommended option (64 MiB, 3 passes, 4 lanes)."""

    def __init__(self, client: Client, parameters: Parameters = profiles.RFC_9106_LOW_MEMORY) -> None:
        if parameters.type is not Type.ID or parameters.version != 19:
            raise ValueError("new records use Argon2id version 19")
        self._client = client
        self._parameters = parameters

    def register(self, password: str) -> str:
        """The record to store for a new password (also for a changed one)."""
        parameters = self._parameters
        salt = os.urandom(parameters.salt_len)
        digest = self._argon2(password, salt, parameters.memory_cost, parameters.time_cost, parameters.parallelism, parameters.hash_len)
        mac = self._client.hmac(digest)
        return Record(parameters.memory_cost, parameters.time_cost, parameters.parallelism, parameters.hash_len, salt, mac).encode()

    def login(self, stored: str, password: str) -> tuple[bool, str | None]:
        """Whether `password` matches the stored value, and the record to store
        in its place when it should be upgraded (a plain Argon2id hash without
        the pepper, or a record with weaker parameters than today's), else None."""
        if stored.startswith("$argon2id$"):
            return self._login_unpeppered(stored, password)
        record = Record.decode(stored)
        digest = self._argon2(password, record.salt, record.memory_cost, record.time_cost, record.parallelism, record.hash_len)
        # The server compares the MACs in constant time.
        if not self._client.verify(digest, record.mac):
            return False, None
        return True, (self.register(password) if record.weaker_than(self._parameters) else None)

    def pepper_existing(self, stored: str) -> str:
        """Adds the pepper to an existing plain Argon2id hash (argon2-cffi's
        `$argon2id$...` form) without its password, e.g. for every user at once:
        the hash's raw output gets its MAC, and the raw output is dropped."""
        try:
            parameters = extract_parameters(stored)
        except InvalidHashError:
            raise ValueError("not an argon2-cffi encoded hash ($argon2id$v=19$m=..,t=..,p=..$salt$hash)") from None
        match = _ENCODED.match(stored)
        if parameters.type is not Type.ID or parameters.version != 19 or match is None or match["l"] is not None:
            raise ValueError("only Argon2id version 19 hashes ($argon2id$v=19$...) can be peppered in place")
        raw = _unb64(match["tail"])
        mac = self._client.hmac(raw)
        return Record(parameters.memory_cost, parameters.time_cost, parameters.parallelism, len(raw), _unb64(match["salt"]), mac).encode()

    def _login_unpeppered(self, stored: str, password: str) -> tuple[bool, str | None]:
        try:
            PasswordHasher().verify(stored, password)
        except VerificationError:
            return False, None
        return True, self.register(password)

    @staticmethod
    def _argon2(password: str, salt: bytes, memory_cost: int, time_cost: int, parallelism: int, hash_len: int) -> bytes:
        return low_level.hash_secret_raw(
            password.encode(),
            salt,
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            hash_len=hash_len,
            type=Type.ID,
            version=19,
        )

