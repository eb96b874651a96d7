"""`seal` and `audit` against two EC2 emulators, moto's server and LocalStack
(aws_emulators.py starts them): a loose host is audited, sealed, audited again,
sealed again. Every test runs against both, with the same assertions."""

import os
import subprocess

import pytest

# The emulators' plugin is imported here before pytest registers it: its asserts are rewritten all the same.
pytest.register_assert_rewrite("aws_emulators")

from aws_emulators import SERVICE_PORT, check_lines, denying_proxy, run_tool, tool_env
from conftest import REPO, binary, free_port

pytest_plugins = ["aws_emulators"]


class Scenario:
    """A host set up by hand the loose way: SSH open, a key pair, broad rules."""

    def __init__(self, ec2):
        self.ec2 = ec2
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        self.prefix_list = ec2.create_managed_prefix_list(
            PrefixListName="office", MaxEntries=5, AddressFamily="IPv4", Entries=[{"Cidr": "198.51.100.0/24"}]
        )["PrefixList"]["PrefixListId"]
        ec2.create_key_pair(KeyName="admin-laptop")
        self.admins = ec2.create_security_group(GroupName="admins", Description="admin hosts", VpcId=vpc)["GroupId"]
        self.service = ec2.create_security_group(GroupName="cryptoserver", Description="service", VpcId=vpc)["GroupId"]
        self.broad = ec2.create_security_group(GroupName="broad", Description="broad", VpcId=vpc)["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=self.service,
            IpPermissions=[
                tcp(SERVICE_PORT, SERVICE_PORT, IpRanges=[{"CidrIp": "10.0.0.0/16", "Description": "clients"}]),
                tcp(22, 22, IpRanges=[{"CidrIp": "0.0.0.0/0", "Description": "ssh"}]),
                tcp(22, 22, Ipv6Ranges=[{"CidrIpv6": "::/0", "Description": "ssh v6"}]),
            ],
        )
        ec2.authorize_security_group_ingress(
            GroupId=self.broad,
            IpPermissions=[
                {
                    "IpProtocol": "-1",
                    "IpRanges": [{"CidrIp": "192.168.0.0/16", "Description": "office lan"}],
                    "Ipv6Ranges": [{"CidrIpv6": "2001:db8::/32", "Description": "office lan v6"}],
                },
                tcp(0, 65535, UserIdGroupPairs=[{"GroupId": self.admins}]),
                tcp(20, 25, PrefixListIds=[{"PrefixListId": self.prefix_list}]),
            ],
        )
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        instance = ec2.run_instances(
            ImageId=image,
            MinCount=1,
            MaxCount=1,
            KeyName="admin-laptop",
            SubnetId=subnet,
            SecurityGroupIds=[self.service, self.broad],
            BlockDeviceMappings=[
                {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 160, "Encrypted": True, "DeleteOnTermination": True}}
            ],
            MetadataOptions={"HttpTokens": "optional", "HttpPutResponseHopLimit": 2},
        )["Instances"][0]
        self.instance_id = instance["InstanceId"]
        self.volume_id = instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]

    def instance(self):
        return self.ec2.describe_instances(InstanceIds=[self.instance_id])["Reservations"][0]["Instances"][0]

    def ingress(self, group_id):
        """(protocol, from, to, source) of every rule, one per source."""
        group = self.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
        rules = set()
        for permission in group["IpPermissions"]:
            ports = (permission["IpProtocol"], permission.get("FromPort"), permission.get("ToPort"))
            sources = (
                [r["CidrIp"] for r in permission["IpRanges"]]
                + [r["CidrIpv6"] for r in permission["Ipv6Ranges"]]
                + [p["PrefixListId"] for p in permission["PrefixListIds"]]
                + [p["GroupId"] for p in permission["UserIdGroupPairs"]]
            )
            rules.update((*ports, source) for source in sources)
        return rules

    def state(self):
        """Everything seal may change, to compare before and after."""
        instance = self.instance()
        return {
            "service": self.ingress(self.service),
            "broad": self.ingress(self.broad),
            "key_pairs": [k["KeyName"] for k in self.ec2.describe_key_pairs()["KeyPairs"]],
            "metadata": (
                instance["MetadataOptions"]["HttpTokens"],
                instance["MetadataOptions"]["HttpPutResponseHopLimit"],
            ),
            "termination": self.termination_protection(),
            "mappings": [(m["DeviceName"], m["Ebs"]["DeleteOnTermination"]) for m in instance["BlockDeviceMappings"]],
            "tags": sorted(t["Key"] for t in instance.get("Tags", [])),
        }

    def termination_protection(self):
        attribute = self.ec2.describe_instance_attribute(InstanceId=self.instance_id, Attribute="disableApiTermination")
        return attribute["DisableApiTermination"]["Value"]


def tcp(from_port, to_port, **sources):
    return {"IpProtocol": "tcp", "FromPort": from_port, "ToPort": to_port, **sources}


def reaches_ssh(rule):
    protocol, from_port, to_port, _ = rule
    return protocol == "-1" or (protocol in ("tcp", "6") and from_port <= 22 <= to_port)


@pytest.fixture
def scenario(ec2):
    return Scenario(ec2)


def test_audit_names_each_failing_check(tmp_path, emulator, scenario):
    result = run_tool(tmp_path, emulator, "audit", scenario.instance_id)
    assert result.returncode == 1, result.stderr
    checks = check_lines(result.stdout)
    assert sorted(checks) == [1, 2, 3, 4, 5, 6, 7]
    failing = sorted(number for number, line in checks.items() if line.startswith("FAIL"))
    assert failing == [1, 2, 3, 5, 6, 7]
    assert "0.0.0.0/0" in checks[1] and "::/0" in checks[1] and "all traffic from 192.168.0.0/16" in checks[1]
    assert "all traffic from 2001:db8::/32" in checks[1]
    assert f"security group {scenario.admins}" in checks[1] and scenario.prefix_list in checks[1]
    assert '"admin-laptop"' in checks[2]
    assert "IMDSv1" in checks[3] and "the PUT response hop limit is 2" in checks[3]
    assert checks[4].startswith("PASS")
    assert "off" in checks[5]
    assert f"{scenario.volume_id} on /dev/sdf is deleted when the instance terminates" in checks[6]
    assert "cryptoserver:sealed" in checks[7]
    assert f"{scenario.instance_id} is NOT sealed: 6 of 7 checks fail" in result.stdout


def test_audit_notes_snapshots_of_the_secrets_volume_that_are_no_backups(tmp_path, emulator, scenario):
    """A snapshot without the fingerprint tag (which the module's backups get only once
    the first boot's ready line is named, and `snapshot` gives its own) may hold
    incomplete secrets: the audit names it, and leaves the exit status to the checks."""
    ec2 = scenario.ec2
    tagged = [{"ResourceType": "snapshot", "Tags": [{"Key": "cryptoserver:fingerprint", "Value": "0" * 32}]}]
    backup = ec2.create_snapshot(VolumeId=scenario.volume_id, TagSpecifications=tagged)["SnapshotId"]
    early = ec2.create_snapshot(VolumeId=scenario.volume_id, Description="DLM at 03:00")["SnapshotId"]
    result = run_tool(tmp_path, emulator, "audit", scenario.instance_id)
    assert result.returncode == 1, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: snapshot")]
    assert len(notes) == 1, result.stdout
    assert notes[0].startswith(f"note: snapshot {early} of the secrets volume (started 20")
    assert "has no tag cryptoserver:fingerprint, so it may predate the first boot's ready line" in notes[0]
    assert backup not in result.stdout


def test_seal_dry_run_changes_nothing(tmp_path, emulator, scenario):
    before = scenario.state()
    result = run_tool(tmp_path, emulator, "seal", scenario.instance_id, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "--dry-run: nothing was changed." in result.stdout
    assert f"{scenario.service}: remove TCP 22 from 0.0.0.0/0" in result.stdout
    assert 'delete key pair "admin-laptop"' in result.stdout
    assert scenario.state() == before


def test_seal_closes_port_22_only_then_audit_passes_and_a_second_seal_does_nothing(tmp_path, emulator, scenario):
    before = scenario.state()
    result = run_tool(tmp_path, emulator, "seal", scenario.instance_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{scenario.instance_id} is sealed: all 7 checks pass" in result.stdout
    assert "GRE, ESP, SCTP" in result.stdout, "the protocols an all-traffic rule loses are said"
    printed_key = result.stdout.index('delete key pair "admin-laptop"')
    assert printed_key < result.stdout.index("tag the instance cryptoserver:sealed")

    after = scenario.state()
    # The service port's rule is untouched; only the port-22 rules left that group.
    assert after["service"] == {rule for rule in before["service"] if not reaches_ssh(rule)}
    assert ("tcp", SERVICE_PORT, SERVICE_PORT, "10.0.0.0/16") in after["service"]
    # Broad rules keep everything but TCP port 22, for the same sources.
    assert after["broad"] == {
        ("tcp", 0, 21, "192.168.0.0/16"),
        ("tcp", 23, 65535, "192.168.0.0/16"),
        ("udp", 0, 65535, "192.168.0.0/16"),
        ("icmp", -1, -1, "192.168.0.0/16"),
        ("tcp", 0, 21, "2001:db8::/32"),
        ("tcp", 23, 65535, "2001:db8::/32"),
        ("udp", 0, 65535, "2001:db8::/32"),
        ("icmpv6", -1, -1, "2001:db8::/32"),
        ("tcp", 0, 21, scenario.admins),
        ("tcp", 23, 65535, scenario.admins),
        ("tcp", 20, 21, scenario.prefix_list),
        ("tcp", 23, 25, scenario.prefix_list),
    }
    assert not any(reaches_ssh(rule) for rule in after["service"] | after["broad"])
    broad = scenario.ec2.describe_security_groups(GroupIds=[scenario.broad])["SecurityGroups"][0]
    descriptions = {r.get("Description") for p in broad["IpPermissions"] for r in p["IpRanges"] + p["Ipv6Ranges"]}
    assert descriptions == {"office lan", "office lan v6"}, "replacement rules keep their source's description"
    assert after["key_pairs"] == []
    assert after["metadata"] == ("required", 1)
    assert after["termination"] is True
    assert after["mappings"] == [("/dev/sdf", False)]
    assert after["tags"] == ["cryptoserver:sealed"]

    audit = run_tool(tmp_path, emulator, "audit", scenario.instance_id)
    assert audit.returncode == 0, audit.stdout
    assert all(line.startswith("PASS") for line in check_lines(audit.stdout).values())

    again = run_tool(tmp_path, emulator, "seal", scenario.instance_id)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing to do" in again.stdout
    assert "[1/" not in again.stdout
    assert scenario.state() == after


def test_endpoint_from_the_environment(tmp_path, emulator, scenario):
    result = subprocess.run(
        [binary("xtask-aws"), "audit", "--instance-id", scenario.instance_id],
        env=tool_env(tmp_path, emulator, endpoint_url=emulator.url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert len(check_lines(result.stdout)) == 7


def test_unknown_instance_is_a_clear_error(tmp_path, emulator, scenario):
    for command in ("audit", "seal"):
        result = run_tool(tmp_path, emulator, command, "i-0123456789abcdef0")
        assert result.returncode == 2, result.stdout
        assert "instance i-0123456789abcdef0 does not exist" in result.stderr
        assert "--region" in result.stderr
        assert "PASS" not in result.stdout and "FAIL" not in result.stdout


def test_unreachable_endpoint_is_a_clear_error_and_changes_nothing(tmp_path, emulator, scenario):
    before = scenario.state()
    nobody = f"http://127.0.0.1:{free_port()}"
    for command in ("audit", "seal"):
        result = run_tool(tmp_path, emulator, command, scenario.instance_id, endpoint_url=nobody)
        assert result.returncode == 2, result.stdout
        assert f"cannot reach the EC2 endpoint {nobody}" in result.stderr
        assert "PASS" not in result.stdout and "FAIL" not in result.stdout
    assert scenario.state() == before


def test_bad_arguments_are_refused(tmp_path, emulator, scenario):
    result = run_tool(tmp_path, emulator, "audit", scenario.instance_id, "--port", "22")
    assert result.returncode == 2
    assert "the service port cannot be 22" in result.stderr
    result = run_tool(tmp_path, emulator, "audit", scenario.instance_id, "--secrets-volume", "vol-0000000000000000")
    assert result.returncode == 1
    assert "volume vol-0000000000000000 is not attached to the instance (attached: " in result.stdout
    result = run_tool(tmp_path, emulator, "audit", scenario.instance_id, "--secrets-device", "sdf")
    assert result.returncode == 1
    assert f"FAIL 6. secrets volume encrypted and kept on termination: {scenario.volume_id} on /dev/sdf" in result.stdout
    result = subprocess.run(
        [binary("xtask-aws"), "audit", "--instance-id", scenario.instance_id],
        env=tool_env(tmp_path, emulator, endpoint_url="127.0.0.1:5000"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert 'endpoint "127.0.0.1:5000" (from --endpoint-url or AWS_ENDPOINT_URL) is not an http:// or https:// URL' in result.stderr


def test_missing_credentials_are_a_clear_error(tmp_path, emulator, scenario):
    env = tool_env(tmp_path, emulator)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    result = subprocess.run(
        [binary("xtask-aws"), "seal", "--instance-id", scenario.instance_id, "--endpoint-url", emulator.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout
    assert "no usable AWS credentials" in result.stderr
    assert "AWS_ACCESS_KEY_ID" in result.stderr


def test_what_seal_cannot_change_is_said_and_the_host_stays_untagged(tmp_path, emulator, ec2):
    """A public address and an unencrypted secrets volume: seal does the rest, says why not
    these, does not tag the host, and the audit it ends with fails on exactly them."""
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="exposed", Description="exposed", VpcId=vpc)["GroupId"]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet, "Groups": [group], "AssociatePublicIpAddress": True}],
    )["Instances"][0]
    instance_id = instance["InstanceId"]
    # The secrets volume is made apart and attached (kept on termination, as attached
    # volumes are): LocalStack marks every volume that run_instances' block device
    # mappings create as encrypted, whatever the mapping says.
    volume_id = ec2.create_volume(AvailabilityZone=instance["Placement"]["AvailabilityZone"], Size=160)["VolumeId"]
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    assert ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["Encrypted"] is False

    result = run_tool(tmp_path, emulator, "seal", instance_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"note: secrets volume {volume_id} is not encrypted and EBS cannot encrypt a volume in place" in result.stdout
    assert "note: public IP " in result.stdout
    assert "tag the instance" not in result.stdout
    checks = check_lines(result.stdout)
    assert sorted(number for number, line in checks.items() if line.startswith("FAIL")) == [4, 6, 7]
    assert f"{volume_id} on /dev/sdf is not encrypted" in checks[6]
    tags = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0].get("Tags", [])
    assert "cryptoserver:sealed" not in [tag["Key"] for tag in tags]


def test_an_error_midway_says_what_was_applied_and_a_rerun_completes(tmp_path, emulator, scenario):
    with denying_proxy(emulator.url, "ModifyInstanceMetadataOptions") as proxy:
        result = run_tool(tmp_path, emulator, "seal", scenario.instance_id, endpoint_url=proxy)
    assert result.returncode == 2, result.stdout
    assert "ModifyInstanceMetadataOptions was refused" in result.stderr
    assert "UnauthorizedOperation" in result.stderr
    applied = result.stderr.split("Applied (")[1].split("Not applied (")[0]
    not_applied = result.stderr.split("Not applied (")[1]
    assert "remove TCP 22 from 0.0.0.0/0" in applied
    assert "require IMDSv2" in not_applied and 'delete key pair "admin-laptop"' in not_applied
    midway = scenario.state()
    assert not any(reaches_ssh(rule) for rule in midway["service"] | midway["broad"])
    assert midway["metadata"] == ("optional", 2) and midway["key_pairs"] == ["admin-laptop"] and midway["tags"] == []

    rerun = run_tool(tmp_path, emulator, "seal", scenario.instance_id)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert ": add " not in rerun.stdout and ": remove " not in rerun.stdout, "rules already done are not redone"
    assert "require IMDSv2" in rerun.stdout
    assert f"{scenario.instance_id} is sealed: all 7 checks pass" in rerun.stdout


def test_cargo_xtask_forwards_and_keeps_the_exit_status(tmp_path, emulator, scenario):
    cargo = os.environ.get("CARGO", "cargo")
    result = subprocess.run(
        [cargo, "xtask", "audit", "--instance-id", scenario.instance_id, "--endpoint-url", emulator.url],
        cwd=REPO,
        env=tool_env(tmp_path, emulator),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 1, result.stderr
    assert len(check_lines(result.stdout)) == 7
    help_text = subprocess.run(
        [cargo, "xtask", "seal", "--help"], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "--dry-run" in help_text.stdout
