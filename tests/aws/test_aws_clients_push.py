"""`clients push` against real cryptoserver servers on loopback holding a signer,
with signed documents made by minisign itself: to given URLs (plain and HTTPS with
the pinned certificate), and with --asg to every InService replica of a group moto
emulates, whose instances' private addresses are loopback addresses where the
servers listen (LocalStack has no Auto Scaling: there, the group cannot be read).
Every replica gets the serial; one already at a higher serial refuses and the exit
status says so; a replay is refused; a file that is not a signed document is
refused before anything is sent."""

import contextlib
import ipaddress
import os
import subprocess

import pytest
import requests

pytest.register_assert_rewrite("aws_emulators")

from aws_emulators import pinned_certificates, run_aws
from conftest import REPO, binary, free_port, running_server
from signed_clients import Signer, bearer, clients_text
from test_aws_snapshot_pool import NO_AUTO_SCALING, Pool

import reference

pytest_plugins = ["aws_emulators"]

# Every client of every document: a server that applied one answers /hmac for its token.
FIRST = [("token-first", "first")]
SECOND = [("token-second", "second"), ("token-plain", "plain")]


@pytest.fixture(scope="module")
def secret_dir(tmp_path_factory):
    return reference.write_random_secrets("MODE0", tmp_path_factory.mktemp("push") / "secrets")


@pytest.fixture
def signer(tmp_path):
    return Signer(tmp_path / "keys")


@contextlib.contextmanager
def replicas(tmp_path, secret_dir, signer, addresses, port=None, extra_env=None, https_ca=None):
    """A server at each of `addresses` (loopback) on one port, with the signer and the
    clients of serial 1 in its user data's clients file, each its own state directory;
    HTTPS when `https_ca` (the CA bundle of its certificate) is given."""
    port = port or free_port()
    clients_file = tmp_path / "clients"
    clients_file.write_text(clients_text(1, FIRST))
    with contextlib.ExitStack() as stack:
        servers = []
        for number, address in enumerate(addresses):
            assert ipaddress.ip_address(address).is_loopback, address
            state_dir = tmp_path / f"state-{number}"
            state_dir.mkdir()
            env = {
                "CRYPTOSERVER_TOKENS_FILE": str(clients_file),
                "CRYPTOSERVER_CLIENTS_SIGNER": signer.public_key,
                "CRYPTOSERVER_STATE_DIR": str(state_dir),
                **(extra_env or {}),
            }
            server = running_server(tmp_path, "MODE0", secret_dir, env, https_ca=https_ca, bind=(address, port))
            servers.append(stack.enter_context(server))
        yield servers


def serial_of(server, **kwargs):
    return requests.get(f"{server.url}/readyz", timeout=5, **kwargs).json()["clients_serial"]


def push(tmp_path, *args):
    """`xtask-aws clients push` with `args`, no AWS endpoint (for --url)."""
    result = subprocess.run(
        [binary("xtask-aws"), "clients", "push", *args],
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(result.stdout, result.stderr)
    return result


def lines(stdout):
    """{label: what follows it} of the per-host lines."""
    return dict(line.split(": ", 1) for line in stdout.splitlines()[:-1] if ": " in line)


def test_every_url_gets_the_serial_then_a_replay_is_refused(tmp_path, secret_dir, signer):
    document = tmp_path / "F.signed"
    document.write_bytes(signer.sign(tmp_path / "F", clients_text(2, SECOND)))
    with replicas(tmp_path, secret_dir, signer, ["127.0.0.1", "127.0.0.2"]) as servers:
        urls = [server.url for server in servers]
        result = push(tmp_path, "--file", str(document), *[arg for url in urls for arg in ("--url", url)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert lines(result.stdout) == {url: "holds serial 2 (2 clients)" for url in urls}
        assert result.stdout.splitlines()[-1] == "all 2 host(s) hold serial 2"
        for server in servers:
            assert serial_of(server) == 2
            assert requests.post(f"{server.url}/hmac", data=b"m", headers=bearer("token-second"), timeout=5).status_code == 200
            assert requests.post(f"{server.url}/hmac", data=b"m", headers=bearer("token-first"), timeout=5).status_code == 401

        replay = push(tmp_path, "--file", str(document), "--url", urls[0])
        assert replay.returncode == 1, replay.stdout + replay.stderr
        assert lines(replay.stdout)[urls[0]].startswith("FAILED: 409: ")
        assert lines(replay.stdout)[urls[0]].endswith("(serial in force: 2)")
        assert replay.stdout.splitlines()[-1] == "1 of 1 host(s) did not take the document"
        assert serial_of(servers[0]) == 2


def test_a_document_the_signer_did_not_sign_is_refused_by_each_host(tmp_path, secret_dir, signer):
    stranger = Signer(tmp_path / "other-keys", name="stranger")
    document = tmp_path / "F.signed"
    document.write_bytes(stranger.sign(tmp_path / "F", clients_text(2, SECOND)))
    with replicas(tmp_path, secret_dir, signer, ["127.0.0.1"]) as [server]:
        result = push(tmp_path, "--file", str(document), "--url", server.url)
        assert result.returncode == 1, result.stdout + result.stderr
        assert lines(result.stdout)[server.url].startswith("FAILED: 403: ")
        assert serial_of(server) == 1


@pytest.mark.parametrize(
    "content, why",
    [
        (None, "cannot read"),
        (clients_text(2, SECOND).encode(), "is not a signed clients document"),
        (b"untrusted comment: x\nnot base64\ntrusted comment: y\nz\n" + clients_text(2, SECOND).encode(), "is not a signed clients document"),
    ],
    ids=["missing", "unsigned-file", "not-a-signature"],
)
def test_what_is_not_a_signed_document_is_never_sent(tmp_path, secret_dir, signer, content, why):
    document = tmp_path / "F.signed"
    if content is not None:
        document.write_bytes(content)
    with replicas(tmp_path, secret_dir, signer, ["127.0.0.1"]) as [server]:
        result = push(tmp_path, "--file", str(document), "--url", server.url)
        assert result.returncode == 2, result.stdout + result.stderr
        assert why in result.stderr and str(document) in result.stderr
        assert result.stdout == ""
        metrics = requests.get(f"{server.url}/metrics", headers=bearer("token-first"), timeout=5).text
        assert 'route="/admin/clients"' not in metrics
        assert serial_of(server) == 1


def test_https_urls_need_the_pinned_certificate(tmp_path, secret_dir, signer):
    pinned, cert, key, other = pinned_certificates(tmp_path)
    document = tmp_path / "F.signed"
    document.write_bytes(signer.sign(tmp_path / "F", clients_text(2, SECOND)))
    env = {"CRYPTOSERVER_TLS_CERT": str(cert), "CRYPTOSERVER_TLS_KEY": str(key)}
    with replicas(tmp_path, secret_dir, signer, ["127.0.0.1"], extra_env=env, https_ca=str(pinned)) as [server]:
        url = f"https://127.0.0.1:{server.address[1]}"
        refused = push(tmp_path, "--file", str(document), "--url", url, "--ca", str(other), "--tls-server-name", "cryptoserver.internal")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "invalid peer certificate" in lines(refused.stdout)[url]
        no_ca = push(tmp_path, "--file", str(document), "--url", url)
        assert no_ca.returncode == 2 and "pass --ca" in no_ca.stderr, no_ca.stdout + no_ca.stderr
        assert serial_of(server, verify=str(pinned)) == 1

        result = push(tmp_path, "--file", str(document), "--url", url, "--ca", str(pinned), "--tls-server-name", "cryptoserver.internal")
        assert result.returncode == 0, result.stdout + result.stderr
        assert lines(result.stdout) == {url: "holds serial 2 (2 clients)"}
        # The URL's host is the name to check when none is given.
        by_host = tmp_path / "G.signed"
        by_host.write_bytes(signer.sign(tmp_path / "G", clients_text(3, SECOND)))
        result = push(tmp_path, "--file", str(by_host), "--url", f"https://localhost:{server.address[1]}", "--ca", str(pinned))
        assert result.returncode == 0, result.stdout + result.stderr
        assert serial_of(server, verify=str(pinned)) == 3


@pytest.fixture
def loopback_pool(emulator):
    """A group of two InService replicas whose private addresses are in 127.0.0.0/24."""
    if emulator.name == "localstack":
        pytest.skip(NO_AUTO_SCALING)
    return Pool(emulator, vpc_cidr="127.0.0.0/16", subnet_cidr="127.0.0.0/24")


def private_addresses(pool):
    described = pool.ec2.describe_instances(InstanceIds=pool.instance_ids)["Reservations"]
    found = {i["InstanceId"]: i["PrivateIpAddress"] for r in described for i in r["Instances"]}
    return [found[instance_id] for instance_id in pool.instance_ids]


def push_asg(tmp_path, emulator, document, port, *args):
    return run_aws(tmp_path, emulator, "clients", "push", "--file", str(document), "--asg", Pool.GROUP, "--port", str(port), *args)


def test_asg_pushes_to_every_in_service_replica(tmp_path, emulator, loopback_pool, secret_dir, signer):
    pool = loopback_pool
    addresses = private_addresses(pool)
    labels = [f"{instance_id} ({address})" for instance_id, address in zip(pool.instance_ids, addresses)]
    second, third, fourth = (tmp_path / name for name in ["2.signed", "3.signed", "5.signed"])
    second.write_bytes(signer.sign(tmp_path / "F2", clients_text(2, SECOND)))
    third.write_bytes(signer.sign(tmp_path / "F3", clients_text(3, FIRST + SECOND)))
    fourth.write_bytes(signer.sign(tmp_path / "F5", clients_text(5, SECOND)))
    port = free_port()
    with replicas(tmp_path, secret_dir, signer, addresses, port=port) as [one, other]:
        result = push_asg(tmp_path, emulator, second, port)
        assert result.returncode == 0, result.stdout + result.stderr
        assert lines(result.stdout) == {label: "holds serial 2 (2 clients)" for label in labels}
        assert result.stdout.splitlines()[-1] == "all 2 host(s) hold serial 2"
        assert [serial_of(one), serial_of(other)] == [2, 2]

        # One replica is already ahead (pushed serial 5 alone): it refuses serial 3, the other takes it.
        assert push(tmp_path, "--file", str(fourth), "--url", other.url).returncode == 0
        result = push_asg(tmp_path, emulator, third, port)
        assert result.returncode == 1, result.stdout + result.stderr
        assert lines(result.stdout)[labels[0]] == "holds serial 3 (3 clients)"
        assert lines(result.stdout)[labels[1]].startswith("FAILED: 409: ")
        assert lines(result.stdout)[labels[1]].endswith("(serial in force: 5)")
        assert result.stdout.splitlines()[-1] == "1 of 2 host(s) did not take the document"
        assert [serial_of(one), serial_of(other)] == [3, 5]

        # A replica on standby is not pushed to, and says so.
        pool.autoscaling.enter_standby(
            AutoScalingGroupName=Pool.GROUP, InstanceIds=[pool.instance_ids[1]], ShouldDecrementDesiredCapacity=True
        )
        result = push_asg(tmp_path, emulator, fourth, port)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{pool.instance_ids[1]}: not pushed: Standby, not InService" in result.stdout
        assert lines(result.stdout)[labels[0]] == "holds serial 5 (2 clients)"
        assert result.stdout.splitlines()[-1] == "all 1 host(s) hold serial 5"


def test_asg_names_a_group_it_cannot_read(tmp_path, emulator, signer):
    """On moto the group does not exist; LocalStack has no Auto Scaling to ask."""
    document = tmp_path / "F.signed"
    document.write_bytes(signer.sign(tmp_path / "F", clients_text(2, SECOND)))
    result = run_aws(tmp_path, emulator, "clients", "push", "--file", str(document), "--asg", "no-such-pool")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Auto Scaling group no-such-pool" in result.stderr


def test_cargo_xtask_lists_clients_push_and_forwards_it():
    cargo = os.environ.get("CARGO", "cargo")
    listing = subprocess.run([cargo, "xtask"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert "Push a signed clients document" in listing.stdout + listing.stderr
    help_text = subprocess.run(
        [cargo, "xtask", "clients", "push", "--help"], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "--file" in help_text.stdout and "--asg" in help_text.stdout and "--url" in help_text.stdout
