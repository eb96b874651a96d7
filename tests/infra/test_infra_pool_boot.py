"""The first-boot script's pool roles on loop devices: a replica over a copy of an
origin's volume (what a volume restored from its snapshot holds) serves only complete,
expected secrets and never writes a byte to it; the hot copy on a device standing in
for NVMe instance storage is made fresh, verified while it is copied, and served,
and a device whose controller says it is an EBS volume is never formatted."""

import contextlib
import json
import os
import pathlib
import pwd
import shutil
import subprocess

import pytest
import requests

from conftest import binary, running_server
from first_boot import (
    EBS_MODEL,
    INSTANCE_STORE_MODEL,
    OWNER,
    assert_refused,
    device_digest,
    fake_sysfs,
    loop_device,
    mount_options,
    mounted_cleanup,
    needs_loop_devices,
    probe,
    ready_line,
    run_setup,
)

pytestmark = needs_loop_devices

SERIAL = "vol0123456789abcdef0"


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """An origin's MODE16 volume with its TLS pair, as `cargo xtask snapshot` finds
    it (the ready line printed, mounted read-only), copied to an image file while
    mounted: the bytes a volume restored from its snapshot holds. Returns the
    image and the origin's ready line."""
    scratch = tmp_path_factory.mktemp("origin")
    secret_dir = scratch / "secrets"
    image = scratch / "snapshot.img"
    with loop_device(scratch) as device, mounted_cleanup(secret_dir):
        made = run_setup(secret_dir, device=device, CRYPTOSERVER_SECRETS_TLS_NAME="localhost")
        ready = ready_line(made)
        assert (ready["role"], ready["verified"], ready["mount"]) == ("origin", "yes", "ro")
        # As EBS snapshots it: the device's blocks, under the read-only mount, past any cache.
        subprocess.run(["dd", f"if={device}", f"of={image}", "bs=4M", "iflag=direct", "status=none"], check=True)
    return image, ready


@contextlib.contextmanager
def restored(origin, tmp_path, change=None):
    """A loop device over a fresh copy of the origin's volume; `change(mountpoint)`
    first alters the copy (mounted read-write for it, then unmounted)."""
    image, _ = origin
    copy = tmp_path / "restored.img"
    shutil.copyfile(image, copy)
    with loop_device(tmp_path, image=copy) as device:
        if change:
            edit = tmp_path / "edit"
            edit.mkdir()
            subprocess.run(["mount", device, edit], check=True)
            try:
                change(edit)
            finally:
                subprocess.run(["umount", edit], check=True)
        yield device


def run_replica(secret_dir, origin, **settings):
    _, ready = origin
    settings.setdefault("CRYPTOSERVER_SECRETS_ROLE", "replica")
    settings.setdefault("CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT", ready["fingerprint"])
    return run_setup(secret_dir, **settings)


def hot_copy_settings(tmp_path, devices):
    """Settings for a hot copy at tmp_path/hot, devices looked up in a fake sysfs."""
    return {
        "CRYPTOSERVER_SECRETS_HOT_COPY": "instance-store",
        "CRYPTOSERVER_SECRETS_HOT_DIR": tmp_path / "hot",
        "CRYPTOSERVER_SECRETS_SYSFS": fake_sysfs(tmp_path / "sysfs", devices),
    }


def served_dir(tmp_path, secret_dir):
    """The secrets directory cryptoserver.service would get: the env file's, unless
    the script wrote CRYPTOSERVER_SECRETDIR to the runtime env file read after it."""
    runtime_env = tmp_path / "run" / "secrets.env"
    if not runtime_env.exists():
        return secret_dir
    settings = dict(line.split("=", 1) for line in runtime_env.read_text().splitlines() if not line.startswith("#"))
    assert list(settings) == ["CRYPTOSERVER_SECRETDIR"], settings
    return pathlib.Path(settings["CRYPTOSERVER_SECRETDIR"])


def assert_serves(tmp_path, secret_dir, fingerprint, https=False):
    """The server, started as its unit would be, answers ready with this fingerprint."""
    served = served_dir(tmp_path, secret_dir)
    tls = {}
    if https:
        tls = {"CRYPTOSERVER_TLS_CERT": str(secret_dir / "tls/cert.pem"), "CRYPTOSERVER_TLS_KEY": str(secret_dir / "tls/key.pem")}
    ca = str(secret_dir / "tls/cert.pem") if https else None
    with running_server(tmp_path, "MODE16", served, extra_env=tls, https_ca=ca) as server:
        readyz = requests.get(f"{server.url}/readyz", timeout=5, verify=ca or True)
        assert readyz.status_code == 200
        assert readyz.json()["fingerprint"] == fingerprint
        assert len(requests.post(f"{server.url}/hmac", data=b"hello", timeout=5, verify=ca or True).content) == 32


def test_a_replica_serves_a_complete_restored_volume_and_writes_nothing(origin, tmp_path):
    _, origin_ready = origin
    secret_dir = tmp_path / "secrets"
    with restored(origin, tmp_path) as device, mounted_cleanup(secret_dir):
        before = device_digest(device)
        result = run_replica(secret_dir, origin, device=device, CRYPTOSERVER_SECRETS_TLS_NAME="localhost")
        assert ready_line(result) == {"role": "replica", "mode": "MODE16", "fingerprint": origin_ready["fingerprint"],
                                      "verified": "yes", "mount": "ro", "volume": "-", "hot-copy": "none"}
        assert "verifying every secret in" in result.stderr
        assert "generating" not in result.stderr and "making a TLS key" not in result.stderr
        assert "TLS certificate for localhost, SHA-256 fingerprint" in result.stderr
        assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(secret_dir)
        blockdev = subprocess.run(["blockdev", "--getro", device], capture_output=True, text=True, check=True)
        assert blockdev.stdout.strip() == "1", "the replica's device is not read-only"
        assert_serves(tmp_path, secret_dir, origin_ready["fingerprint"], https=True)
        # A re-run (the unit restarted) finds it mounted read-only and serves again.
        assert ready_line(run_replica(secret_dir, origin, device=device))["role"] == "replica"
        subprocess.run(["umount", secret_dir], check=True)
        assert device_digest(device) == before


def remove(name):
    return lambda mountpoint: (mountpoint / name).unlink()


def flip_a_byte(mountpoint):
    with open(mountpoint / "0000", "r+b") as secret:
        first = secret.read(1)
        secret.seek(0)
        secret.write(bytes([first[0] ^ 1]))


def give_to_stranger(mountpoint):
    os.chown(mountpoint / "0000", 4242, 4242)


@pytest.mark.parametrize(
    "change, settings, message",
    [
        (remove("0000"), {}, "0000: is missing"),
        (flip_a_byte, {}, "0000: content differs from its SHA-256 in the manifest"),
        (remove("cryptoserver.manifest"), {}, "cryptoserver.manifest is missing"),
        (None, {"CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT": "0" * 32}, f"not the expected {'0' * 32}"),
        (None, {"CRYPTOSERVER_MODE": "MODE0"}, "records MODE16 secrets, not MODE0"),
        (give_to_stranger, {}, "are not owned by nobody"),
        (lambda mountpoint: shutil.rmtree(mountpoint / "tls"), {"CRYPTOSERVER_SECRETS_TLS_NAME": "localhost"},
         "a replica never makes a TLS pair"),
    ],
    ids=["missing-file", "changed-file", "no-manifest", "wrong-fingerprint", "other-mode", "other-owner", "no-tls-pair"],
)
def test_a_replica_refuses_an_incomplete_or_unexpected_volume_and_writes_nothing(origin, tmp_path, change, settings, message):
    secret_dir = tmp_path / "secrets"
    with restored(origin, tmp_path, change) as device, mounted_cleanup(secret_dir):
        before = device_digest(device)
        result = run_replica(secret_dir, origin, device=device, **settings)
        assert_refused(result, message)
        if os.path.ismount(secret_dir):
            assert "ro" in mount_options(secret_dir)
            subprocess.run(["umount", secret_dir], check=True)
        assert device_digest(device) == before
        assert not (tmp_path / "run" / "secrets.env").exists()


def test_a_replica_refuses_a_blank_volume_without_formatting_it(origin, tmp_path):
    secret_dir = tmp_path / "secrets"
    with loop_device(tmp_path) as device, mounted_cleanup(secret_dir):
        before = device_digest(device)
        result = run_replica(secret_dir, origin, device=device)
        assert_refused(result, f"cannot mount {device} read-only at {secret_dir}")
        assert probe(device) == ""
        assert device_digest(device) == before


def test_a_replica_finds_its_volume_by_model_and_label(origin, tmp_path):
    """Neither a volume id nor a device: the one EBS device labelled cryptosecrets,
    whatever its name, with its id read from its NVMe serial."""
    _, origin_ready = origin
    secret_dir = tmp_path / "secrets"
    with (restored(origin, tmp_path) as volume, loop_device(tmp_path) as blank, loop_device(tmp_path) as other,
          mounted_cleanup(secret_dir)):
        # A blank EBS volume, and the restored one: only the labelled one is taken.
        settings = {"device": None, "CRYPTOSERVER_SECRETS_SYSFS": fake_sysfs(
            tmp_path / "sysfs", {blank: (EBS_MODEL, "vol0aaaaaaaaaaaaaaaa"), volume: (EBS_MODEL, SERIAL)})}
        found = run_replica(secret_dir, origin, **settings)
        ready = ready_line(found)
        assert (ready["fingerprint"], ready["volume"], ready["mount"]) == (origin_ready["fingerprint"], "vol-0123456789abcdef0", "ro")
        assert f"found the secrets volume restored from the snapshot: {volume}" in found.stderr
        subprocess.run(["umount", secret_dir], check=True)

        # The same device under a model that is not EBS's (instance storage) is not a candidate.
        not_ebs = {"device": None, "CRYPTOSERVER_SECRETS_WAIT": 0, "CRYPTOSERVER_SECRETS_SYSFS": fake_sysfs(
            tmp_path / "sysfs-instance-store", {volume: (INSTANCE_STORE_MODEL, None), blank: (EBS_MODEL, None)})}
        assert_refused(run_replica(secret_dir, origin, **not_ebs), "no EBS volume labelled cryptosecrets appeared within 0s")

        # Two labelled volumes: which one the snapshot made is not guessed.
        subprocess.run(["dd", f"if={volume}", f"of={other}", "bs=4M", "status=none"], check=True)
        two = {"device": None, "CRYPTOSERVER_SECRETS_SYSFS": fake_sysfs(
            tmp_path / "sysfs-two", {volume: (EBS_MODEL, SERIAL), other: (EBS_MODEL, None)})}
        assert_refused(run_replica(secret_dir, origin, **two), "more than one EBS volume carries the label cryptosecrets")
        assert not os.path.ismount(secret_dir)


def test_a_replica_makes_a_verified_hot_copy_and_the_server_reads_it(origin, tmp_path):
    _, origin_ready = origin
    secret_dir, hot_dir = tmp_path / "secrets", tmp_path / "hot"
    with (restored(origin, tmp_path) as volume, loop_device(tmp_path) as instance_store,
          mounted_cleanup(hot_dir, secret_dir)):
        ebs_before = device_digest(volume)
        settings = hot_copy_settings(tmp_path, {volume: (EBS_MODEL, SERIAL), instance_store: (INSTANCE_STORE_MODEL, None)})
        result = run_replica(secret_dir, origin, device=volume, CRYPTOSERVER_SECRETS_TLS_NAME="localhost", **settings)
        ready = ready_line(result)
        assert ready == {"role": "replica", "mode": "MODE16", "fingerprint": origin_ready["fingerprint"], "verified": "yes",
                         "mount": "ro", "volume": "vol-0123456789abcdef0", "hot-copy": str(hot_dir)}
        # The copy is the verification: the EBS volume is read once.
        assert "verifying every secret in" not in result.stderr
        assert f"copied to {hot_dir}" in result.stderr
        assert f"making a fresh filesystem on {instance_store} ({INSTANCE_STORE_MODEL})" in result.stderr

        assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(hot_dir)
        assert "LABEL=cryptohot" in probe(instance_store)
        owner = pwd.getpwnam(OWNER).pw_uid
        assert (os.stat(hot_dir).st_mode & 0o777, os.stat(hot_dir).st_uid) == (0o700, owner)
        copied = {path.name: (path.stat().st_mode & 0o777, path.stat().st_uid, path.read_bytes())
                  for path in hot_dir.iterdir() if path.name != "lost+found"}
        assert copied == {name: (0o400, owner, (secret_dir / name).read_bytes()) for name in ("0000", "cryptoserver.manifest")}
        assert served_dir(tmp_path, secret_dir) == hot_dir
        # TLS stays on the EBS volume; the secrets come from the hot copy.
        assert_serves(tmp_path, secret_dir, origin_ready["fingerprint"], https=True)

        # The next start makes it anew: blank at every boot by design.
        (tmp_path / "run" / "secrets.env").unlink()
        again = run_replica(secret_dir, origin, device=volume, **settings)
        assert ready_line(again)["hot-copy"] == str(hot_dir)
        assert served_dir(tmp_path, secret_dir) == hot_dir
        subprocess.run(["umount", secret_dir], check=True)
        assert device_digest(volume) == ebs_before


def test_an_origin_generates_then_serves_a_hot_copy(tmp_path):
    secret_dir, hot_dir = tmp_path / "secrets", tmp_path / "hot"
    with (loop_device(tmp_path) as volume, loop_device(tmp_path) as instance_store,
          mounted_cleanup(hot_dir, secret_dir)):
        settings = hot_copy_settings(tmp_path, {volume: (EBS_MODEL, SERIAL), instance_store: (INSTANCE_STORE_MODEL, None)})
        result = run_setup(secret_dir, device=volume, CRYPTOSERVER_SECRETS_VERIFY="after-generate", **settings)
        ready = ready_line(result)
        assert (ready["role"], ready["verified"], ready["mount"], ready["hot-copy"]) == ("origin", "yes", "ro", str(hot_dir))
        assert "not re-hashing the secrets in place: the hot copy verifies every file" in result.stderr
        assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(hot_dir)
        assert "ro" in mount_options(secret_dir)
        assert_serves(tmp_path, secret_dir, ready["fingerprint"])


@pytest.mark.parametrize("role", ["origin", "replica"])
def test_a_mismatch_planted_in_the_ebs_volume_fails_the_hot_copy_closed(origin, tmp_path, role):
    """Even an origin told not to re-hash (after-generate) checks every file it copies."""
    secret_dir, hot_dir = tmp_path / "secrets", tmp_path / "hot"
    with (restored(origin, tmp_path, flip_a_byte) as volume, loop_device(tmp_path) as instance_store,
          mounted_cleanup(hot_dir, secret_dir)):
        settings = hot_copy_settings(tmp_path, {volume: (EBS_MODEL, SERIAL), instance_store: (INSTANCE_STORE_MODEL, None)})
        result = run_replica(secret_dir, origin, device=volume, CRYPTOSERVER_SECRETS_ROLE=role,
                             CRYPTOSERVER_SECRETS_VERIFY="after-generate", **settings)
        assert_refused(result, f"the hot copy at {hot_dir} failed")
        assert f"{secret_dir}/0000: content differs from its SHA-256 in the manifest" in result.stderr
        assert not os.path.ismount(hot_dir), "a failed hot copy stays mounted"
        assert not (tmp_path / "run" / "secrets.env").exists(), "the server would be pointed at a failed copy"


def test_a_hot_copy_device_too_small_is_refused_unformatted(origin, tmp_path):
    secret_dir, hot_dir = tmp_path / "secrets", tmp_path / "hot"
    with (restored(origin, tmp_path) as volume, loop_device(tmp_path, size=1 << 20) as instance_store,
          mounted_cleanup(hot_dir, secret_dir)):
        before = device_digest(instance_store)
        settings = hot_copy_settings(tmp_path, {volume: (EBS_MODEL, SERIAL), instance_store: (INSTANCE_STORE_MODEL, None)})
        result = run_replica(secret_dir, origin, device=volume, **settings)
        assert_refused(result, f"no instance-store device can hold the MODE16 secrets (2097152 bytes): {instance_store}: 1048576 bytes")
        assert device_digest(instance_store) == before
        assert not os.path.ismount(hot_dir)


@pytest.mark.parametrize("mode", ["MODE32", "MODE32X"])
def test_a_hot_copy_device_is_sized_for_128_gib_in_the_big_modes(tmp_path, mode):
    """Sized from the mode before anything is formatted or read, so a manifest alone
    (the secrets directory the script is given, a plain one) stands for 128 GiB."""
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o700)
    files = [{"name": f"{index:04x}", "size": 2 << 20, "sha256": f"{index:064x}"} for index in range(65536)]
    manifest = {"format_version": 1, "mode": mode, "created": "2026-12-04T00:00:00Z", "tool_version": "test", "files": files}
    (secret_dir / "cryptoserver.manifest").write_text(json.dumps(manifest))
    owner = pwd.getpwnam(OWNER)
    for path in (secret_dir, secret_dir / "cryptoserver.manifest"):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    fingerprint = subprocess.run([binary("cryptoserver-secrets"), "fingerprint", "--dir", secret_dir],
                                 capture_output=True, text=True, check=True).stdout.strip()
    with loop_device(tmp_path) as instance_store:
        before = device_digest(instance_store)
        settings = hot_copy_settings(tmp_path, {instance_store: (INSTANCE_STORE_MODEL, None)})
        result = run_setup(secret_dir, mode=mode, CRYPTOSERVER_SECRETS_ROLE="replica",
                           CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT=fingerprint, **settings)
        assert_refused(result, f"no instance-store device can hold the {mode} secrets (137438953472 bytes)")
        assert device_digest(instance_store) == before


def test_a_device_reporting_itself_as_ebs_is_never_formatted_for_the_hot_copy(origin, tmp_path):
    """The secrets volume and a blank spare volume, both EBS by their controller's
    model, are all the host has: no hot copy, and neither device changes. Nor is the
    secrets volume taken when a faulty sysfs calls it instance storage."""
    secret_dir = tmp_path / "secrets"
    with (restored(origin, tmp_path) as volume, loop_device(tmp_path) as spare, mounted_cleanup(secret_dir)):
        before = {device: device_digest(device) for device in (volume, spare)}
        settings = hot_copy_settings(tmp_path, {volume: (EBS_MODEL, SERIAL), spare: (EBS_MODEL, "vol0bbbbbbbbbbbbbbbb")})
        result = run_replica(secret_dir, origin, device=volume, **settings)
        assert_refused(result, f'no block device reports the model "{INSTANCE_STORE_MODEL}"')
        assert f"{os.path.basename(spare)} ({EBS_MODEL})" in result.stderr
        subprocess.run(["umount", secret_dir], check=True)

        offered = hot_copy_settings(tmp_path / "offered", {volume: (INSTANCE_STORE_MODEL, None)})
        result = run_replica(secret_dir, origin, device=volume, **offered)
        assert_refused(result, f"{volume} is the secrets volume itself, not instance storage; it is never formatted")
        subprocess.run(["umount", secret_dir], check=True)
        assert {device: device_digest(device) for device in (volume, spare)} == before
