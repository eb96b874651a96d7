"""Signed clients documents as an operator makes them, with minisign's own tool:
a key pair without a password, and F.signed = F.minisig followed by F
(docs/clients.md). Shared by every suite that pushes signed updates."""

import hashlib
import shutil
import subprocess

import pytest


def minisign():
    """minisign's path; the test fails without it, as CI installs it."""
    path = shutil.which("minisign")
    if path is None:
        pytest.fail("minisign is missing: install Debian's minisign package (`cargo xtask ci` does)")
    return path


def digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


class Signer:
    """A minisign key pair without a password (`minisign -G -W`) in `directory`."""

    def __init__(self, directory, name="signer"):
        directory.mkdir(exist_ok=True)
        self.public_path = directory / f"{name}.pub"
        self.secret_path = directory / f"{name}.key"
        subprocess.run(
            [minisign(), "-G", "-W", "-p", self.public_path, "-s", self.secret_path],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.public_key = self.public_path.read_text().splitlines()[1]

    def sign(self, path, text, comment=None):
        """F.signed for a clients file F of `text`, as docs/clients.md says to make it."""
        path.write_text(text)
        command = [minisign(), "-S", "-s", self.secret_path, "-m", path]
        if comment:
            command += ["-t", comment]
        subprocess.run(command, check=True, capture_output=True, timeout=30)
        return path.with_name(path.name + ".minisig").read_bytes() + path.read_bytes()


def clients_text(serial, clients):
    """`clients`: (token, rest of the line) pairs."""
    head = "" if serial is None else f"serial={serial}\n"
    return head + "".join(f"{digest(token)} {rest}\n" for token, rest in clients)
