"""Helpers shared by every Python test suite: where the built binaries are, free
loopback ports, and a real cryptoserver process to talk to."""

import contextlib
import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import socket
import struct
import subprocess
import time

import pytest
import requests

import reference

REPO = pathlib.Path(__file__).resolve().parent.parent


def binary(name):
    """Path of a binary built by `cargo build --workspace --bins` (what `cargo xtask ci` runs)."""
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = target / os.environ.get("CRYPTOSERVER_PROFILE", "debug") / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `cargo build --workspace --bins` (or run `cargo xtask ci`)")
    return path


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def program(name, package):
    """Path of the program `name`; the test fails without it, as `cargo xtask ci` installs it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `cargo xtask ci` installs Debian's {package} package (or: apt-get install {package})")
    return path


def token_digest(token):
    """What a clients file holds for `token`: its SHA-256 in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def write_tokens(directory, *tokens):
    """A tokens file in `directory` allowing `tokens` (it holds their SHA-256 digests)."""
    path = directory / "tokens"
    path.write_text("# allowed clients\n" + "".join(token_digest(t) + "\n" for t in tokens))
    return path


def ready_within(url, seconds=5, **kwargs):
    """Whether `GET /readyz` answers 200 within `seconds`: a server probes its
    failing key files again at most once a second."""
    deadline = time.monotonic() + seconds
    while requests.get(f"{url}/readyz", timeout=5, **kwargs).status_code != 200:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def cpu_seconds(pid):
    """CPU time (user and system) the process `pid` has used so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forbid_io_uring():
    """A `preexec_fn` that installs a seccomp filter making io_uring_setup fail
    with EPERM, as Docker's default profile does: how a host without io_uring
    looks to the server. x86-64 only (the syscall number)."""
    if platform.machine() != "x86_64":
        pytest.skip("the seccomp filter is written for x86-64")
    audit_arch_x86_64, io_uring_setup = 0xC000003E, 425
    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    load_word, jump_if_equal, ret = 0x20, 0x15, 0x06
    program = [
        (load_word, 0, 0, 4),  # seccomp_data.arch
        (jump_if_equal, 1, 0, audit_arch_x86_64),
        (ret, 0, 0, allow),
        (load_word, 0, 0, 0),  # seccomp_data.nr
        (jump_if_equal, 0, 1, io_uring_setup),
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
    ]
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    prog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0 or libc.prctl(
        pr_set_seccomp, seccomp_mode_filter, ctypes.c_char_p(prog), 0, 0
    ) != 0:
        raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")


class Server:
    def __init__(self, process, url, log_path):
        self.process = process
        self.url = url
        self.log_path = log_path

    def log(self):
        return self.log_path.read_text(errors="replace")

    @property
    def address(self):
        """(host, port) for raw sockets."""
        host, port = self.url.split("://")[1].split(":")
        return host, int(port)


@contextlib.contextmanager
def server_over_random_secrets(tmp_path_factory, mode, name):
    """A server over fresh random secrets of `mode` (reference.write_random_secrets),
    for a module's tests to share; `server.secret_dir` is the directory."""
    secret_dir = reference.write_random_secrets(mode, tmp_path_factory.mktemp(name) / "secrets")
    with running_server(tmp_path_factory.mktemp(f"{name}-log"), mode, secret_dir) as server:
        server.secret_dir = secret_dir
        yield server


@contextlib.contextmanager
def running_server(tmp_path, mode, secret_dir, extra_env=None, args=(), startup_timeout=30, https_ca=None, client_cert=None, preexec_fn=None, bind=None):
    """Starts cryptoserver on a free loopback port (or at `bind`, a loopback
    (address, port)), waits until /healthz answers, and stops it (SIGTERM, then
    SIGKILL) afterwards. With `https_ca` (a CA bundle path) the server is expected
    to speak HTTPS for the name localhost; `client_cert` is the (cert, key) pair to
    present when it requires one."""
    host, port = bind or ("127.0.0.1", free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSERVER_")}
    env.update(
        CRYPTOSERVER_MODE=mode,
        CRYPTOSERVER_SECRETDIR=str(secret_dir),
        CRYPTOSERVER_BIND=f"{host}:{port}",
    )
    env.update(extra_env or {})
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary("cryptoserver"), *args], env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
        )
    url = f"https://localhost:{port}" if https_ca else f"http://{host}:{port}"
    server = Server(process, url, log_path)
    try:
        wait_until_ready(
            process,
            "cryptoserver",
            lambda: requests.get(f"{url}/healthz", timeout=1, verify=https_ca or True, cert=client_cert).status_code
            == 200,
            startup_timeout,
            server.log,
        )
        yield server
    finally:
        stop(process, 15)


def wait_until_ready(process, name, ready, seconds, log, interval=0.05):
    """Returns once `ready()` is true (a refused connection counts as not yet); fails
    the test, with `log()`, when `process` exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode} at startup:\n{log()}")
        try:
            if ready():
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{name} was not ready within {seconds} s:\n{log()}")
        time.sleep(interval)


def stop(process, seconds):
    """SIGTERM, then SIGKILL if `process` is still running after `seconds`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
