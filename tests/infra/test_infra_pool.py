"""The pool module's promises, in what its files say (python-hcl2): replicas born
sealed from the launch template, each with its own encrypted volume restored from the
snapshot and deleted with it, user data that makes them replicas of one fingerprint,
health checks on /readyz that the group acts on, rolling refreshes, no way in but the
service port through the load balancer, and no way out."""

import pytest

from infra_tools import TERRAFORM, blocks, merged, resources

POOL = TERRAFORM / "modules" / "pool"


@pytest.fixture(scope="module")
def pool():
    return merged(POOL)


@pytest.fixture(scope="module")
def local(pool):
    return {key: value for block in pool["locals"] for key, value in block.items()}


def single(mapping):
    assert len(mapping) == 1, mapping
    return next(iter(mapping.values()))


def test_the_launch_template_is_sealed(pool):
    template = single(resources(pool, "aws_launch_template"))
    for door in ("key_name", "iam_instance_profile", "vpc_security_group_ids", "security_group_names"):
        assert door not in template, door
    metadata = template["metadata_options"][0]
    assert metadata["http_endpoint"] == "enabled"
    assert metadata["http_tokens"] == "required"
    assert metadata["http_put_response_hop_limit"] == 1
    assert metadata["instance_metadata_tags"] == "disabled"
    interface = single({0: template["network_interfaces"]})[0]
    assert interface["associate_public_ip_address"] is False
    assert interface["security_groups"] == ["${aws_security_group.instances.id}"]
    assert template["user_data"] == "${base64encode(module.user_data.user_data)}"


def test_every_volume_is_encrypted_and_the_secrets_come_from_the_snapshot_and_go_with_the_instance(pool):
    template = single(resources(pool, "aws_launch_template"))
    mappings = {mapping["device_name"]: mapping["ebs"][0] for mapping in template["block_device_mappings"]}
    assert len(mappings) == 2
    root = mappings["${data.aws_ami.this.root_device_name}"]
    secrets = mappings["/dev/sdf"]
    for volume in (root, secrets):
        assert volume["encrypted"] is True
        assert volume["kms_key_id"] == "${var.kms_key_arn}"
        assert volume["delete_on_termination"] is True
    assert "snapshot_id" not in root
    assert secrets["snapshot_id"] == "${var.secrets_snapshot_id}"
    snapshot = single({name: body for block in pool["data"] for kind, named in block.items()
                       if kind == "aws_ebs_snapshot" for name, body in named.items()})
    conditions = [rule["condition"] for rule in snapshot["lifecycle"][0]["postcondition"]]
    assert "${self.encrypted}" in conditions
    assert any('"cryptoserver:fingerprint"' in condition and "var.expected_fingerprint" in condition for condition in conditions)


def test_instances_and_volumes_carry_the_contract_tags(pool, local):
    template = single(resources(pool, "aws_launch_template"))
    specifications = template["dynamic"][0]["tag_specifications"]
    assert specifications["for_each"] == '${toset(["instance", "volume"])}'
    assert specifications["content"][0]["tags"] == "${local.instance_tags}"
    tags = local["instance_tags"]
    for tag in ('"cryptoserver:mode" = local.mode', '"cryptoserver:fingerprint" = var.expected_fingerprint',
                '"cryptoserver:role" = "replica"', '"cryptoserver:sealed" = "true"'):
        assert tag in tags, tag


def test_user_data_makes_a_replica_of_the_expected_fingerprint_that_finds_its_volume(pool, local):
    settings = local["settings"]
    assert 'CRYPTOSERVER_SECRETS_ROLE = "replica"' in settings
    assert "CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT = var.expected_fingerprint" in settings
    assert 'CRYPTOSERVER_BIND = "0.0.0.0:${var.port}"' in settings
    text = (POOL / "main.tf").read_text()
    assert "CRYPTOSERVER_SECRETS_VOLUME_ID" not in text and "CRYPTOSERVER_SECRETS_DEVICE" not in text
    call = blocks(pool, "module")["user_data"]
    assert call["source"] == "../user-data"
    assert call["settings"] == "${local.settings}" and call["mode"] == "${local.mode}"
    assert call["hot_copy"] == "${var.hot_copy}"
    assert call["tls_server_name"] == "${var.tls ? var.tls_server_name : null}"
    environment = blocks(pool, "variable")["environment"]["validation"][1]["condition"]
    assert '!startswith(key, "CRYPTOSERVER_SECRETS_")' in environment


def test_the_group_replaces_replicas_the_load_balancer_finds_unready_and_refreshes_them_rolling(pool, local):
    group = single(resources(pool, "aws_autoscaling_group"))
    assert group["health_check_type"] == "ELB"
    assert group["health_check_grace_period"] == "${local.health_check_grace_period}"
    assert group["vpc_zone_identifier"] == "${var.subnet_ids}"
    assert group["target_group_arns"] == ["${aws_lb_target_group.this.arn}"]
    assert group["launch_template"][0]["version"] == "${aws_launch_template.this.latest_version}"
    refresh = group["instance_refresh"][0]
    assert refresh["strategy"] == "Rolling"
    # Not the grace period (the default): a refresh would wait hours per MODE32 replica.
    assert group["default_instance_warmup"] == 60
    assert refresh["preferences"][0]["min_healthy_percentage"] == "${var.instance_refresh_min_healthy_percentage}"
    for name in ("min_size", "max_size", "desired_capacity"):
        assert group[name] == f"${{var.{name}}}"
    # Per mode: long enough to read 128 GiB from a lazily restored volume.
    grace = local["health_check_grace_period"]
    assert grace == '${coalesce(var.health_check_grace_period, contains(["MODE32", "MODE32X"], local.mode) ? 7200 : 600)}'
    capacity = blocks(pool, "variable")["desired_capacity"]["validation"][0]["condition"]
    assert "var.min_size <= var.desired_capacity" in capacity and "var.desired_capacity <= var.max_size" in capacity
    subnets = " ".join(rule["condition"] for rule in blocks(pool, "variable")["subnet_ids"]["validation"])
    assert "length(var.subnet_ids) >= 2" in subnets


def test_an_internal_network_load_balancer_passes_tcp_through_and_health_checks_readyz(pool):
    balancer = single(resources(pool, "aws_lb"))
    assert balancer["internal"] is True
    assert balancer["load_balancer_type"] == "network"
    assert balancer["security_groups"] == ["${aws_security_group.lb.id}"]
    preconditions = " ".join(rule["condition"] for rule in balancer["lifecycle"][0]["precondition"])
    assert "availability_zone" in preconditions and "vpc_id" in preconditions
    listener = single(resources(pool, "aws_lb_listener"))
    assert listener["protocol"] == "TCP" and listener["port"] == "${var.port}"
    assert listener["default_action"][0]["target_group_arn"] == "${aws_lb_target_group.this.arn}"
    group = single(resources(pool, "aws_lb_target_group"))
    assert group["protocol"] == "TCP" and group["target_type"] == "instance" and group["port"] == "${var.port}"
    check = group["health_check"][0]
    assert check["path"] == "/readyz"
    assert check["protocol"] == '${var.tls ? "HTTPS" : "HTTP"}'
    assert check["port"] == "traffic-port"
    assert check["matcher"] == "200"


def test_the_load_balancer_is_ipv4_only_so_every_client_arrives_with_its_own_address(pool):
    """A dual-stack NLB forwards IPv6 clients to the IPv4 targets from its own address,
    the one its health checks come from: all IPv6 clients would be one client, and one
    of them could get a replica's /readyz refused at accept (docs/pool.md)."""
    balancer = single(resources(pool, "aws_lb"))
    assert balancer["ip_address_type"] == "ipv4"
    assert "allowed_ipv6_cidr_blocks" not in blocks(pool, "variable")
    assert "ipv6" not in str(balancer["lifecycle"])
    assert single(resources(pool, "aws_lb_target_group")).get("ip_address_type", "ipv4") == "ipv4"
    readme = (POOL / "README.md").read_text()
    assert "## IPv4 clients only" in readme and "| `allowed_ipv6_cidr_blocks`" not in readme


def test_clients_reach_only_the_service_port_of_the_load_balancer_and_replicas_have_no_egress(pool):
    for kind in ("aws_security_group_rule", "aws_vpc_security_group_ingress_rule", "aws_vpc_security_group_egress_rule"):
        assert not resources(pool, kind), f"{kind}: every rule belongs in its security group"
    groups = resources(pool, "aws_security_group")
    assert set(groups) == {"lb", "instances"}
    instances = groups["instances"]
    assert instances["egress"] == []
    ingress = single({0: instances["ingress"]})[0]
    assert ingress["security_groups"] == ["${aws_security_group.lb.id}"]
    assert "cidr_blocks" not in ingress and "ipv6_cidr_blocks" not in ingress
    balancer = groups["lb"]
    (client,) = balancer["ingress"]
    (forward,) = balancer["egress"]
    for rule in (ingress, client, forward):
        assert rule["protocol"] == "tcp"
        assert rule["from_port"] == rule["to_port"] == "${var.port}"
    assert client["cidr_blocks"] == "${var.allowed_cidr_blocks}"
    assert "ipv6_cidr_blocks" not in client
    assert client["security_groups"] == "${var.allowed_security_group_ids}"
    assert forward["cidr_blocks"] == "${[for subnet in local.subnets : subnet.cidr_block]}"
    port = blocks(pool, "variable")["port"]["validation"][0]["condition"]
    assert "var.port >= 1024" in port


@pytest.mark.parametrize("directory", [TERRAFORM, POOL], ids=["root", "pool"])
def test_hot_copy_is_off_by_default_and_checked_against_the_instance_type(directory):
    module = merged(directory)
    variable = blocks(module, "variable")["hot_copy"]
    assert variable["type"] == "bool" and variable["default"] is False
    assert blocks(module, "module")["user_data"]["hot_copy"] == "${var.hot_copy}"
    assert blocks(module, "module")["user_data"]["instance_type"] == "${var.instance_type}"


def test_the_hot_copy_needs_an_nvme_instance_store_disk_the_mode_fits_on():
    shared = merged(TERRAFORM / "modules" / "user-data")
    local = {key: value for block in shared["locals"] for key, value in block.items()}
    assert '!var.hot_copy ? {} : {CRYPTOSERVER_SECRETS_HOT_COPY = "instance-store"}' in local["environment"]
    assert local["hot_copy_needs_gb"] == '${contains(["MODE32", "MODE32X"], local.mode) ? ceil(130 * pow(1024, 3) / pow(1000, 3)) : 1}'
    instance_type = single({name: body for block in shared["data"] for kind, named in block.items()
                            if kind == "aws_ec2_instance_type" for name, body in named.items()})
    assert instance_type["count"] == "${var.hot_copy ? 1 : 0}"
    condition = instance_type["lifecycle"][0]["postcondition"][0]["condition"]
    for needed in ("self.instance_storage_supported", 'self.ebs_nvme_support == "required"', "self.instance_disks",
                   "local.hot_copy_needs_gb"):
        assert needed in condition, needed
