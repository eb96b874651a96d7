"""The sealed image booted in QEMU, as EC2 boots it (docs/image.md): the image of
`cargo xtask image` on an NVMe root disk (a copy-on-write overlay per instance), the
secrets volume as a second NVMe disk with an EBS-style volume-id serial, an optional
instance-store disk, the user data Terraform renders on a NoCloud seed, the serial
console logged to a file (and open for typing), and the service port and port 22
forwarded to 127.0.0.1 only. Software emulation (TCG): one VM takes both cores."""

import contextlib
import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import REPO, free_port
from infra_tools import TERRAFORM, terraform_for_fmt

needs_vm = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("qemu-system-x86_64") or not os.path.exists("/dev/loop-control"),
    reason="needs root, loop devices and qemu-system-x86_64 (`cargo xtask ci` installs it; CI runs as root)",
)

# A first boot under TCG takes 40-90 s on an idle 2-core machine; generous bounds
# keep a busy machine from failing a boot that is only slow.
BOOT_SECONDS = 600
SERVICE_PORT = 8080
READY_PREFIX = "cryptoserver-secrets-setup: ready "
ERROR_PREFIX = "cryptoserver-secrets-setup: error: "


def build_image():
    """The path of the image `cargo xtask image` builds (cached by its inputs)."""
    result = subprocess.run(["cargo", "xtask", "image"], cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


CLIENT_OPTIONAL_ATTRIBUTES = ("namespace", "routes", "rate")


def rendered_user_data(tmp_path, *, mode, settings, token_sha256_digests=(), tls_server_name=None, hot_copy=False,
                       clients=(), clients_serial=0, clients_signer=None, output="user_data"):
    """The user data terraform/modules/user-data renders for these inputs (or another
    of its locals, `output`), rendered by Terraform itself: the module's locals, with
    the instance-type data source (which needs the AWS provider) and the variables'
    validations (which Terraform 1.0 cannot read, and which change no value) left out.
    Terraform 1.0 has no optional() attributes either: `clients` is typed `any` there,
    each client given every attribute, null where left out, as the type would make it."""
    module = TERRAFORM / "modules" / "user-data"
    tmp_path.mkdir(parents=True, exist_ok=True)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="user-data-module-", dir=tmp_path))
    main = (module / "main.tf").read_text()
    main, removed = re.subn(r'\ndata "aws_ec2_instance_type" "hot_copy" \{.*?\n\}\n', "\n", main, flags=re.DOTALL)
    assert removed == 1, "the user-data module's instance-type data source moved: update rendered_user_data"
    (scratch / "main.tf").write_text(main)
    variables = re.sub(r"(?m)^  validation \{.*?\n  \}\n", "", (module / "variables.tf").read_text(), flags=re.DOTALL)
    variables, retyped = re.subn(r'(?ms)(^variable "clients" \{\n  type = ).*?^  \}\)\)\n', r"\1any\n", variables)
    assert retyped == 1, "the user-data module's clients type moved: update rendered_user_data"
    complete = [{**dict.fromkeys(CLIENT_OPTIONAL_ATTRIBUTES), **client} for client in clients]
    for client in complete:
        if client["rate"] is not None:
            client["rate"] = {"burst": None, **client["rate"]}
    (scratch / "variables.tf").write_text(variables)
    (scratch / "terraform.tfvars.json").write_text(json.dumps({
        "mode": mode,
        "settings": settings,
        "token_sha256_digests": list(token_sha256_digests),
        "tls_server_name": tls_server_name,
        "hot_copy": hot_copy,
        "instance_type": "m7i.large",
        "clients": complete,
        "clients_serial": clients_serial,
        "clients_signer": clients_signer,
    }))
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
    result = subprocess.run([terraform_for_fmt(), "console"], input=f"jsonencode(local.{output})\n", cwd=scratch,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(json.loads(result.stdout.strip()))


def origin_settings(volume_id, verify="always", restored=False):
    """The settings terraform/main.tf gives the user-data module (no metrics port, IPv4;
    `restored`: data_volume_snapshot_id is set)."""
    settings = {
        "CRYPTOSERVER_BIND": f"0.0.0.0:{SERVICE_PORT}",
        "CRYPTOSERVER_SECRETS_VOLUME_ID": volume_id,
        "CRYPTOSERVER_SECRETS_VERIFY": verify,
    }
    if restored:
        settings["CRYPTOSERVER_SECRETS_RESTORED"] = "yes"
    return settings


def replica_settings(expected_fingerprint):
    """The settings terraform/modules/pool/main.tf gives the user-data module."""
    return {
        "CRYPTOSERVER_BIND": f"0.0.0.0:{SERVICE_PORT}",
        "CRYPTOSERVER_SECRETS_ROLE": "replica",
        "CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT": expected_fingerprint,
    }


def seed_iso(directory, user_data, instance_id):
    """A NoCloud seed (a volume labelled cidata) carrying the user data as EC2 would."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "user-data").write_text(user_data)
    (directory / "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: {instance_id}\n")
    iso = directory / "seed.iso"
    subprocess.run(["genisoimage", "-quiet", "-output", iso, "-volid", "cidata", "-joliet", "-rock",
                    directory / "user-data", directory / "meta-data"], check=True, capture_output=True)
    return iso


def blank_disk(path, size=64 << 20):
    with open(path, "wb") as file:
        file.truncate(size)
    return path


def overlay(image, path):
    """A new instance's root disk: a copy-on-write overlay of the image."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", pathlib.Path(image).resolve(), path],
                   check=True)
    return path


def file_digest(path):
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


class Vm:
    """One QEMU process: a host with an NVMe root disk, NVMe data volumes given as
    (path, serial), an optional instance-store disk, a seed, and forwarded ports."""

    def __init__(self, workdir, root, volumes=(), instance_store=None, seed=None, throttle_bps=None):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root, self.volumes, self.instance_store, self.seed = root, list(volumes), instance_store, seed
        self.throttle_bps = throttle_bps
        self.console_path = self.workdir / f"console-{time.monotonic_ns()}.log"
        self.service_port, self.ssh_port = free_port(), free_port()
        self.process = None

    def command(self):
        serial_socket, qmp_socket = self.workdir / "serial.sock", self.workdir / "qmp.sock"
        args = [
            "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg,tb-size=256", "-smp", "2", "-m", "1024",
            "-nographic", "-nodefaults", "-no-user-config",
            "-chardev", f"socket,id=serial0,path={serial_socket},server=on,wait=off,logfile={self.console_path}",
            "-serial", "chardev:serial0",
            "-qmp", f"unix:{qmp_socket},server=on,wait=off",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.service_port}-:{SERVICE_PORT},"
                       f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-drive", f"file={self.root},format=qcow2,if=none,id=root",
            "-device", "nvme,drive=root,serial=vol0aaaaaaaaaaaaaaaa,bootindex=0",
        ]
        for number, (path, serial) in enumerate(self.volumes):
            throttle = f",throttling.bps-write={self.throttle_bps}" if self.throttle_bps else ""
            args += ["-drive", f"file={path},format=raw,if=none,id=volume{number},cache=none,aio=threads{throttle}",
                     "-device", f"nvme,drive=volume{number},serial={serial}"]
        if self.instance_store:
            args += ["-device", "virtio-scsi-pci,id=scsi0",
                     "-drive", f"file={self.instance_store},format=raw,if=none,id=ephemeral0",
                     "-device", "scsi-hd,drive=ephemeral0,bus=scsi0.0,serial=AWS1234567890ABCDEF"]
        if self.seed:
            args += ["-drive", f"file={self.seed},format=raw,if=virtio,readonly=on"]
        return args

    def start(self):
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=open(self.workdir / "qemu.stderr", "ab"))
        return self

    def console(self):
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_console(self, pattern, seconds=BOOT_SECONDS, since=0):
        """The first match of `pattern` in the console after offset `since`; fails on
        timeout or if QEMU exits."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + seconds
        while True:
            found = regex.search(self.console(), since)
            if found:
                return found
            if self.process.poll() is not None:
                pytest.fail(f"QEMU exited ({self.process.returncode}) before {pattern!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} on the console within {seconds} s:\n{self.tail()}")
            time.sleep(0.5)

    def ready_line(self, seconds=BOOT_SECONDS):
        """The fields of the first-boot script's ready line; fails on its error line."""
        found = self.wait_for_console(rf"(?m)^.*?({re.escape(READY_PREFIX)}[^\r\n]*|{re.escape(ERROR_PREFIX)}[^\r\n]*)", seconds)
        line = found.group(1)
        assert line.startswith(READY_PREFIX), f"the first-boot script failed:\n{self.tail()}"
        return dict(field.split("=", 1) for field in line.removeprefix(READY_PREFIX).split(" "))

    def tail(self, lines=60):
        return "\n".join(self.console().splitlines()[-lines:])

    def type_at_serial(self, data):
        """Sends keys to the serial console, as someone at EC2's serial console would."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.workdir / "serial.sock"))
            sock.sendall(data)
            time.sleep(0.2)

    def keys_until(self, pattern, keys, seconds=120):
        """Sends `keys` to the serial console every 0.2 s until `pattern` shows on it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + seconds
        while not regex.search(self.console()) and time.monotonic() < deadline and self.process.poll() is None:
            # The socket exists only once QEMU has set it up.
            with contextlib.suppress(OSError):
                self.type_at_serial(keys)

    def qmp(self, command):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.workdir / "qmp.sock"))
            reader = sock.makefile("rb")
            reader.readline()  # the greeting
            for message in ({"execute": "qmp_capabilities"}, {"execute": command}):
                sock.sendall(json.dumps(message).encode() + b"\n")
                reader.readline()

    def power_off(self, seconds=180):
        """An ACPI power button press, as `aws ec2 stop-instances` sends; waits for the guest to stop."""
        with contextlib.suppress(OSError):
            self.qmp("system_powerdown")
        try:
            self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the guest did not power off within {seconds} s:\n{self.tail()}")

    def kill(self):
        """Pulls the plug: the guest gets no chance to write anything."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def url(self, scheme="http"):
        return f"{scheme}://127.0.0.1:{self.service_port}"

    def ssh_banner(self, seconds=5):
        """What port 22 says first, if anything (QEMU accepts a forwarded connection even
        when nothing listens in the guest, then closes it)."""
        try:
            with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=seconds) as sock:
                sock.settimeout(seconds)
                return sock.recv(256)
        except OSError:
            return b""


@contextlib.contextmanager
def running(vm):
    """A started VM that is always stopped afterwards, by its own process id."""
    vm.start()
    try:
        yield vm
    finally:
        vm.kill()


@contextlib.contextmanager
def mounted_read_only(image, partition=None):
    """A disk image's filesystem (or its partition `partition`) mounted read-only on
    this machine without replaying its journal: nothing is written to the image."""
    loop = subprocess.run(["losetup", "--find", "--show", "--read-only", "--partscan", image],
                          capture_output=True, text=True, check=True).stdout.strip()
    mountpoint = pathlib.Path(f"{image}.mnt")
    mountpoint.mkdir(exist_ok=True)
    try:
        device = loop
        if partition:
            subprocess.run(["partx", "--add", loop], capture_output=True)
            device = f"{loop}p{partition}"
            deadline = time.monotonic() + 10
            while not os.path.exists(device) and time.monotonic() < deadline:
                time.sleep(0.1)
        subprocess.run(["mount", "-o", "ro,noload", device, mountpoint], check=True)
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", mountpoint], check=True)
    finally:
        subprocess.run(["losetup", "--detach", loop], capture_output=True)


def root_disk_as_raw(overlay_path):
    """The instance's root disk as a raw file, to read on this machine."""
    raw = pathlib.Path(f"{overlay_path}.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", overlay_path, raw], check=True)
    return raw


def secret_files(mountpoint):
    """{name: SHA-256} of every regular file on a secrets volume."""
    root = pathlib.Path(mountpoint)
    return {str(path.relative_to(root)): file_digest(path)
            for path in sorted(root.rglob("*")) if path.is_file() and "lost+found" not in path.parts}
