"""MODE32 and MODE32X under faults: a key file deleted, made unreadable or failing
with a real I/O error, and file descriptors running out. The affected requests
get 503 and never a wrong MAC, /readyz turns 503, other requests keep working,
and the server recovers by itself once the fault is gone. In MODE32X the broken
file holds one of the message's 8 probes."""

import concurrent.futures
import contextlib
import itertools
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import time

import pytest
import requests

import reference
from conftest import ready_within, running_server, write_tokens


MODES = ["MODE32", "MODE32X"]


def files_of(mode, message):
    """The numbers of the files a message's MAC reads: 1 in MODE32, 8 in MODE32X."""
    return [index >> 16 for index in reference.key_indices(mode, message)]


def message_reading(mode, wanted, every=False):
    """A message one of whose files (with `every`: each of them) satisfies `wanted(file_index)`."""
    for number in itertools.count():
        message = f"message-{number}".encode()
        if (all if every else any)(map(wanted, files_of(mode, message))):
            return message


def kept(file):
    return file < 0x1000


def high(file):
    return file > 0xF000


# Low file numbers stay open for the server's lifetime; high ones may be opened
# per read when RLIMIT_NOFILE is below 65,536 (as on these machines).
KEPT = {mode: message_reading(mode, kept) for mode in MODES}
HIGH = {mode: message_reading(mode, high) for mode in MODES}
# Reads none of the files the tests break.
OTHER = {mode: message_reading(mode, lambda file: not kept(file) and not high(file), every=True) for mode in MODES}


def file_of(mode, message, wanted):
    """The name of the file to break for `message`: its MODE32 key file, or in
    MODE32X the first of its probes' files for which `wanted` holds."""
    return f"{next(file for file in files_of(mode, message) if wanted(file)):04x}"


@pytest.fixture(params=["io-uring", "threads"])
def key_reads(request):
    """Every fault is tried with both ways of reading keys."""
    return {"CRYPTOSERVER_KEY_READS": request.param}


@pytest.fixture(params=MODES)
def mode(request):
    """Every fault is tried in both modes that read keys from disk."""
    return request.param


@pytest.fixture(scope="module")
def mode32(tmp_path_factory):
    """One directory for the module (65,536 files take seconds to make), with keys
    planted where either mode reads them: MODE32 and MODE32X use the same files.
    Each test puts back what it broke."""
    secret_dir = tmp_path_factory.mktemp("faults") / "secrets"
    secret_dir.mkdir(mode=0o700)
    reference.write_sparse_mode32(secret_dir, reference.random_keys_for([*KEPT.values(), *HIGH.values(), *OTHER.values()]))
    return secret_dir


def status_and_mac(server, message):
    response = requests.post(f"{server.url}/hmac", data=message, timeout=10)
    return response.status_code, response.content


def assert_serves(server, mode, secret_dir, *messages):
    for message in messages:
        assert status_and_mac(server, message) == (200, reference.mac(mode, secret_dir, message))


def assert_fails_closed(server, mode, message):
    status, body = status_and_mac(server, message)
    assert status == 503, body
    assert b"error" in body
    # A batch holding the message fails whole: no MAC of its other messages either.
    batch = b"".join(struct.pack(">I", len(m)) + m for m in [OTHER[mode], message, OTHER[mode]])
    response = requests.post(f"{server.url}/hmac/batch", data=batch, timeout=10)
    assert response.status_code == 503 and b"error" in response.content
    assert requests.get(f"{server.url}/readyz").status_code == 503


WHERE = pytest.mark.parametrize("messages, wanted", [(KEPT, kept), (HIGH, high)], ids=["kept-open", "opened-per-read"])


@WHERE
def test_deleted_file_then_restored(tmp_path, key_reads, mode, mode32, messages, wanted):
    message = messages[mode]
    path = mode32 / file_of(mode, message, wanted)
    saved = path.read_bytes()
    with running_server(tmp_path, mode, mode32, key_reads) as server, restored(path, saved):
        assert_serves(server, mode, mode32, message)
        path.unlink()
        assert_fails_closed(server, mode, message)
        assert_serves(server, mode, mode32, OTHER[mode])
        path.write_bytes(saved)
        assert ready_within(server.url)
        assert_serves(server, mode, mode32, message)
        metrics = requests.get(f"{server.url}/metrics").text
        assert "cryptoserver_key_read_errors_total 0" not in metrics


@WHERE
def test_unreadable_file_then_readable_again(tmp_path, key_reads, mode, mode32, messages, wanted):
    message = messages[mode]
    path = mode32 / file_of(mode, message, wanted)
    with running_server(tmp_path, mode, mode32, key_reads) as server, restored(path, path.read_bytes()):
        assert_serves(server, mode, mode32, message)
        os.chmod(path, 0)
        assert_fails_closed(server, mode, message)
        assert_serves(server, mode, mode32, OTHER[mode])
        os.chmod(path, 0o400)
        assert ready_within(server.url)
        assert_serves(server, mode, mode32, message)


def test_readiness_asked_without_a_token_probes_a_failing_file_at_most_once_a_second(tmp_path, mode32):
    """/readyz needs no token, so whoever reaches the port may ask it as often as
    they like: while a file fails, it is read again at most once a second
    whatever the number of callers (each failed probe is a key-read error)."""
    mode, message = "MODE32", KEPT["MODE32"]
    path = mode32 / file_of(mode, message, kept)
    auth = {"Authorization": "Bearer token-one"}
    env = {"CRYPTOSERVER_TOKENS_FILE": str(write_tokens(tmp_path, "token-one"))}

    def read_errors():
        metrics = requests.get(f"{server.url}/metrics", headers=auth, timeout=10).text
        return int(re.search(r"^cryptoserver_key_read_errors_total (\d+)$", metrics, re.M).group(1))

    def readyz(_):
        return requests.get(f"{server.url}/readyz", timeout=10).status_code

    with running_server(tmp_path, mode, mode32, env) as server, restored(path, path.read_bytes()):
        os.chmod(path, 0)
        assert requests.post(f"{server.url}/hmac", data=message, headers=auth, timeout=10).status_code == 503
        before, started = read_errors(), time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(readyz, range(400)))
        elapsed = time.monotonic() - started
        probes = read_errors() - before
        assert statuses == [503] * 400
        assert 1 <= probes <= int(elapsed) + 1, f"{probes} probes in {elapsed:.1f} s"
        os.chmod(path, 0o400)
        assert ready_within(server.url)


@contextlib.contextmanager
def restored(path, content):
    """Puts `path` back as a regular 0400 file holding `content`, whatever the test did."""
    try:
        yield
    finally:
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_bytes(content)
        os.chmod(path, 0o400)


def run(*command):
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def failing_disk(tmp_path):
    """A file on its own loop-mounted filesystem whose device can be made to fail
    with EIO (by shrinking the backing image) and then be repaired."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup to make a real I/O error")
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with open(image, "wb") as file:
        file.truncate(16 << 20)
    run("mkfs.ext4", "-q", str(image))
    device = run("losetup", "--find", "--show", str(image))
    try:
        run("mount", "-o", "noatime", device, str(mount))
        yield image, mount, device
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        subprocess.run(["losetup", "-d", device], capture_output=True)


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_io_error_then_repaired(tmp_path, key_reads, mode, mode32, failing_disk):
    image, mount, device = failing_disk
    message = KEPT[mode]
    name = file_of(mode, message, kept)
    saved = (mode32 / name).read_bytes()
    shutil.copyfile(mode32 / name, mount / name)
    os.sync()
    (mode32 / name).unlink()
    (mode32 / name).symlink_to(mount / name)
    backup = tmp_path / "disk.backup"
    with restored(mode32 / name, saved), running_server(tmp_path, mode, mode32, key_reads) as server:
        assert_serves(server, mode, mode32, message)
        shutil.copyfile(image, backup)
        evict(mount / name)
        os.truncate(image, 0)
        run("losetup", "-c", device)
        assert_fails_closed(server, mode, message)
        assert_serves(server, mode, mode32, OTHER[mode])
        with open(backup, "rb") as source, open(image, "r+b") as target:
            shutil.copyfileobj(source, target)
        run("losetup", "-c", device)
        evict(mount / name)
        assert ready_within(server.url)
        assert_serves(server, mode, mode32, message)


def connection_limits(server):
    """(max, per client) as the server logged them at startup."""
    line = next(line for line in server.log().splitlines() if "connection limits" in line)
    return tuple(int(re.search(rf"{name}=(\d+)", line).group(1)) for name in ["max_connections", "max_connections_per_client"])


def hold_connections(server, source, count):
    """Opens `count` connections from `source`, stopping at the first that the
    server does not take off its queue in time (a dropped SYN is resent after a second)."""
    held = []
    for _ in range(count):
        try:
            held.append(socket.create_connection(server.address, timeout=5, source_address=(source, 0)))
        except OSError:
            break
    return held


def messages_in_one_file():
    """A MODE32 file, and a message whose key is in its first quarter and one
    whose key is in its last."""
    first, last = {}, {}
    for number in itertools.count():
        message = f"region-{number}".encode()
        [index] = reference.key_indices("MODE32", message)
        file, slot = index >> 16, index & 0xFFFF
        if slot < 0x4000:
            first.setdefault(file, message)
        elif slot >= 0xC000:
            last.setdefault(file, message)
        if file in first and file in last:
            return file, first[file], last[file]


def first_block(path):
    """Where `path`'s data starts on its device, in bytes (its one extent)."""
    extents = run("filefrag", "-v", "-b4096", str(path))
    return int(re.search(r"^\s*0:\s+0\.\.\s*\d+:\s+(\d+)\.\.", extents, re.MULTILINE).group(1)) * 4096


def test_a_file_with_a_bad_region_is_not_ready_until_it_reads_whole(tmp_path, mode32, failing_disk):
    """The second half of a key file fails with EIO while its first half reads:
    keys there are served, yet /readyz stays 503 until the whole file reads again,
    and the failures are logged as one line that names no file."""
    image, mount, device = failing_disk
    file, good, bad = messages_in_one_file()
    name = f"{file:04x}"
    saved = (mode32 / name).read_bytes()
    shutil.copyfile(mode32 / name, mount / name)
    os.sync()
    cut = first_block(mount / name) + reference.FILE_LEN // 2
    (mode32 / name).unlink()
    (mode32 / name).symlink_to(mount / name)
    backup = tmp_path / "disk.backup"
    with restored(mode32 / name, saved), running_server(tmp_path, "MODE32", mode32, {"RUST_LOG": "error"}) as server:
        assert_serves(server, "MODE32", mode32, good, bad)
        shutil.copyfile(image, backup)
        evict(mount / name)
        os.truncate(image, cut)
        run("losetup", "-c", device)
        for _ in range(20):
            assert status_and_mac(server, bad)[0] == 503
        assert_serves(server, "MODE32", mode32, good)
        time.sleep(1.1)
        assert requests.get(f"{server.url}/readyz").status_code == 503, "a file with a bad region reported ready"
        log = server.log()
        assert len([line for line in log.splitlines() if "key reads failing" in line]) == 1, log
        assert f"/{name}" not in log and str(mode32) not in log, log
        with open(backup, "rb") as source, open(image, "r+b") as target:
            shutil.copyfileobj(source, target)
        run("losetup", "-c", device)
        evict(mount / name)
        assert ready_within(server.url)
        assert_serves(server, "MODE32", mode32, good, bad)


def test_held_connections_cannot_exhaust_the_descriptors(tmp_path, key_reads, mode, mode32):
    """With a low RLIMIT_NOFILE most key reads open their file: connections
    up to and past every limit must leave other clients, and the key reads,
    the descriptors they need."""

    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    # Idle connections stay open for the whole test, as if kept alive by requests.
    env = {**key_reads, "RUST_LOG": "info", "CRYPTOSERVER_HEADER_TIMEOUT": "120"}
    high_message = HIGH[mode]
    with running_server(tmp_path, mode, mode32, env, preexec_fn=low_fd_limit) as server:
        max_connections, per_client = connection_limits(server)
        # Per client: a quarter of the connections, or a sixteenth of the default 1,024 requests at once.
        assert 100 < max_connections < 1024 and per_client == min(max_connections // 4, 1024 // 16)
        held = []
        try:
            with requests.Session() as other:
                assert_serves(server, mode, mode32, high_message)
                # One client holds more connections than there are descriptors.
                held += hold_connections(server, "127.0.0.2", 1100)
                assert len(held) == 1100, "the server stopped accepting connections"
                time.sleep(0.5)
                response = other.post(f"{server.url}/hmac", data=high_message, timeout=10)
                assert response.content == reference.mac(mode, mode32, high_message)
                # Many clients fill the connection limit: the open connection's
                # key reads still find a descriptor.
                for source in range(3, 3 + max_connections // per_client + 1):
                    held += hold_connections(server, f"127.0.0.{source}", per_client)
                time.sleep(0.5)
                for message in [high_message, OTHER[mode]]:
                    response = other.post(f"{server.url}/hmac", data=message, timeout=10)
                    assert response.content == reference.mac(mode, mode32, message)
                metrics = other.get(f"{server.url}/metrics", timeout=10).text
                refused = int(re.search(r"^cryptoserver_connections_refused_total (\d+)$", metrics, re.M).group(1))
                assert refused >= 1100 - per_client
                assert f"cryptoserver_open_connections {max_connections}" in metrics
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.5)
        assert_serves(server, mode, mode32, high_message, OTHER[mode])
        assert requests.get(f"{server.url}/readyz").status_code == 200
        assert "out of file descriptors" not in server.log()
