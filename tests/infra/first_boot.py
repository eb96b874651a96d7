"""Helpers for the first-boot script's suites: running deploy/cryptoserver-secrets-setup.sh
as systemd would, loop devices standing in for EBS volumes and instance storage, a
fake sysfs naming them by model, and the script's ready line."""

import contextlib
import hashlib
import os
import pathlib
import shutil
import subprocess
import uuid

import pytest

from conftest import binary
from infra_tools import DEPLOY

SCRIPT = DEPLOY / "cryptoserver-secrets-setup.sh"
OWNER = "nobody"
EBS_MODEL = "Amazon Elastic Block Store"
INSTANCE_STORE_MODEL = "Amazon EC2 NVMe Instance Storage"

needs_loop_devices = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup") or not os.path.exists("/dev/loop-control"),
    reason="needs root and loop devices (CI runs as root)",
)


def run_setup(secret_dir, mode="MODE16", device="none", **settings):
    """Runs the script as systemd would: settings in the environment, the
    generator on PATH, nothing else. Devices are looked up by model in an empty
    fake sysfs unless a test gives one, so no test ever sees the machine's own
    disks, and the pointer to a hot copy goes beside `secret_dir`, not to /run."""
    scratch = pathlib.Path(secret_dir).parent
    (scratch / "no-devices").mkdir(exist_ok=True)
    env = {
        "PATH": f"{binary('cryptoserver-secrets').parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "CRYPTOSERVER_SECRETDIR": str(secret_dir),
        "CRYPTOSERVER_SECRETS_OWNER": OWNER,
        "CRYPTOSERVER_SECRETS_SYSFS": str(scratch / "no-devices"),
        "CRYPTOSERVER_SECRETS_RUNTIME_ENV": str(scratch / "run" / "secrets.env"),
    }
    if mode is not None:
        env["CRYPTOSERVER_MODE"] = mode
    if device is not None:
        env["CRYPTOSERVER_SECRETS_DEVICE"] = str(device)
    env.update({key: str(value) for key, value in settings.items()})
    return subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)


def ready_line(result):
    """The fields of the ready line, which must be the script's last line."""
    assert result.returncode == 0, result.stderr
    last = result.stderr.rstrip("\n").splitlines()[-1]
    prefix = "cryptoserver-secrets-setup: ready "
    assert last.startswith(prefix), result.stderr
    return dict(field.split("=", 1) for field in last.removeprefix(prefix).split(" "))


def assert_refused(result, message):
    """Failed, saying `message` in an error line, and never printed a ready line."""
    assert result.returncode != 0, result.stderr
    assert "cryptoserver-secrets-setup: error: " in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    assert "cryptoserver-secrets-setup: ready" not in result.stderr


def unmount(mountpoint):
    subprocess.run(["umount", mountpoint], check=True)


@contextlib.contextmanager
def loop_device(tmp_path, size=64 << 20, image=None):
    """A loop device over `image`, or over a new blank file of `size` bytes."""
    if image is None:
        image = tmp_path / f"volume-{uuid.uuid4().hex[:8]}.img"
        with open(image, "wb") as file:
            file.truncate(size)
    device = subprocess.run(["losetup", "--find", "--show", image], capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield device
    finally:
        # A replica's run makes its device read-only; the next user of this loop device must not inherit that.
        subprocess.run(["blockdev", "--setrw", device], capture_output=True)
        subprocess.run(["losetup", "--detach", device], capture_output=True)


@contextlib.contextmanager
def mounted_cleanup(*mountpoints):
    try:
        yield
    finally:
        for mountpoint in mountpoints:
            if os.path.ismount(mountpoint):
                unmount(mountpoint)


def mount_options(mountpoint):
    return set(subprocess.run(["findmnt", "--noheadings", "--output", "OPTIONS", "--mountpoint", mountpoint],
                              capture_output=True, text=True, check=True).stdout.strip().split(","))


def probe(device):
    return subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True).stdout


def device_digest(device):
    """SHA-256 of every byte of a block device: what `nothing was written` is checked against."""
    with open(device, "rb") as raw:
        return hashlib.file_digest(raw, "sha256").hexdigest()


def fake_sysfs(root, devices):
    """A sysfs tree naming block devices by their controller's model, as /sys/block
    does on EC2: {"/dev/loop3": (model, serial or None)}. Models and serials are
    padded with spaces, as NVMe reports them."""
    for device, (model, serial) in devices.items():
        info = pathlib.Path(root) / "block" / pathlib.Path(device).name / "device"
        info.mkdir(parents=True)
        (info / "model").write_text(f"{model:<40}\n")
        if serial:
            (info / "serial").write_text(f"{serial:<20}\n")
    return root
