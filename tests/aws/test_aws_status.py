"""`status` against moto's server and LocalStack (aws_emulators.py starts them): one
row per host with its state, status checks and the console's ready or error line,
and exit 0 only when every host is running, ready and on one fingerprint. Consoles
are set through the same loopback proxy as the snapshot tests' (neither emulator
can be told what an instance printed); `--probe` asks a real cryptoserver's
/readyz, on an emulated instance whose private address is 127.0.0.1, so the probe
never leaves loopback."""

import ipaddress
import os
import subprocess

import pytest

pytest.register_assert_rewrite("aws_emulators")

from aws_emulators import console_proxy, pinned_certificates, run_aws
from conftest import REPO, binary, running_server
from test_aws_snapshot_pool import FINGERPRINT, NO_AUTO_SCALING, Pool, boot_log, ready_line

import reference

pytest_plugins = ["aws_emulators"]

OTHER_FINGERPRINT = "fedcba9876543210fedcba9876543210"


def instance(ec2, cidr="10.0.0.0/16", private_ip=None):
    vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr.replace("/16", "/24"))["Subnet"]["SubnetId"]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    extra = {"PrivateIpAddress": private_ip} if private_ip else {}
    return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet, **extra)["Instances"][0]["InstanceId"]


def status(tmp_path, emulator, consoles, *args):
    with console_proxy(emulator.url, consoles) as url:
        return run_aws(tmp_path, emulator, "status", *args, endpoint_url=url)


def rows(stdout):
    """{instance id: row} of the table."""
    return {line.split()[0]: line for line in stdout.splitlines() if line.startswith("i-")}


def test_a_ready_origin_is_well(tmp_path, emulator, ec2):
    origin = instance(ec2)
    consoles = {origin: boot_log(ready_line("vol-0123456789abcdef0", **{"hot-copy": "instance-store"}))}
    result = status(tmp_path, emulator, consoles, "--instance-id", origin)
    assert result.returncode == 0, result.stdout + result.stderr
    row = rows(result.stdout)[origin]
    assert row.split()[1:5] == ["running", "ok", "ok", "-"]
    assert row.endswith(f"ready role=origin mode=MODE32 fingerprint={FINGERPRINT} verified=yes hot-copy=instance-store")
    assert result.stdout.splitlines()[-1] == f"all 1 host(s) are ready with fingerprint {FINGERPRINT}"


@pytest.mark.parametrize(
    "console, reason",
    [
        (None, "its console output has no ready line from cryptoserver-secrets-setup"),
        (
            boot_log("cryptoserver-secrets-setup: error: /secrets/cryptoserver.manifest lists 65536 files, 65535 found"),
            "its first-boot script failed and never reported ready: /secrets/cryptoserver.manifest lists 65536 files, 65535 found",
        ),
        (
            boot_log(ready_line("vol-0123456789abcdef0")) + boot_log(),
            "the host booted again after its last ready line",
        ),
    ],
    ids=["no-ready-line", "error-line", "rebooted"],
)
def test_a_host_whose_console_is_not_ready_fails(tmp_path, emulator, ec2, console, reason):
    origin = instance(ec2)
    consoles = {origin: console} if console else {}
    result = status(tmp_path, emulator, consoles, "--instance-id", origin)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"NOT READY: {reason}" in rows(result.stdout)[origin]
    assert f"  - {origin}: console: {reason}" in result.stdout


def test_a_stopped_host_fails(tmp_path, emulator, ec2):
    origin = instance(ec2)
    ec2.stop_instances(InstanceIds=[origin])
    consoles = {origin: boot_log(ready_line("vol-0123456789abcdef0"))}
    result = status(tmp_path, emulator, consoles, "--instance-id", origin)
    assert result.returncode == 1, result.stdout + result.stderr
    assert rows(result.stdout)[origin].split()[1] == "stopped"
    assert f"  - {origin}: state stopped" in result.stdout


def test_an_unknown_instance_is_an_error(tmp_path, emulator):
    result = status(tmp_path, emulator, {}, "--instance-id", "i-0123456789abcdef0")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "instance i-0123456789abcdef0 does not exist" in result.stderr


@pytest.fixture(scope="module")
def served_secrets(tmp_path_factory):
    """MODE16 secrets with a manifest, so that /readyz names their fingerprint."""
    secret_dir = tmp_path_factory.mktemp("status") / "secrets"
    subprocess.run(
        [binary("cryptoserver-secrets"), "generate", "--mode", "MODE16", "--dir", secret_dir],
        check=True, capture_output=True, timeout=300,
    )
    return secret_dir


def test_probe_asks_readyz_and_compares_it_with_the_console(tmp_path, emulator, ec2, served_secrets):
    host = instance(ec2, cidr="127.0.0.0/16", private_ip="127.0.0.1")
    address = ec2.describe_instances(InstanceIds=[host])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    # The probe goes to the instance's private address: only ever loopback here.
    assert ipaddress.ip_address(address).is_loopback, address
    served = reference.fingerprint(served_secrets)
    with running_server(tmp_path, "MODE16", served_secrets) as server:
        port = server.address[1]
        consoles = {host: boot_log(ready_line("vol-0123456789abcdef0", mode="MODE16", fingerprint=served))}
        result = status(tmp_path, emulator, consoles, "--instance-id", host, "--probe", "--port", str(port))
        assert result.returncode == 0, result.stdout + result.stderr
        assert rows(result.stdout)[host].split()[4:6] == ["200", "ready"]
        assert result.stdout.splitlines()[-1] == f"all 1 host(s) are ready with fingerprint {served}"

        consoles[host] = boot_log(ready_line("vol-0123456789abcdef0", mode="MODE16", fingerprint=FINGERPRINT))
        result = status(tmp_path, emulator, consoles, "--instance-id", host, "--probe", "--port", str(port))
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"{host}: /readyz serves fingerprint {served}, its console reported {FINGERPRINT}" in result.stdout
    # The server is gone: nothing answers on its port.
    consoles[host] = boot_log(ready_line("vol-0123456789abcdef0", mode="MODE16", fingerprint=served))
    result = status(tmp_path, emulator, consoles, "--instance-id", host, "--probe", "--port", str(port))
    assert result.returncode == 1, result.stdout + result.stderr
    assert rows(result.stdout)[host].split()[4] == "unreachable"
    assert f"{host}: /readyz: cannot connect to 127.0.0.1:{port}" in result.stdout


def test_probe_over_https_verifies_the_pinned_certificate(tmp_path, emulator, ec2, served_secrets):
    host = instance(ec2, cidr="127.0.0.0/16", private_ip="127.0.0.1")
    address = ec2.describe_instances(InstanceIds=[host])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    assert ipaddress.ip_address(address).is_loopback, address
    pinned, cert, key, other = pinned_certificates(tmp_path)
    served = reference.fingerprint(served_secrets)
    consoles = {host: boot_log(ready_line("vol-0123456789abcdef0", mode="MODE16", fingerprint=served))}
    env = {"CRYPTOSERVER_TLS_CERT": str(cert), "CRYPTOSERVER_TLS_KEY": str(key)}
    with running_server(tmp_path, "MODE16", served_secrets, env, https_ca=str(pinned)) as server:
        port = server.address[1]
        probe = ["--instance-id", host, "--probe", "--port", str(port), "--tls-server-name", "cryptoserver.internal"]
        result = status(tmp_path, emulator, consoles, *probe, "--ca", str(pinned))
        assert result.returncode == 0, result.stdout + result.stderr
        assert rows(result.stdout)[host].split()[4:6] == ["200", "ready"]

        result = status(tmp_path, emulator, consoles, *probe, "--ca", str(other))
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"{host}: /readyz: TLS with 127.0.0.1:{port}: invalid peer certificate" in result.stdout


@pytest.fixture
def pool(emulator):
    if emulator.name == "localstack":
        pytest.skip(NO_AUTO_SCALING)
    return Pool(emulator)


def test_a_pool_is_well_only_on_one_fingerprint(tmp_path, emulator, pool):
    first, second = pool.instance_ids
    consoles = {id: boot_log(ready_line("vol-0123456789abcdef0", role="replica")) for id in pool.instance_ids}
    result = status(tmp_path, emulator, consoles, "--asg", pool.GROUP)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(rows(result.stdout)) == {first, second}
    assert result.stdout.splitlines()[-1] == f"all 2 host(s) are ready with fingerprint {FINGERPRINT}"

    consoles[second] = boot_log(ready_line("vol-0123456789abcdef0", role="replica", fingerprint=OTHER_FINGERPRINT))
    result = status(tmp_path, emulator, consoles, "--asg", pool.GROUP)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"the hosts report 2 fingerprints: {FINGERPRINT} on {first}; {OTHER_FINGERPRINT} on {second}" in result.stdout


def test_status_names_a_group_it_cannot_read(tmp_path, emulator):
    """On moto the group does not exist; LocalStack has no Auto Scaling to ask."""
    result = run_aws(tmp_path, emulator, "status", "--asg", "no-such-pool")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Auto Scaling group no-such-pool" in result.stderr


def test_cargo_xtask_lists_status_and_forwards_it():
    cargo = os.environ.get("CARGO", "cargo")
    listing = subprocess.run([cargo, "xtask"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert "One row per host of an instance or Auto Scaling pool" in listing.stdout + listing.stderr
    help_text = subprocess.run([cargo, "xtask", "status", "--help"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert help_text.returncode == 0, help_text.stderr
    assert "--probe" in help_text.stdout and "--asg" in help_text.stdout and "--tls-server-name" in help_text.stdout
