"""Helpers for the secret generator's tests: running `cryptoserver-secrets`,
looking at a secrets directory, and mounting small or huge throw-away filesystems."""

import contextlib
import hashlib
import json
import os
import pathlib
import subprocess
import time

import pytest

from conftest import binary
from reference import MANIFEST

FILE_LEN = 2 * 1024 * 1024

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a filesystem needs root (CI runs as root)")


def secrets_command(*args):
    return [str(binary("cryptoserver-secrets")), *map(str, args)]


def generate(secret_dir, mode, *args, timeout=300):
    """Runs `cryptoserver-secrets generate` to completion."""
    return subprocess.run(
        secrets_command("generate", "--mode", mode, "--dir", secret_dir, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_generate(secret_dir, mode, *args):
    """Starts `cryptoserver-secrets generate` in the background, stderr piped."""
    return subprocess.Popen(
        secrets_command("generate", "--mode", mode, "--dir", secret_dir, *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def verify(secret_dir):
    return subprocess.run(secrets_command("verify", "--dir", secret_dir), capture_output=True, text=True, timeout=300)


def sha256_file(path):
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def temp_files(secret_dir):
    """Temporary files the generator writes under (`.<name>.tmp`)."""
    return sorted(name for name in os.listdir(secret_dir) if name.startswith(".") and name.endswith(".tmp"))


def final_files(secret_dir):
    return sorted(name for name in os.listdir(secret_dir) if not name.startswith(".") and name != MANIFEST)


def snapshot(secret_dir):
    """Everything a re-run must not change: every entry's metadata and content hash."""
    def entry(path):
        info = os.lstat(path)
        return (info.st_ino, info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns, sha256_file(path))

    directory = os.lstat(secret_dir)
    return {
        ".": (directory.st_mode, directory.st_mtime_ns),
        **{name: entry(pathlib.Path(secret_dir) / name) for name in os.listdir(secret_dir)},
    }


def read_manifest(secret_dir):
    return json.loads((pathlib.Path(secret_dir) / MANIFEST).read_text())


def assert_manifest_matches(secret_dir, mode, names, known_hashes=None):
    """The manifest lists exactly `names` at full size, with each file's real SHA-256
    (taken from `known_hashes` when given, to avoid re-reading huge directories)."""
    manifest = read_manifest(secret_dir)
    assert manifest["format_version"] == 1
    assert manifest["mode"] == mode
    assert manifest["tool_version"].startswith("cryptoserver ")
    assert manifest["created"].endswith("Z")
    assert [entry["name"] for entry in manifest["files"]] == list(names)
    for entry in manifest["files"]:
        expected_size = 32 if mode == "MODE0" else FILE_LEN
        assert entry["size"] == expected_size, entry
        path = pathlib.Path(secret_dir) / entry["name"]
        expected = (known_hashes or {}).get(entry["name"]) or sha256_file(path)
        assert entry["sha256"] == expected, entry["name"]


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


def unmount(mountpoint):
    for _ in range(50):
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@contextlib.contextmanager
def loop_ext4(tmp_path, size, inodes):
    """An ext4 filesystem of `size` bytes and `inodes` inodes on a sparse image file,
    loop-mounted: only what is written to it takes real disk space, so it can be as
    large as MODE32 needs."""
    image = tmp_path / "filesystem.img"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as file:
        file.truncate(size)
    try:
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(inodes), "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)],
            check=True,
            capture_output=True,
        )
        # noinit_itable: no background zeroing of inode tables, which would fill the image.
        subprocess.run(["mount", "-o", "loop,noinit_itable", str(image), str(mountpoint)], check=True, capture_output=True)
        try:
            yield mountpoint
        finally:
            unmount(mountpoint)
    finally:
        image.unlink()


@contextlib.contextmanager
def tmpfs(tmp_path, size):
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], check=True, capture_output=True)
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


def available_bytes(path):
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
