"""The first-boot script, deploy/cryptoserver-secrets-setup.sh, run for real with the
built `cryptoserver-secrets` on its PATH: against a plain directory, and against
loop devices standing in for the EBS volume (formatted only when blank, mounted
nosuid,nodev,noexec, left read-only, never formatted when it holds anything)."""

import contextlib
import hashlib
import os
import pathlib
import pwd
import shutil
import ssl
import subprocess
import uuid

import pytest
import requests

from conftest import running_server
from first_boot import OWNER, device_digest, loop_device, mount_options, mounted_cleanup, needs_loop_devices, probe, ready_line, run_setup, unmount


def snapshot(secret_dir):
    """What a re-run must not change: the directory's mode and owner, and each secret
    file's inode, metadata and bytes (an ext4 volume also holds its lost+found)."""
    directory = os.stat(secret_dir)
    files = {
        path.name: (path.stat().st_ino, path.stat().st_mode, path.stat().st_uid, path.stat().st_mtime_ns, path.read_bytes())
        for path in pathlib.Path(secret_dir).iterdir()
        if path.is_file()
    }
    return directory.st_mode, directory.st_uid, files


def assert_ready(result, secret_dir, mode):
    assert result.returncode == 0, result.stderr
    assert f"the {mode} secrets in {secret_dir} are ready" in result.stderr
    manifest = pathlib.Path(secret_dir) / "cryptoserver.manifest"
    assert f'"mode": "{mode}"' in manifest.read_text() or f'"mode":"{mode}"' in manifest.read_text()
    uid = pwd.getpwnam(OWNER).pw_uid
    assert os.stat(secret_dir).st_uid == uid
    assert os.stat(secret_dir).st_mode & 0o777 == 0o700


def test_plain_directory_generates_verifies_and_a_second_run_changes_nothing(tmp_path):
    secret_dir = tmp_path / "secrets"
    first = run_setup(secret_dir)
    assert_ready(first, secret_dir, "MODE16")
    assert "verifying every secret" in first.stderr
    ready = ready_line(first)
    assert ready == {"role": "origin", "mode": "MODE16", "fingerprint": ready["fingerprint"], "verified": "yes",
                     "mount": "none", "volume": "-", "hot-copy": "none"}
    assert f"secrets fingerprint {ready['fingerprint']}" in first.stderr, "not the fingerprint verify printed"
    assert (secret_dir / "0000").stat().st_size == 2 * 1024 * 1024
    before = snapshot(secret_dir)

    second = run_setup(secret_dir)
    assert_ready(second, secret_dir, "MODE16")
    assert "nothing to do" in second.stderr
    assert snapshot(secret_dir) == before
    assert ready_line(second) == ready


def test_origin_checks_the_expected_fingerprint_when_set(tmp_path):
    secret_dir = tmp_path / "secrets"
    fingerprint = ready_line(run_setup(secret_dir, mode="MODE0"))["fingerprint"]
    before = snapshot(secret_dir)
    other = f"{int(fingerprint, 16) ^ 1:032x}"
    refused = run_setup(secret_dir, mode="MODE0", CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT=other)
    assert refused.returncode != 0
    assert f"have fingerprint {fingerprint}, not the expected {other}" in refused.stderr
    assert "ready role=" not in refused.stderr
    assert snapshot(secret_dir) == before
    # As the contract writes it (lower case) or as a person might copy it.
    for expected in (fingerprint, fingerprint.upper()):
        accepted = run_setup(secret_dir, mode="MODE0", CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT=expected)
        assert ready_line(accepted)["fingerprint"] == fingerprint


@pytest.mark.parametrize("told", [
    {"CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT": "0123456789abcdef0123456789abcdef"},
    {"CRYPTOSERVER_SECRETS_RESTORED": "yes"},
], ids=["expected-fingerprint", "restored-volume"])
def test_an_origin_never_completes_a_set_that_existed_before(tmp_path, told):
    """A snapshot taken while the first boot generated, restored: a directory with only
    a file being written. The origin told that its secrets exist must not make the
    missing ones (new keys would break every MAC issued with the lost ones)."""
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    (secret_dir / ".0000.tmp").write_bytes(os.urandom(4096))
    before = snapshot(secret_dir)
    refused = run_setup(secret_dir, mode="MODE16", **told)
    assert refused.returncode != 0
    assert "this origin never completes one that existed before" in refused.stderr, refused.stderr
    assert "generating" not in refused.stderr and "ready role=" not in refused.stderr
    assert snapshot(secret_dir) == before
    assert sorted(path.name for path in secret_dir.iterdir()) == [".0000.tmp"]


def test_an_origin_serves_a_restored_complete_set_without_writing(tmp_path):
    secret_dir = tmp_path / "secrets"
    fingerprint = ready_line(run_setup(secret_dir, mode="MODE16", CRYPTOSERVER_SECRETS_VERIFY="after-generate"))["fingerprint"]
    before = snapshot(secret_dir)
    restored = run_setup(secret_dir, mode="MODE16", CRYPTOSERVER_SECRETS_RESTORED="yes",
                         CRYPTOSERVER_SECRETS_VERIFY="after-generate")
    ready = ready_line(restored)
    assert ready["role"] == "origin" and ready["fingerprint"] == fingerprint
    # A restored volume is always verified, whatever the policy for an origin's own.
    assert ready["verified"] == "yes"
    assert "generating" not in restored.stderr
    assert snapshot(secret_dir) == before


@needs_loop_devices
def test_a_restored_origin_volume_is_only_ever_mounted_read_only(tmp_path):
    secret_dir = tmp_path / "secrets"
    with loop_device(tmp_path) as device, mounted_cleanup(secret_dir):
        assert_ready(run_setup(secret_dir, device=device), secret_dir, "MODE16")
        unmount(secret_dir)
        before = device_digest(device)
        restored = run_setup(secret_dir, device=device, CRYPTOSERVER_SECRETS_RESTORED="yes")
        assert ready_line(restored)["mount"] == "ro"
        assert "ro" in mount_options(secret_dir)
        unmount(secret_dir)
        assert device_digest(device) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root (CI runs as root)")
def test_secrets_owned_by_another_uid_are_given_back_to_the_owner_unchanged(tmp_path):
    """A rebuilt image whose service user has another UID: its first boot gives the
    complete secrets back to that user, with their modes, and never rewrites them."""
    secret_dir = tmp_path / "secrets"
    assert_ready(run_setup(secret_dir), secret_dir, "MODE16")
    contents = {path.name: (path.stat().st_ino, path.read_bytes()) for path in secret_dir.iterdir()}
    stranger = 4242
    assert stranger not in {user.pw_uid for user in pwd.getpwall()}
    os.chown(secret_dir, stranger, stranger)
    os.chmod(secret_dir, 0o755)
    for path in secret_dir.iterdir():
        os.chown(path, stranger, stranger)
        os.chmod(path, 0o644)

    again = run_setup(secret_dir)
    assert_ready(again, secret_dir, "MODE16")
    assert "re-apply their owner and permissions" in again.stderr
    owner = pwd.getpwnam(OWNER)
    for path in [secret_dir, *secret_dir.iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (owner.pw_uid, owner.pw_gid), path
    assert {path.name: path.stat().st_mode & 0o777 for path in secret_dir.iterdir()} == dict.fromkeys(contents, 0o400)
    assert {path.name: (path.stat().st_ino, path.read_bytes()) for path in secret_dir.iterdir()} == contents


def tls_fingerprint(secret_dir):
    """SHA-256 of the certificate in `secret_dir`/tls, as openssl prints it (AB:CD:...)."""
    der = ssl.PEM_cert_to_DER_cert((pathlib.Path(secret_dir) / "tls/cert.pem").read_text())
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())


def assert_tls_pair_printed(result, secret_dir):
    """The certificate and its fingerprint are on the console; the key never is."""
    assert f"TLS certificate for localhost, SHA-256 fingerprint {tls_fingerprint(secret_dir)}:" in result.stderr
    assert (pathlib.Path(secret_dir) / "tls/cert.pem").read_text() in result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_tls_key_is_made_once_beside_the_secrets_and_serves_https(tmp_path):
    secret_dir = tmp_path / "secrets"
    first = run_setup(secret_dir, CRYPTOSERVER_SECRETS_TLS_NAME="localhost")
    assert_ready(first, secret_dir, "MODE16")
    assert "making a TLS key and a self-signed certificate for localhost" in first.stderr
    assert_tls_pair_printed(first, secret_dir)
    tls = secret_dir / "tls"
    owner = pwd.getpwnam(OWNER).pw_uid if os.geteuid() == 0 else os.geteuid()
    assert {path.name: (path.stat().st_mode & 0o777, path.stat().st_uid) for path in [tls, *tls.iterdir()]} == {
        "tls": (0o500, owner), "key.pem": (0o400, owner), "cert.pem": (0o400, owner)}
    pair = {path.name: path.read_bytes() for path in tls.iterdir()}

    again = run_setup(secret_dir, CRYPTOSERVER_SECRETS_TLS_NAME="localhost")
    assert_ready(again, secret_dir, "MODE16")
    assert "making a TLS key" not in again.stderr
    assert_tls_pair_printed(again, secret_dir)
    assert {path.name: path.read_bytes() for path in tls.iterdir()} == pair

    # The server takes the pair, and a client pinning the certificate reaches it.
    tls_env = {"CRYPTOSERVER_TLS_CERT": str(tls / "cert.pem"), "CRYPTOSERVER_TLS_KEY": str(tls / "key.pem")}
    with running_server(tmp_path, "MODE16", secret_dir, extra_env=tls_env, https_ca=str(tls / "cert.pem")) as server:
        assert requests.get(f"{server.url}/readyz", verify=str(tls / "cert.pem"), timeout=5).status_code == 200


def test_after_generate_policy_skips_the_rehash_only_when_nothing_was_written(tmp_path):
    secret_dir = tmp_path / "secrets"
    first = run_setup(secret_dir, mode="MODE0", CRYPTOSERVER_SECRETS_VERIFY="after-generate")
    assert_ready(first, secret_dir, "MODE0")
    assert "verifying every secret" in first.stderr
    assert ready_line(first)["verified"] == "yes"
    second = run_setup(secret_dir, mode="MODE0", CRYPTOSERVER_SECRETS_VERIFY="after-generate")
    assert_ready(second, secret_dir, "MODE0")
    assert "not re-hashing" in second.stderr
    assert ready_line(second)["verified"] == "skipped"


def test_refuses_a_directory_holding_secrets_of_another_mode(tmp_path):
    secret_dir = tmp_path / "secrets"
    assert_ready(run_setup(secret_dir, mode="MODE0"), secret_dir, "MODE0")
    before = snapshot(secret_dir)
    refused = run_setup(secret_dir, mode="MODE16")
    assert refused.returncode != 0
    assert "holds MODE0 secrets, not MODE16" in refused.stderr
    assert snapshot(secret_dir) == before


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"mode": None}, "CRYPTOSERVER_MODE is not set"),
        ({"mode": "MODE64"}, "CRYPTOSERVER_MODE=MODE64 is not a mode"),
        ({"mode": "MODE64"}, "use MODE0, MODE16, MODE32 or MODE32X"),
        # MODE32X passes the mode check, so the next check speaks.
        ({"mode": "mode32x", "CRYPTOSERVER_SECRETS_VERIFY": "sometimes"}, "use always or after-generate"),
        ({"device": None}, "no secrets volume: set CRYPTOSERVER_SECRETS_VOLUME_ID"),
        ({"device": None, "CRYPTOSERVER_SECRETS_VOLUME_ID": "vol-xyz"}, "is not an EBS volume id"),
        ({"CRYPTOSERVER_SECRETS_VOLUME_ID": "vol-0123456789abcdef0"}, "not both"),
        ({"CRYPTOSERVER_SECRETS_VERIFY": "sometimes"}, "use always or after-generate"),
        ({"CRYPTOSERVER_SECRETS_TLS_NAME": "bad name"}, "is not a DNS name"),
        ({"CRYPTOSERVER_SECRETS_ROLE": "leader"}, "CRYPTOSERVER_SECRETS_ROLE=leader: use origin"),
        ({"CRYPTOSERVER_SECRETS_ROLE": "replica"}, "CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT is not set"),
        ({"CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT": "abc"}, "is not a secrets fingerprint (32 hex digits"),
        ({"CRYPTOSERVER_SECRETS_RESTORED": "maybe"}, "CRYPTOSERVER_SECRETS_RESTORED=maybe: use yes"),
        ({"CRYPTOSERVER_SECRETS_HOT_COPY": "tmpfs"}, "CRYPTOSERVER_SECRETS_HOT_COPY=tmpfs: use off or instance-store"),
        ({"CRYPTOSERVER_SECRETS_HOT_DIR": "hot"}, "CRYPTOSERVER_SECRETS_HOT_DIR=hot must be an absolute path"),
    ],
)
def test_bad_settings_stop_before_anything_is_written(tmp_path, settings, message):
    secret_dir = tmp_path / "secrets"
    result = run_setup(secret_dir, **settings)
    assert result.returncode != 0
    assert message in result.stderr
    assert not secret_dir.exists()


@needs_loop_devices
def test_blank_volume_is_formatted_mounted_read_only_and_serves(tmp_path):
    secret_dir = tmp_path / "secrets"
    with loop_device(tmp_path) as device, mounted_cleanup(secret_dir):
        first = run_setup(secret_dir, device=device)
        assert_ready(first, secret_dir, "MODE16")
        assert "is blank: making an ext4 filesystem" in first.stderr
        assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(secret_dir)
        assert "TYPE=ext4" in probe(device)
        filesystem = probe(device)
        before = snapshot(secret_dir)

        ready = ready_line(first)
        assert (ready["role"], ready["verified"], ready["mount"], ready["volume"]) == ("origin", "yes", "ro", "-")

        # The server accepts what the script left: a read-only ext4 root with lost+found.
        with running_server(tmp_path, "MODE16", secret_dir) as server:
            readyz = requests.get(f"{server.url}/readyz", timeout=5)
            assert readyz.status_code == 200
            assert readyz.json()["fingerprint"] == ready["fingerprint"]
            assert len(requests.post(f"{server.url}/hmac", data=b"hello world", timeout=5).content) == 32

        # Re-run while mounted, then after an unmount (a reboot): never formatted again.
        again = run_setup(secret_dir, device=device)
        assert_ready(again, secret_dir, "MODE16")
        assert snapshot(secret_dir) == before
        unmount(secret_dir)
        after_reboot = run_setup(secret_dir, device=device)
        assert_ready(after_reboot, secret_dir, "MODE16")
        assert "already holds a signature (TYPE=ext4); not formatting it" in after_reboot.stderr
        assert probe(device) == filesystem
        assert snapshot(secret_dir) == before
        assert "ro" in mount_options(secret_dir)


@needs_loop_devices
def test_the_tls_pair_lives_on_the_volume_and_a_restored_copy_shares_it(tmp_path):
    secret_dir = tmp_path / "secrets"
    copy = tmp_path / "snapshot.img"
    with loop_device(tmp_path) as device, mounted_cleanup(secret_dir):
        first = run_setup(secret_dir, device=device, CRYPTOSERVER_SECRETS_TLS_NAME="localhost")
        assert_ready(first, secret_dir, "MODE16")
        assert_tls_pair_printed(first, secret_dir)
        fingerprint = tls_fingerprint(secret_dir)
        assert "ro" in mount_options(secret_dir)
        unmount(secret_dir)
        # A volume restored from a snapshot holds the same bytes.
        with open(device, "rb") as source, open(copy, "wb") as target:
            shutil.copyfileobj(source, target)

    restored_dir = tmp_path / "restored"
    with loop_device(tmp_path, image=copy) as device, mounted_cleanup(restored_dir):
        replica = run_setup(restored_dir, device=device, CRYPTOSERVER_SECRETS_TLS_NAME="localhost")
        assert_ready(replica, restored_dir, "MODE16")
        assert "making a TLS key" not in replica.stderr
        assert_tls_pair_printed(replica, restored_dir)
        assert tls_fingerprint(restored_dir) == fingerprint


@needs_loop_devices
def test_a_volume_holding_any_signature_is_never_formatted(tmp_path):
    secret_dir = tmp_path / "secrets"
    with loop_device(tmp_path) as device, mounted_cleanup(secret_dir):
        subprocess.run(["mkswap", device], capture_output=True, check=True)
        swap = probe(device)
        result = run_setup(secret_dir, device=device)
        assert result.returncode != 0
        assert "already holds a signature (TYPE=swap); not formatting it" in result.stderr
        assert f"cannot mount {device}" in result.stderr
        assert probe(device) == swap
        assert not os.path.ismount(secret_dir)


@needs_loop_devices
def test_a_volume_with_data_but_no_signature_is_refused(tmp_path):
    secret_dir = tmp_path / "secrets"
    with loop_device(tmp_path) as device, mounted_cleanup(secret_dir):
        with open(device, "r+b") as raw:
            raw.seek(4096)
            raw.write(os.urandom(4096))
        result = run_setup(secret_dir, device=device)
        assert result.returncode != 0
        assert "has no filesystem signature but its first MiB is not blank" in result.stderr
        assert probe(device) == ""
        assert not os.path.ismount(secret_dir)


@needs_loop_devices
def test_finds_the_ebs_volume_by_its_nvme_id_and_waits_for_it(tmp_path):
    """The NVMe symlink udev makes for an EBS volume, pointing at a loop device."""
    volume_id = "vol-0" + uuid.uuid4().hex[:16]
    by_id = pathlib.Path("/dev/disk/by-id")
    link = by_id / f"nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"
    created = [path for path in (by_id.parent, by_id) if not path.exists()]
    secret_dir = tmp_path / "secrets"
    try:
        missing = run_setup(secret_dir, mode="MODE0", device=None, CRYPTOSERVER_SECRETS_VOLUME_ID=volume_id,
                            CRYPTOSERVER_SECRETS_WAIT=2)
        assert missing.returncode != 0
        assert f"{link} did not appear within 2s: is {volume_id} attached to this instance?" in missing.stderr
        with loop_device(tmp_path) as device, mounted_cleanup(secret_dir):
            by_id.mkdir(parents=True, exist_ok=True)
            link.symlink_to(device)
            found = run_setup(secret_dir, mode="MODE0", device=None, CRYPTOSERVER_SECRETS_VOLUME_ID=volume_id)
            assert_ready(found, secret_dir, "MODE0")
            assert f"(mounted read-only from {device})" in found.stderr
            assert ready_line(found)["volume"] == volume_id
    finally:
        link.unlink(missing_ok=True)
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()
