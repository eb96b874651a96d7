"""MODE32 on a slow volume: an ext4 filesystem on a loop device whose reads the
server's blkio cgroup (v1) throttles to a few hundred per second, with the
keys' pages dropped from the page cache so every key read reaches the device.

- A flood of batches from one client must leave another client's `/hmac` its
  share of the volume: batches have at most CRYPTOSERVER_BATCH_READS (64 by
  default) key reads in flight, so a single request's read waits behind at most
  64 of theirs, 0.26 s at 250 reads/s. The stated bound, FLOOD_BOUND (2.5 s),
  leaves room for a loaded machine; without the budget the same flood queues
  thousands of reads, tens of seconds, in front of it.
- A key read slower than CRYPTOSERVER_KEY_READ_TIMEOUT fails its request with
  503, and its place under the limits is kept until the read has really stopped.
- /readyz's probe of a failing file is bounded by the same timeout.
"""

import contextlib
import http.client
import itertools
import os
import pathlib
import re
import shutil
import struct
import subprocess
import threading
import time

import pytest
import requests

import reference
from conftest import free_port, ready_within, running_server

BLKIO = pathlib.Path("/sys/fs/cgroup/blkio")
# Reads per second the volume serves the server: a slow, busy disk.
FLOOD_IOPS = 250
# What another client's /hmac may take during the flood: 64 batch reads and its
# own at FLOOD_IOPS take 0.26 s; the rest is room for a loaded 2-core machine.
FLOOD_BOUND = 2.5
FLOOD_CONNECTIONS = 32
FLOOD_FRAMES = 256
# Enough fresh keys that no flood batch finds its keys cached.
FLOOD_MESSAGES = 16384
SINGLE_MESSAGES = 40
SINGLE_SECONDS = 6
# The timeout test: reads so slow that a batch of 12 holds the volume for 3 s.
TIMEOUT_IOPS = 4
TIMEOUT_FRAMES = 12


def messages(label, count):
    return [f"{label}-{number}".encode() for number in range(count)]


FLOOD = messages("flood", FLOOD_MESSAGES)
SINGLES = messages("single", SINGLE_MESSAGES)
TIMEOUT_BATCH = messages("slow-batch", TIMEOUT_FRAMES)
TIMEOUT_SINGLE = messages("slow-single", 1)[0]
# The readiness test: keys in 12 files, which fail and are probed again.
PROBE_MESSAGES = messages("probe", 12)


def frames(batch):
    return b"".join(struct.pack(">I", len(m)) + m for m in batch)


def run(*command):
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A loop device holding an ext4 filesystem with a MODE32 directory whose
    keys are planted where the test messages read; yields (secret_dir, device)."""
    if os.geteuid() != 0 or not shutil.which("losetup") or not (BLKIO / "cgroup.procs").exists():
        pytest.skip("needs root, losetup and the cgroup v1 blkio controller")
    tmp = tmp_path_factory.mktemp("throttled")
    image, mount = tmp / "volume.img", tmp / "volume"
    mount.mkdir()
    with open(image, "wb") as file:
        file.truncate(512 << 20)
    # Every inode table written now: no background writes on the device later.
    run("mkfs.ext4", "-q", "-N", "70000", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image))
    device = run("losetup", "--find", "--show", str(image))
    try:
        run("mount", "-o", "noatime", device, str(mount))
        try:
            secret_dir = mount / "secrets"
            secret_dir.mkdir(mode=0o700)
            all_messages = [*FLOOD, *SINGLES, *TIMEOUT_BATCH, TIMEOUT_SINGLE, *PROBE_MESSAGES]
            keys = reference.random_keys_for(all_messages, ["MODE32"])
            # A probe reads a file's first key: on disk, not in a hole.
            keys.update({reference.key_index("MODE32", m) >> 16 << 16: os.urandom(32) for m in PROBE_MESSAGES})
            reference.write_sparse_mode32(secret_dir, keys)
            os.sync()
            yield secret_dir, device
        finally:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


def evict(secret_dir, batch):
    """Drops the pages of the files `batch` reads from the page cache (written
    back already), so their next reads reach the device."""
    for name in {f"{reference.key_index('MODE32', m) >> 16:04x}" for m in batch}:
        fd = os.open(secret_dir / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Throttle:
    """A blkio cgroup for the server, whose reads of `device` it limits."""

    def __init__(self, device):
        number = os.stat(device).st_rdev
        self.device = f"{os.major(number)}:{os.minor(number)}"
        self.path = BLKIO / f"cryptoserver-test-{os.getpid()}"

    def join(self):
        """A `preexec_fn`: the server starts in the cgroup, and so do all its threads."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def limit(self, reads_per_second):
        """Reads per second; 0 lifts the limit."""
        (self.path / "blkio.throttle.read_iops_device").write_text(f"{self.device} {reads_per_second}")

    def remove(self):
        """Once its processes have exited."""
        deadline = time.monotonic() + 30
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@contextlib.contextmanager
def throttled_server(tmp_path, volume, env):
    """A MODE32 server over `volume` in a throttle of its own. The limit is
    lifted before the server stops, so reads still queued finish at once."""
    secret_dir, device = volume
    throttle = Throttle(device)
    throttle.path.mkdir()
    try:
        metrics_port = free_port()
        env = {"CRYPTOSERVER_METRICS_BIND": f"127.0.0.1:{metrics_port}", **env}
        with running_server(tmp_path, "MODE32", secret_dir, env, preexec_fn=throttle.join) as server:
            server.metrics_port = metrics_port
            try:
                yield server, throttle
            finally:
                throttle.limit(0)
    finally:
        throttle.remove()


def post(address, path, body, timeout, source="127.0.0.1"):
    """(status, headers, body, seconds) of one POST on a fresh connection."""
    connection = http.client.HTTPConnection(*address, timeout=timeout, source_address=(source, 0))
    started = time.monotonic()
    try:
        connection.request("POST", path, body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read(), time.monotonic() - started
    finally:
        connection.close()


def metric(server, name):
    connection = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    found = re.search(rf"^{name} (\d+)$", text, re.M)
    return int(found.group(1)) if found else None


@pytest.mark.parametrize("key_reads", ["io-uring", "threads"])
def test_a_flood_of_batches_leaves_single_requests_their_share(tmp_path, volume, key_reads):
    secret_dir, _ = volume
    evict(secret_dir, [*FLOOD, *SINGLES])
    with throttled_server(tmp_path, volume, {"CRYPTOSERVER_KEY_READS": key_reads}) as (server, throttle):
        throttle.limit(FLOOD_IOPS)
        stop = threading.Event()
        batches = itertools.count()
        statuses = []

        def flood():
            # One client (127.0.0.2), many connections, each sending batches
            # of fresh messages back to back; a refused one is sent again.
            while not stop.is_set():
                start = next(batches) * FLOOD_FRAMES % FLOOD_MESSAGES
                try:
                    status, _, _, _ = post(server.address, "/hmac/batch", frames(FLOOD[start : start + FLOOD_FRAMES]), 60, "127.0.0.2")
                except OSError:
                    status = None
                statuses.append(status)
                if status == 503:
                    time.sleep(0.01)

        flooders = [threading.Thread(target=flood) for _ in range(FLOOD_CONNECTIONS)]
        for thread in flooders:
            thread.start()
        latencies = []
        try:
            time.sleep(1)
            ended = time.monotonic() + SINGLE_SECONDS
            for message in SINGLES:
                if time.monotonic() > ended:
                    break
                try:
                    status, _, mac, seconds = post(server.address, "/hmac", message, 2 * FLOOD_BOUND)
                except TimeoutError:
                    status, mac, seconds = None, None, 2 * FLOOD_BOUND
                latencies.append(seconds)
                assert status in (200, None), mac.decode(errors="replace")
                assert status is None or mac == reference.mac("MODE32", secret_dir, message)
                time.sleep(0.2)
        finally:
            stop.set()
            throttle.limit(0)
            for thread in flooders:
                thread.join(timeout=60)
        print(f"/hmac during the flood: {len(latencies)} requests, max {max(latencies):.3f} s, "
              f"median {sorted(latencies)[len(latencies) // 2]:.3f} s; flood: {statuses.count(200)} batches served, "
              f"{statuses.count(503)} refused")
        assert max(latencies) < FLOOD_BOUND, f"a single request waited {max(latencies):.2f}s behind the batches"
        assert len(latencies) >= 5
        assert statuses.count(200) >= 2, "the flood was not served at all"
        # Batches wait for reads in turn; those that waited past the key-read
        # timeout (or found the queue full) were refused, and only those.
        assert metric(server, "cryptoserver_batches_refused_total") == statuses.count(503)
        assert metric(server, "cryptoserver_batch_key_reads_in_flight") == 0


@pytest.mark.parametrize("key_reads", ["io-uring", "threads"])
def test_a_read_slower_than_the_timeout_fails_its_request_and_keeps_its_place(tmp_path, volume, key_reads):
    secret_dir, _ = volume
    evict(secret_dir, [*TIMEOUT_BATCH, TIMEOUT_SINGLE])
    env = {"CRYPTOSERVER_KEY_READ_TIMEOUT": "1", "CRYPTOSERVER_KEY_READS": key_reads}
    with throttled_server(tmp_path, volume, env) as (server, throttle):
        throttle.limit(TIMEOUT_IOPS)
        batch = {}
        sender = threading.Thread(target=lambda: batch.update(answer=post(server.address, "/hmac/batch", frames(TIMEOUT_BATCH), 30)))
        sender.start()
        time.sleep(0.2)
        status, headers, body, seconds = post(server.address, "/hmac", TIMEOUT_SINGLE, 30)
        sender.join(timeout=30)
        assert status == 503, f"{status} after {seconds:.2f}s, not 503"
        assert "CRYPTOSERVER_KEY_READ_TIMEOUT" in body.decode() and headers["retry-after"] == "1"
        assert 1 <= seconds < 3, seconds
        batch_status, _, batch_body, _ = batch["answer"]
        assert batch_status == 503
        assert b"CRYPTOSERVER_KEY_READ_TIMEOUT" in batch_body
        # Both answered; their reads are still queued on the device, and each
        # request's work still counts as one in flight.
        assert metric(server, "cryptoserver_in_flight_requests") == 2
        assert metric(server, "cryptoserver_batch_key_reads_in_flight") >= 1
        throttle.limit(0)
        deadline = time.monotonic() + 10
        while metric(server, "cryptoserver_in_flight_requests") or metric(server, "cryptoserver_batch_key_reads_in_flight"):
            assert time.monotonic() < deadline, "the reads that timed out never gave their places back"
            time.sleep(0.05)
        assert metric(server, "cryptoserver_key_read_timeouts_total") >= 2
        status, _, mac, _ = post(server.address, "/hmac", TIMEOUT_SINGLE, 10)
        assert (status, mac) == (200, reference.mac("MODE32", secret_dir, TIMEOUT_SINGLE))


@pytest.mark.parametrize("key_reads", ["io-uring", "threads"])
def test_readyz_answers_in_time_while_its_probe_waits_on_a_stalled_volume(tmp_path, volume, key_reads):
    """/readyz probes the failing files again, each read whole: with 12 of them
    restored but their pages evicted and the volume at 4 reads/s, the probe
    takes about 3 s. /readyz answers 503 within the key-read timeout instead of
    waiting for it, asking again meanwhile starts no second probe, and once it
    has read them all the server is ready again."""
    secret_dir, _ = volume
    files = [secret_dir / f"{reference.key_index('MODE32', m) >> 16:04x}" for m in PROBE_MESSAGES]
    assert len(set(files)) == len(files), "the probe messages' keys share a file"
    env = {"CRYPTOSERVER_KEY_READ_TIMEOUT": "1", "CRYPTOSERVER_KEY_READS": key_reads}
    with throttled_server(tmp_path, volume, env) as (server, throttle):
        for file, message in zip(files, PROBE_MESSAGES):
            file.chmod(0)
            try:
                assert post(server.address, "/hmac", message, 10)[0] == 503
            finally:
                file.chmod(0o400)
        evict(secret_dir, PROBE_MESSAGES)
        throttle.limit(TIMEOUT_IOPS)
        reads_before = metric(server, "cryptoserver_readyz_file_reads_total")
        answers = []
        started = time.monotonic()
        while time.monotonic() - started < 2:
            asked = time.monotonic()
            status = requests.get(f"{server.url}/readyz", timeout=10).status_code
            answers.append((status, round(time.monotonic() - asked, 2)))
            time.sleep(0.3)
        assert all(status == 503 for status, _ in answers), answers
        assert all(seconds < 1.8 for _, seconds in answers), answers
        assert ready_within(server.url, 10), "readiness did not come back once the probe had read every file"
        probe_reads = metric(server, "cryptoserver_readyz_file_reads_total") - reads_before
        assert probe_reads == len(PROBE_MESSAGES), f"{probe_reads} probe reads: more than one probe ran"
        for message in PROBE_MESSAGES[:2]:
            status, _, mac, _ = post(server.address, "/hmac", message, 10)
            assert (status, mac) == (200, reference.mac("MODE32", secret_dir, message))
