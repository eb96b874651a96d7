"""Every first boot a platform team can meet, in a real virtual machine booted from
the image `cargo xtask image` builds the way Packer builds the AMI (docs/image.md):
an origin's first and second boots, the doors that stay shut, replicas of good and
damaged copies of its volume, the hot copy, and a power cut while it generates.
MODE16 throughout (MODE32's 128 GiB stay with the loop-device suites). The boots run
one after another: each takes both cores."""

import base64
import email.mime.multipart
import email.mime.text
import hashlib
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time

import pytest
import requests

import reference
from conftest import binary
from signed_clients import Signer, clients_text
from vm import (
    Vm,
    blank_disk,
    build_image,
    file_digest,
    mounted_read_only,
    needs_vm,
    origin_settings,
    overlay,
    rendered_user_data,
    replica_settings,
    root_disk_as_raw,
    running,
    secret_files,
    seed_iso,
)

# The server's certificate is self-signed: the tests pin it by its fingerprint instead.
pytestmark = [needs_vm, pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

MODE = "MODE16"
VOLUME_ID = "vol-0123456789abcdef0"
REPLICA_VOLUME_ID = "vol-0fedcba9876543210"
TLS_NAME = "cryptoserver.internal"
MESSAGES = [b"", b"hello world", b"apples and pears", bytes(range(256)), b"\x00" * 1000]
# Printed by the code that user data tries to run: built at run time by the shell,
# so the text of the user data itself never contains it.
RAN = "RAN-42-"
TRY_TO_RUN = "echo " + '"RAN-$((6*7))-{0}" > /dev/ttyS0; touch "/var/tmp/RAN-$((6*7))-{0}"'
# What a person at the serial console would try.
LOGIN_ATTEMPT = b"\r\nroot\r\nroot\r\n\x03\x04\r\nsh\r\n"
PROMPTS = re.compile(r"(?i)(login:|password:|\$ $|# $|emergency mode|maintenance)", re.MULTILINE)


def sha256_hex(text):
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def image():
    return build_image()


@pytest.fixture(scope="module")
def token():
    return secrets.token_urlsafe(32)


def wait_until_serving(vm, scheme="https", seconds=180):
    """/readyz's JSON once it answers 200, through the forwarded port."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            answer = requests.get(f"{vm.url(scheme)}/readyz", timeout=5, verify=False)
            if answer.status_code == 200:
                return answer.json()
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"/readyz did not answer 200 within {seconds} s:\n{vm.tail()}")
        time.sleep(1)


def never_ready(vm, seconds=15):
    """Polls /readyz for `seconds`: it must never answer 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            status = requests.get(f"{vm.url()}/readyz", timeout=3).status_code
        except requests.RequestException:
            status = None
        assert status != 200, "a host that refused its secrets answers /readyz with 200"
        time.sleep(1)


def macs(vm, token, scheme="https"):
    answers = {}
    for message in MESSAGES:
        answer = requests.post(f"{vm.url(scheme)}/hmac", data=message, timeout=30, verify=False,
                               headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        answers[message] = answer.content
    return answers


def certificate_fingerprint(vm):
    """SHA-256 of the certificate the server presents, as the console prints it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", vm.service_port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=TLS_NAME) as tls:
            der = tls.getpeercert(binary_form=True)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def console_after_typing(vm, keys, seconds=8):
    """What the serial console shows after someone types `keys` at it."""
    before = len(vm.console())
    vm.type_at_serial(keys)
    time.sleep(seconds)
    return vm.console()[before:]


def expected_macs(volume):
    with mounted_read_only(volume) as mountpoint:
        return {message: reference.mac(MODE, mountpoint, message) for message in MESSAGES}, reference.fingerprint(mountpoint)


class Boot:
    """What one boot showed, kept for the tests that read it."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def pinned_certificate(vm, directory):
    """The PEM certificate the first boot printed on the console (each line behind the
    kernel's time and the script's name), as an operator pins it."""
    lines = [re.sub(r"^\[[ 0-9.]+\] [^:]+: ", "", line) for line in vm.console().replace("\r", "").splitlines()]
    found = re.search(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----", "\n".join(lines), re.DOTALL)
    assert found, vm.tail()
    path = directory / "pinned.pem"
    path.write_text(found.group(0) + "\n")
    return path


def push_signed_update(vm, signer, directory, serial, clients):
    """`cargo xtask clients push --url` of a document of `clients` at `serial`, over
    HTTPS with the certificate pinned; its output."""
    document = directory / f"clients-{serial}.signed"
    document.write_bytes(signer.sign(directory / f"clients-{serial}", clients_text(serial, clients)))
    result = subprocess.run(
        [binary("xtask-aws"), "clients", "push", "--file", document, "--url", vm.url("https"),
         "--ca", pinned_certificate(vm, directory), "--tls-server-name", TLS_NAME],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def pushed_token():
    """A client added by a signed update during the first boot, not by user data."""
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def origin(image, token, pushed_token, tmp_path_factory):
    """An origin's first boot as `terraform apply` makes it: user data rendered by the
    root module's user-data module, a blank secrets volume, tokens, a clients signer
    and TLS. Keys are typed at the serial console from power-on until the kernel starts
    (the boot loader), and again once the host is up. Once it serves, a signed update
    (serial 2) adds a client."""
    work = tmp_path_factory.mktemp("origin")
    root = overlay(image, work / "root.qcow2")
    volume = blank_disk(work / "secrets.raw")
    signer = Signer(work / "keys")
    user_data = rendered_user_data(work, mode=MODE, settings=origin_settings(VOLUME_ID),
                                   token_sha256_digests=[sha256_hex(token)], tls_server_name=TLS_NAME,
                                   clients_serial=1, clients_signer=signer.public_key)
    seed = seed_iso(work / "seed", user_data, "i-0000000000000001a")
    vm = Vm(work / "vm", root, [(volume, VOLUME_ID.replace("-", ""))], seed=seed)
    with running(vm):
        # Escape, `e` (edit the entry), `c` (GRUB's shell), arrows: what opens a menu.
        vm.keys_until(r"Linux version", b"\x1b\x1be c\x1b[A\x1b[B\r")
        ready = vm.ready_line()
        readyz = wait_until_serving(vm)
        served = macs(vm, token)
        unauthorized = requests.post(f"{vm.url('https')}/hmac", data=b"x", timeout=30, verify=False).status_code
        presented = certificate_fingerprint(vm)
        banner = vm.ssh_banner()
        typed = console_after_typing(vm, LOGIN_ATTEMPT)
        pushed = push_signed_update(vm, signer, work, 2, [(token, "origin-client"), (pushed_token, "pushed-client")])
        vm.power_off()
    return Boot(work=work, root=root, volume=volume, user_data=user_data, seed=seed, ready=ready, readyz=readyz,
                macs=served, unauthorized=unauthorized, presented=presented, banner=banner, typed=typed,
                pushed=pushed, console=vm.console())


@pytest.fixture(scope="module")
def origin_files(origin):
    with mounted_read_only(origin.volume) as mountpoint:
        return secret_files(mountpoint)


def test_origin_first_boot_prints_its_ready_line_and_certificate(origin):
    assert origin.ready["role"] == "origin"
    assert origin.ready["mode"] == MODE
    assert origin.ready["verified"] == "yes"
    assert origin.ready["mount"] == "ro"
    assert origin.ready["volume"] == VOLUME_ID
    assert origin.ready["hot-copy"] == "none"
    printed = re.search(rf"TLS certificate for {re.escape(TLS_NAME)}, SHA-256 fingerprint ([0-9A-F:]{{95}}):", origin.console)
    assert printed, origin.console[-4000:]
    assert "-----BEGIN CERTIFICATE-----" in origin.console
    assert origin.presented == printed.group(1), "the server presents another certificate than the console printed"


def test_origin_serves_the_macs_of_its_volume(origin):
    expected, fingerprint = expected_macs(origin.volume)
    assert origin.macs == expected
    assert origin.readyz["fingerprint"] == origin.ready["fingerprint"] == fingerprint
    assert origin.unauthorized == 401


def test_the_user_data_is_the_modules_and_only_writes_files(origin):
    assert origin.user_data.startswith("#cloud-config\n")
    assert f"CRYPTOSERVER_SECRETS_VOLUME_ID={VOLUME_ID}" in origin.user_data
    assert "CRYPTOSERVER_TOKENS_FILE=/etc/cryptoserver/tokens" in origin.user_data


def test_no_ssh_banner_and_no_login_on_the_serial_console(origin):
    assert not origin.banner.startswith(b"SSH-"), origin.banner
    assert not PROMPTS.search(origin.typed), origin.typed


def test_keys_at_the_boot_loader_change_nothing(origin):
    command_line = re.search(r"Command line: (.*)", origin.console)
    assert command_line, origin.console[:4000]
    assert "console=ttyS0,115200" in command_line.group(1)
    assert not re.search(r"init=|single|emergency|rescue", command_line.group(1))
    assert "grub>" not in origin.console and "GNU GRUB" not in origin.console


def test_the_root_disk_has_every_door_shut_and_no_secret_in_its_logs(origin, token):
    raw = root_disk_as_raw(origin.root)
    try:
        with mounted_read_only(raw, partition=2) as root:
            for unit in ("ssh.service", "ssh.socket", "sshd.service", "serial-getty@.service", "getty@.service",
                         "console-getty.service", "amazon-ssm-agent.service"):
                assert os.readlink(root / "etc/systemd/system" / unit) == "/dev/null", unit
            keys = [path for path in root.rglob("authorized_keys*")
                    if path.name in ("authorized_keys", "authorized_keys2") and path.is_file()]
            assert keys == []
            assert not (root / "etc/sudoers.d/90-cloud-init-users").exists()
            shadow = dict(line.split(":", 2)[:2] for line in (root / "etc/shadow").read_text().splitlines())
            assert shadow["root"].startswith("!"), "root has a usable password"
            assert shadow["admin"].startswith("!"), "the build user is not locked"
            passwd = {line.split(":")[0]: line.split(":")[6] for line in (root / "etc/passwd").read_text().splitlines()}
            assert passwd["admin"] == "/usr/sbin/nologin"
            assert not list((root / "etc/ssh").glob("ssh_host_*_key"))
            forbidden = [token.encode()]
            for mac in origin.macs.values():
                forbidden += [mac, mac.hex().encode(), base64.b64encode(mac)]
            with mounted_read_only(origin.volume) as volume:
                for message in MESSAGES:
                    key = reference.read_key(MODE, volume, message)
                    forbidden += [key, key.hex().encode(), base64.b64encode(key)]
            logs = [path for base in ("var/log", "var/lib/cloud", "var/tmp", "tmp", "root")
                    for path in (root / base).rglob("*") if path.is_file() and not path.is_symlink()]
            assert any("journal" in str(path) for path in logs), "no journal kept: the check below would prove nothing"
            for path in logs:
                data = path.read_bytes()
                for needle in forbidden:
                    assert needle not in data, f"{path.relative_to(root)} holds a token, a MAC or key bytes"
    finally:
        raw.unlink()


@pytest.fixture(scope="module")
def second_boot(origin, origin_files, token, pushed_token):
    """The same instance booted again: same root disk, same volume, same user data."""
    vm = Vm(origin.work / "vm-again", origin.root, [(origin.volume, VOLUME_ID.replace("-", ""))], seed=origin.seed)
    with running(vm):
        ready = vm.ready_line()
        readyz = wait_until_serving(vm)
        served = macs(vm, token)
        served_to_pushed = macs(vm, pushed_token)
        vm.power_off()
    with mounted_read_only(origin.volume) as mountpoint:
        files = secret_files(mountpoint)
    return Boot(ready=ready, readyz=readyz, macs=served, served_to_pushed=served_to_pushed, files=files,
                console=vm.console())


def test_a_second_boot_changes_nothing_and_serves_the_same_macs(origin, origin_files, second_boot):
    assert second_boot.files == origin_files
    assert "0000" in origin_files and "cryptoserver.manifest" in origin_files
    assert second_boot.ready["fingerprint"] == origin.ready["fingerprint"] == second_boot.readyz["fingerprint"]
    assert second_boot.ready["mount"] == "ro"
    assert second_boot.macs == origin.macs
    # The signed update pushed at the first boot (user data has serial 1) is kept on the
    # root disk: after the reboot its serial and its new client are still in force.
    assert origin.readyz["clients_serial"] == 1
    assert origin.pushed.splitlines()[-1] == "all 1 host(s) hold serial 2"
    assert second_boot.readyz["clients_serial"] == 2
    assert second_boot.served_to_pushed == origin.macs
    assert "making an ext4 filesystem" not in second_boot.console
    assert "making a TLS key" not in second_boot.console


def multipart_user_data(module_user_data):
    """The module's cloud-config with every way cloud-init has to run code added to it."""
    cloud_config = module_user_data + "\n".join([
        "bootcmd:", f"  - {TRY_TO_RUN.format('bootcmd')}",
        "runcmd:", f"  - {TRY_TO_RUN.format('runcmd')}",
        "cloud_config_modules: [runcmd, scripts_user]",
        "cloud_final_modules: [scripts_user, scripts_per_boot, final_message]", ""])
    parts = [
        (cloud_config, "cloud-config"),
        (f"#!/bin/sh\n{TRY_TO_RUN.format('script')}\n", "x-shellscript"),
        (f"#cloud-boothook\n#!/bin/sh\n{TRY_TO_RUN.format('boothook')}\n", "cloud-boothook"),
        ("#part-handler\nimport subprocess\nsubprocess.run(['sh', '-c', '" + TRY_TO_RUN.format("part-handler").replace("'", "\\'")
         + "'])\ndef list_types():\n    return []\ndef handle_part(*args):\n    pass\n", "part-handler"),
    ]
    message = email.mime.multipart.MIMEMultipart()
    for body, subtype in parts:
        message.attach(email.mime.text.MIMEText(body, subtype))
    return message.as_string()


def test_user_data_runs_no_code(image, token, tmp_path):
    """bootcmd, runcmd, a shell script, a boothook and a part handler: none runs (each
    would print a marker on the console and leave one on the root disk), and the host
    still comes up with the module's settings."""
    volume = blank_disk(tmp_path / "secrets.raw")
    module = rendered_user_data(tmp_path, mode=MODE, settings=origin_settings(VOLUME_ID, verify="after-generate"),
                                token_sha256_digests=[sha256_hex(token)])
    seed = seed_iso(tmp_path / "seed", multipart_user_data(module), "i-0000000000000002b")
    root = overlay(image, tmp_path / "root.qcow2")
    vm = Vm(tmp_path / "vm", root, [(volume, VOLUME_ID.replace("-", ""))], seed=seed)
    with running(vm):
        assert vm.ready_line()["role"] == "origin"
        wait_until_serving(vm, scheme="http")
        # cloud-init's last stage runs after the server's unit: wait for it to end.
        vm.wait_for_console(r"Cloud-init v\. \S+ finished at|cloud-final")
        time.sleep(5)
        vm.power_off()
    assert RAN not in vm.console(), vm.console()[-4000:]
    raw = root_disk_as_raw(root)
    try:
        with mounted_read_only(raw, partition=2) as mounted:
            markers = [str(path) for path in mounted.rglob(f"{RAN}*")]
            assert markers == []
    finally:
        raw.unlink()


def copy_of(volume, destination, change=None):
    """A copy of a volume (what a snapshot restores), changed by `change(mountpoint)`
    on this machine; returns it and its digest."""
    shutil.copyfile(volume, destination)
    if change:
        loop = subprocess.run(["losetup", "--find", "--show", destination], capture_output=True, text=True,
                              check=True).stdout.strip()
        mountpoint = destination.with_suffix(".change")
        mountpoint.mkdir()
        try:
            subprocess.run(["mount", loop, mountpoint], check=True)
            try:
                change(mountpoint)
            finally:
                subprocess.run(["umount", mountpoint], check=True)
        finally:
            subprocess.run(["losetup", "--detach", loop], check=True)
    return destination, file_digest(destination)


def boot_replica(image, tmp_path, volume, expected_fingerprint, token, instance_store=None, hot_copy=False):
    user_data = rendered_user_data(tmp_path, mode=MODE, settings=replica_settings(expected_fingerprint),
                                   token_sha256_digests=[sha256_hex(token)], tls_server_name=TLS_NAME,
                                   hot_copy=hot_copy)
    seed = seed_iso(tmp_path / "seed", user_data, f"i-{secrets.token_hex(8)}")
    root = overlay(image, tmp_path / "root.qcow2")
    return Vm(tmp_path / "vm", root, [(volume, REPLICA_VOLUME_ID.replace("-", ""))],
              instance_store=instance_store, seed=seed)


def test_a_replica_of_the_origin_s_volume_serves_the_same_macs(image, origin, second_boot, token, tmp_path):
    volume, digest = copy_of(origin.volume, tmp_path / "restored.raw")
    vm = boot_replica(image, tmp_path, volume, origin.ready["fingerprint"], token)
    with running(vm):
        ready = vm.ready_line()
        readyz = wait_until_serving(vm)
        served = macs(vm, token)
        vm.power_off()
    assert ready["role"] == "replica" and ready["mount"] == "ro" and ready["volume"] == REPLICA_VOLUME_ID
    assert readyz["fingerprint"] == origin.ready["fingerprint"]
    assert served == origin.macs
    assert file_digest(volume) == digest, "a replica wrote to its volume"


def flip_a_byte(mountpoint):
    path = mountpoint / "0000"
    data = bytearray(path.read_bytes())
    data[12345] ^= 0x01
    path.write_bytes(data)


def remove_the_key_file(mountpoint):
    (mountpoint / "0000").unlink()


@pytest.mark.parametrize("damage, fingerprint, says", [
    (flip_a_byte, None, "do not match their manifest"),
    (remove_the_key_file, None, "do not match their manifest"),
    (None, "0123456789abcdef0123456789abcdef", "not the expected 0123456789abcdef0123456789abcdef"),
], ids=["one-byte-changed", "a-file-missing", "another-fingerprint"])
def test_a_replica_never_serves_a_damaged_or_foreign_copy(image, origin, second_boot, token, tmp_path, damage,
                                                           fingerprint, says):
    volume, digest = copy_of(origin.volume, tmp_path / "restored.raw", damage)
    vm = boot_replica(image, tmp_path, volume, fingerprint or origin.ready["fingerprint"], token)
    with running(vm):
        found = vm.wait_for_console(r"cryptoserver-secrets-setup: (error: .*|ready .*)")
        assert found.group(1).startswith("error: "), vm.tail()
        never_ready(vm)
        vm.power_off()
    assert says in vm.console(), vm.tail()
    assert "cryptoserver-secrets-setup: ready" not in vm.console()
    assert file_digest(volume) == digest, "a replica wrote to a volume it refused"


def test_the_hot_copy_is_served_and_rebuilt_at_every_boot(image, origin, second_boot, token, tmp_path):
    volume, digest = copy_of(origin.volume, tmp_path / "restored.raw")
    store = blank_disk(tmp_path / "instance-store.raw")
    vm = boot_replica(image, tmp_path, volume, origin.ready["fingerprint"], token, instance_store=store, hot_copy=True)
    boots = []
    for _ in range(2):
        again = Vm(vm.workdir, vm.root, vm.volumes, instance_store=store, seed=vm.seed)
        with running(again):
            ready = again.ready_line()
            wait_until_serving(again)
            boots.append((ready, macs(again, token), again.console()))
            again.power_off()
    for ready, served, console in boots:
        assert ready["hot-copy"] == "/secrets-hot", ready
        assert served == origin.macs
        assert re.search(r"making a fresh filesystem on /dev/sd\w+ \(QEMU HARDDISK\) for the hot copy", console), console[-3000:]
    assert file_digest(volume) == digest
    with mounted_read_only(store) as copy:
        assert secret_files(copy)["0000"] == file_digest_of_origin(origin, "0000")


def file_digest_of_origin(origin, name):
    with mounted_read_only(origin.volume) as mountpoint:
        return file_digest(mountpoint / name)


def test_without_instance_storage_the_hot_copy_fails_closed(image, origin, second_boot, token, tmp_path):
    volume, digest = copy_of(origin.volume, tmp_path / "restored.raw")
    vm = boot_replica(image, tmp_path, volume, origin.ready["fingerprint"], token, hot_copy=True)
    with running(vm):
        found = vm.wait_for_console(r"cryptoserver-secrets-setup: (error: .*|ready .*)")
        assert "no block device reports the model" in found.group(1), vm.tail()
        never_ready(vm)
        vm.power_off()
    assert file_digest(volume) == digest


def test_a_power_cut_while_generating_loses_nothing_complete(image, token, tmp_path):
    """The plug is pulled while the origin writes its secrets (the volume's writes
    slowed to 256 KiB/s so the cut lands inside the generation); a snapshot of the
    volume at that moment, restored, is refused and left as it is; the origin's next
    boot finishes, and no secret file complete at the cut has changed."""
    volume = blank_disk(tmp_path / "secrets.raw")
    user_data = rendered_user_data(tmp_path, mode=MODE, settings=origin_settings(VOLUME_ID),
                                   token_sha256_digests=[sha256_hex(token)], tls_server_name=TLS_NAME)
    seed = seed_iso(tmp_path / "seed", user_data, "i-0000000000000003c")
    root = overlay(image, tmp_path / "root.qcow2")
    serial = VOLUME_ID.replace("-", "")
    cut = Vm(tmp_path / "vm", root, [(volume, serial)], seed=seed, throttle_bps=256 << 10)
    with running(cut):
        cut.wait_for_console(r"generating the missing MODE16 secrets")
        time.sleep(3)
        cut.kill()
    assert "cryptoserver-secrets-setup: ready" not in cut.console(), "the cut came after the generation"

    # What the next boot finds: the volume with its journal replayed, on a copy.
    replayed = tmp_path / "at-the-cut.raw"
    shutil.copyfile(volume, replayed)
    subprocess.run(["e2fsck", "-f", "-y", replayed], capture_output=True)
    with mounted_read_only(replayed) as mountpoint:
        complete_at_cut = {name: digest for name, digest in secret_files(mountpoint).items()
                           if not name.split("/")[-1].startswith(".")}
    replayed.unlink()

    # A snapshot taken at that moment (DLM runs whatever the volume's age), restored
    # through data_volume_snapshot_id: refused, never completed with new keys.
    snapshot, digest = copy_of(volume, tmp_path / "snapshot-at-the-cut.raw")
    restored_data = rendered_user_data(tmp_path / "restored", mode=MODE, token_sha256_digests=[sha256_hex(token)],
                                       settings=origin_settings(REPLICA_VOLUME_ID, restored=True))
    restored = Vm(tmp_path / "vm-restored", overlay(image, tmp_path / "restored-root.qcow2"),
                  [(snapshot, REPLICA_VOLUME_ID.replace("-", ""))],
                  seed=seed_iso(tmp_path / "restored-seed", restored_data, "i-0000000000000004d"))
    with running(restored):
        found = restored.wait_for_console(r"cryptoserver-secrets-setup: (error: .*|ready .*)")
        assert found.group(1).startswith("error: "), restored.tail()
        never_ready(restored)
        restored.power_off()
    assert "generating" not in restored.console()
    assert file_digest(snapshot) == digest, "a restored volume was written to"

    again = Vm(tmp_path / "vm", root, [(volume, serial)], seed=seed)
    with running(again):
        ready = again.ready_line()
        served = macs(again, token, scheme="https") if wait_until_serving(again) else None
        again.power_off()
    with mounted_read_only(volume) as mountpoint:
        after = secret_files(mountpoint)
        assert served == {message: reference.mac(MODE, mountpoint, message) for message in MESSAGES}
        assert ready["fingerprint"] == reference.fingerprint(mountpoint)
    for name, digest in complete_at_cut.items():
        assert after.get(name) == digest, f"{name}, complete at the cut, changed"
