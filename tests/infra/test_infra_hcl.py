"""Every Terraform and Packer file parses (python-hcl2), and the sealed host's promises
hold in what they say: no way in but the service port, IMDSv2 only, encrypted volumes,
secrets that no plan deletes."""

import re
import subprocess

import pytest
import yaml

from conftest import binary
from infra_tools import (
    DEPLOY,
    PACKER,
    REPO,
    TERRAFORM,
    blocks,
    hcl_files,
    merged,
    module_dirs,
    parse_hcl,
    resources,
    shellcheck,
    terraform_files,
)


@pytest.fixture(scope="module")
def module():
    """The root module's own files (not its examples nor submodules), merged."""
    return merged(TERRAFORM)


@pytest.fixture(scope="module")
def user_data():
    """The user-data module both the root module and the pool call."""
    return merged(TERRAFORM / "modules" / "user-data")


def local_values(parsed):
    return {key: value for block in parsed["locals"] for key, value in block.items()}


@pytest.fixture(scope="module")
def packer():
    return parse_hcl(PACKER / "cryptoserver.pkr.hcl")


def single(mapping):
    assert len(mapping) == 1, mapping
    return next(iter(mapping.values()))


def test_every_hcl_file_parses():
    files = hcl_files()
    assert {path.relative_to(REPO).as_posix() for path in files} >= {
        "terraform/main.tf",
        "terraform/variables.tf",
        "terraform/outputs.tf",
        "terraform/versions.tf",
        "terraform/examples/basic/main.tf",
        "packer/cryptoserver.pkr.hcl",
    }
    for path in files:
        assert parse_hcl(path), path


def test_no_key_pair_anywhere():
    for path in hcl_files():
        assert not re.search(r"^\s*key_name\s*=", path.read_text(), re.MULTILINE), path
    for path in terraform_files():
        assert not resources(parse_hcl(path), "aws_key_pair"), path


def test_the_instance_is_sealed(module):
    instance = single(resources(module, "aws_instance"))
    assert "key_name" not in instance
    assert instance["associate_public_ip_address"] is False
    assert instance["disable_api_termination"] is True
    assert "iam_instance_profile" not in instance
    assert instance["tags"].count('"cryptoserver:sealed" = "true"') == 1
    metadata = single({0: instance["metadata_options"]})[0]
    assert metadata["http_tokens"] == "required"
    assert metadata["http_put_response_hop_limit"] == 1
    assert "ebs_block_device" not in instance, "the secrets volume is a separate attachment"
    # cloud-init writes the files once per instance: a change of the user data replaces
    # it, through terraform_data (less the clients file with a signer: modules/user-data).
    [lifecycle] = instance["lifecycle"]
    assert lifecycle["ignore_changes"] == ["user_data"]
    assert lifecycle["replace_triggered_by"] == ["${terraform_data.replacement_user_data}"]
    assert resources(module, "terraform_data")["replacement_user_data"] == {"input": "${module.user_data.replacement_user_data}"}
    assert "user_data_replace_on_change" not in instance


def test_volumes_are_encrypted_and_the_secrets_cannot_be_destroyed(module):
    instance = single(resources(module, "aws_instance"))
    assert instance["root_block_device"][0]["encrypted"] is True
    volume = single(resources(module, "aws_ebs_volume"))
    assert volume["encrypted"] is True
    assert volume["kms_key_id"] == "${var.kms_key_arn}"
    assert volume["lifecycle"][0]["prevent_destroy"] is True
    attachment = single(resources(module, "aws_volume_attachment"))
    assert attachment["volume_id"] == "${aws_ebs_volume.secrets.id}"
    assert attachment["instance_id"] == "${aws_instance.this.id}"
    assert attachment["stop_instance_before_detaching"] is True


def test_user_data_passes_mode_port_and_volume_id(module, user_data):
    local = local_values(module)
    settings = local["settings"]
    assert 'CRYPTOSERVER_BIND = "${local.bind_host}:${var.port}"' in settings
    assert "CRYPTOSERVER_SECRETS_VOLUME_ID = aws_ebs_volume.secrets.id" in settings
    call = blocks(module, "module")["user_data"]
    assert call["source"] == "./modules/user-data"
    assert call["mode"] == "${local.mode}" and call["settings"] == "${local.settings}"
    assert call["hot_copy"] == "${var.hot_copy}" and call["instance_type"] == "${var.instance_type}"
    instance = single(resources(module, "aws_instance"))
    assert instance["user_data"] == "${module.user_data.user_data}"
    shared = local_values(user_data)
    assert "CRYPTOSERVER_MODE = local.mode" in shared["environment"]
    assert shared["env_file"]["path"] == "/etc/cryptoserver/env"
    assert shared["user_data"].startswith("#cloud-config") and "write_files" in shared["user_data"]


def test_variable_defaults(module):
    variables = blocks(module, "variable")
    assert variables["data_volume_size"]["default"] == 160
    assert variables["data_volume_type"]["default"] == "gp3"
    assert variables["mode"]["default"] == "MODE32"
    assert variables["enable_snapshot_backups"]["default"] is False
    assert variables["egress_cidr_blocks"]["default"] == []


@pytest.mark.parametrize("directory", module_dirs(), ids=lambda path: path.relative_to(REPO).as_posix())
def test_every_variable_is_typed_described_and_validated(directory):
    variables = blocks(merged(directory), "variable")
    assert variables, directory
    for name, variable in variables.items():
        assert variable.get("type"), name
        assert len(variable.get("description", "")) > 20, name
        # A boolean has nothing to validate.
        if variable["type"] != "bool":
            assert variable.get("validation"), f"variable {name} has no validation"


def test_volume_size_is_validated_against_the_mode(module):
    size = blocks(module, "variable")["data_volume_size"]
    conditions = " ".join(rule["condition"] for rule in size["validation"])
    assert "var.mode" in conditions and "130" in conditions


def test_every_output_is_described(module):
    outputs = blocks(module, "output")
    assert set(outputs) >= {"instance_id", "private_ip", "endpoint", "security_group_id", "data_volume_id"}
    for name, output in outputs.items():
        assert output.get("description"), name


def test_the_only_ingress_is_the_service_port_and_no_egress_by_default(module):
    for kind in ("aws_security_group_rule", "aws_vpc_security_group_ingress_rule", "aws_vpc_security_group_egress_rule"):
        assert not resources(module, kind), f"{kind}: every rule belongs in the one security group"
    group = single(resources(module, "aws_security_group"))
    ingress = single({0: group["dynamic"]})[0]["ingress"]
    assert ingress["for_each"] == "${local.ports}"
    rule = ingress["content"][0]
    assert rule["protocol"] == "tcp"
    assert rule["from_port"] == rule["to_port"] == "${ingress.value}"
    local = local_values(module)
    assert local["ports"] == "${merge({service = var.port}, var.metrics_port == null ? {} : {metrics = var.metrics_port})}"
    # Both ports are validated to be 1024 or more, so neither can be 22.
    variables = blocks(module, "variable")
    for name in ("port", "metrics_port"):
        condition = variables[name]["validation"][0]["condition"]
        assert f"var.{name} >= 1024" in condition, condition
    assert "egress_cidr_blocks" in group["egress"]
    assert local["egress_cidr_blocks"].startswith("${length(var.egress_cidr_blocks) == 0 ? [] :")


def test_snapshots_are_off_by_default_and_only_through_dlm(module):
    for kind in ("aws_dlm_lifecycle_policy", "aws_iam_role"):
        for name, body in resources(module, kind).items():
            assert body["count"] == "${var.enable_snapshot_backups ? 1 : 0}", (kind, name)
    for kind in ("aws_ebs_snapshot", "aws_ebs_snapshot_copy", "aws_backup_plan"):
        assert not resources(module, kind), kind


def test_only_a_volume_whose_first_boot_completed_is_backed_up_and_only_a_backup_is_restored(module):
    """DLM snapshots at a fixed time whatever the volume's age: it selects the volume
    only once the operator names the fingerprint of the ready line, which every
    snapshot then carries, and a restore takes only a snapshot carrying one."""
    volume = resources(module, "aws_ebs_volume")["secrets"]
    assert volume["tags"] == (
        '${merge(local.tags, {Name = "${var.name}-secrets"}, var.secrets_fingerprint == null ? {} : '
        '{"cryptoserver:backup" = var.name, "cryptoserver:fingerprint" = var.secrets_fingerprint})}'
    )
    policy = resources(module, "aws_dlm_lifecycle_policy")["secrets"]["policy_details"][0]
    assert policy["target_tags"] == {"cryptoserver:backup": "${var.name}"}
    assert policy["schedule"][0]["copy_tags"] is True
    check = blocks(module, "check")["backups_wait_for_the_first_boot"]
    assert check["assert"][0]["condition"] == "${!var.enable_snapshot_backups || var.secrets_fingerprint != null}"
    restored = blocks(module, "data")["aws_ebs_snapshot"]["restored"]
    assert restored["count"] == "${var.data_volume_snapshot_id == null ? 0 : 1}"
    condition = restored["lifecycle"][0]["postcondition"][0]["condition"]
    assert 'lookup(self.tags, "cryptoserver:fingerprint", "")' in condition and "var.secrets_fingerprint" in condition
    fingerprint = blocks(module, "variable")["secrets_fingerprint"]
    assert fingerprint["default"] is None
    assert "^[0-9a-f]{32}$" in fingerprint["validation"][0]["condition"]


def required_variables(directory):
    return {name for name, variable in blocks(merged(directory), "variable").items() if "default" not in variable}


@pytest.mark.parametrize("example, calls", [
    ("basic", {"cryptoserver": TERRAFORM}),
    ("complete", {"cryptoserver": TERRAFORM}),
    ("pool", {"origin": TERRAFORM, "pool": TERRAFORM / "modules" / "pool"}),
])
def test_examples_call_the_modules(example, calls):
    directory = TERRAFORM / "examples" / example
    found = blocks(parse_hcl(directory / "main.tf"), "module")
    assert set(found) == set(calls)
    for name, module_dir in calls.items():
        call = found[name]
        assert (directory / call["source"]).resolve() == module_dir.resolve(), (example, name, call["source"])
        missing = required_variables(module_dir) - set(call)
        assert not missing, (example, name, missing)


def test_every_example_has_a_readme_and_the_four_files():
    examples = sorted(path for path in (TERRAFORM / "examples").iterdir() if path.is_dir())
    assert {path.name for path in examples} >= {"basic", "complete", "pool"}
    for example in examples:
        for name in ("README.md", "main.tf", "variables.tf", "outputs.tf", "versions.tf"):
            assert (example / name).is_file(), f"{example.name} has no {name}"


def test_packer_builds_from_a_current_official_image(packer):
    plugin = packer["packer"][0]["required_plugins"][0]["amazon"]
    assert plugin["source"] == "github.com/hashicorp/amazon"
    source = packer["source"][0]["amazon-ebs"]["cryptoserver"]
    ami_filter = source["source_ami_filter"][0]
    assert ami_filter["most_recent"] is True
    assert ami_filter["owners"] == ["${var.base_image_owner}"]
    assert ami_filter["filters"]["name"] == "${var.base_image_name_filter}"
    variables = blocks(packer, "variable")
    assert set(variables) >= {"region", "instance_type", "base_image_name_filter", "ami_name_prefix", "cryptoserver_version"}
    assert source["imds_support"] == "v2.0"
    assert source["metadata_options"][0]["http_tokens"] == "required"
    assert source["temporary_security_group_source_public_ip"] is True
    assert "ssh_keypair_name" not in source and "ssh_private_key_file" not in source


def test_packer_base_image_matches_the_glibc_dist_checks(packer):
    """`cargo xtask dist` checks the binaries against Debian 12's glibc: the image
    must be built on Debian 12."""
    name_filter = blocks(packer, "variable")["base_image_name_filter"]["default"]
    assert name_filter.startswith("debian-12-")
    dist = (REPO / "xtask/src/dist.rs").read_text()
    assert 'const BASE_GLIBC: &str = "2.36";' in dist
    assert 'const BASE_OS: &str = "Debian 12' in dist


def test_packer_installs_the_release_then_closes_every_door_with_its_own_key_last(packer):
    provisioners = packer["build"][0]["provisioner"]
    kinds = [next(iter(step)) for step in provisioners]
    assert kinds == ["file", "shell", "shell", "shell"]
    upload = provisioners[0]["file"]
    assert upload["source"] == "${local.dist_tarball}"
    install = provisioners[1]["shell"]["inline"]
    assert any("install.sh" in command for command in install)
    # Packer runs the inline lines as one `sh -e` script: it must be clean shell,
    # unpacking into a directory made at run time.
    assert any("mktemp -d" in command for command in install)
    script = "#!/bin/sh -e\n" + "\n".join(install) + "\n"
    result = subprocess.run([shellcheck(), "-"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any("generate" in command for command in install), "the image holds no secret"
    assert provisioners[2]["shell"]["script"] == "${path.root}/close-doors.sh"
    last = provisioners[3]["shell"]
    assert last["script"] == "${path.root}/remove-build-access.sh"
    assert last["skip_clean"] is True

    doors = (PACKER / "close-doors.sh").read_text()
    for needed in ("systemctl mask ssh.service ssh.socket sshd.service", "amazon-ssm-agent", "ec2-instance-connect",
                   "allow_public_ssh_keys: false", "users: []", "passwd --lock root", "/secrets is not empty"):
        assert needed in doors, needed
    key_removal = (PACKER / "remove-build-access.sh").read_text()
    for needed in ("authorized_keys", "/etc/sudoers.d/90-cloud-init-users", "usermod --lock", 'rm -f -- "$0"'):
        assert needed in key_removal, needed


def test_units_run_what_the_installer_installs():
    installer = (DEPLOY / "install.sh").read_text()
    server = (DEPLOY / "systemd/cryptoserver.service").read_text()
    secrets = (DEPLOY / "systemd/cryptoserver-secrets.service").read_text()
    assert "ExecStart=/usr/local/bin/cryptoserver\n" in server
    assert "ExecStart=/usr/local/sbin/cryptoserver-secrets-setup.sh\n" in secrets
    # The settings come from the user data before the secrets unit reads them.
    user_data = (DEPLOY / "systemd/cryptoserver-user-data.service").read_text()
    assert "ExecStart=/usr/local/sbin/cryptoserver-user-data.py\n" in user_data
    assert "Requires=cryptoserver-user-data.service" in secrets and "cryptoserver-user-data.service" in secrets.split("After=", 1)[1].split("\n", 1)[0]
    assert '"$root/usr/local/bin/"' in installer and '"$root/usr/local/sbin/"' in installer
    for needed in ("User=cryptoserver", "Requires=cryptoserver-secrets.service", "After=cryptoserver-secrets.service",
                   "EnvironmentFile=/etc/cryptoserver/env", "Restart=on-failure", "LimitCORE=0",
                   "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                   "PrivateDevices=yes", "ReadOnlyPaths=-/secrets", "CapabilityBoundingSet=\n",
                   "RestrictAddressFamilies=AF_INET AF_INET6", "SystemCallFilter=@system-service",
                   "MemoryDenyWriteExecute=yes"):
        assert needed in server, needed
    # A signed clients update is kept in the state directory: the server's default is the unit's.
    assert "\nStateDirectory=cryptoserver\n" in server
    help_text = subprocess.run([binary("cryptoserver"), "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "[env: CRYPTOSERVER_STATE_DIR=] [default: /var/lib/cryptoserver]" in help_text
    # MODE32 keeps 65,536 files open plus room for connections.
    limit = int(re.search(r"^LimitNOFILE=(\d+)$", server, re.MULTILINE).group(1))
    assert limit >= 65536 + 4096


def written_by(script, target):
    """What `script` writes to `target` with `cat >target <<EOF`: the lines from the
    first that mentions the file's setting to the heredoc's end, run by bash."""
    match = re.search(rf"^(?:readonly \w+=[^\n]*\n)?cat >{re.escape(target)} <<'?EOF'?\n.*?^EOF$", script, re.MULTILINE | re.DOTALL)
    assert match, f"the script writes no {target}"
    snippet = match.group(0).replace(f"cat >{target} ", "cat ")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", snippet], capture_output=True, text=True, check=True)
    return result.stdout


# The cloud-init modules that run nothing: those that size the root filesystem and name the host.
CODE_FREE_CLOUD_INIT_MODULES = {"growpart", "resizefs", "set_hostname", "update_hostname", "update_etc_hosts"}


def test_the_image_runs_no_user_data_code_and_its_boot_loader_opens_no_shell():
    doors = (PACKER / "close-doors.sh").read_text()
    stages = yaml.safe_load(written_by(doors, "/etc/cloud/cloud.cfg.d/99-cryptoserver-modules.cfg"))
    # Each stage's list replaces the image's own (cloud.cfg.d is read after cloud.cfg).
    # No part of the user data is consumed (boothooks and part handlers run before any module).
    assert stages.pop("allow_userdata") is False
    assert set(stages) == {"cloud_init_modules", "cloud_config_modules", "cloud_final_modules"}
    enabled = {(entry if isinstance(entry, str) else entry[0]).replace("-", "_") for stage in stages.values() for entry in stage}
    assert enabled <= CODE_FREE_CLOUD_INIT_MODULES, f"modules that can run code: {enabled - CODE_FREE_CLOUD_INIT_MODULES}"

    # Should user data be consumed again, it could list modules itself: every other
    # module leaves the image, and the build fails if one that runs code is still importable.
    assert 'for module in "$modules_dir"/cc_*.py; do' in doors
    assert 'dpkg-divert --quiet --local --rename --divert "$module.cryptoserver-removed" --add "$module"' in doors
    assert 'fail "cloud-init can still run its $name module"' in doors

    grub = written_by(doors, "/etc/default/grub.d/99-cryptoserver.cfg")
    settings = dict(line.split("=", 1) for line in grub.splitlines() if line and not line.startswith("#"))
    assert settings["GRUB_TIMEOUT"] == "0" and settings["GRUB_TIMEOUT_STYLE"] == "hidden", settings
    assert settings["GRUB_DISABLE_RECOVERY"] == "true", settings
    # No key from the serial console reaches GRUB (tests/infra/test_vm_boot.py types them).
    assert settings["GRUB_TERMINAL_INPUT"] == "at_keyboard" and settings["GRUB_TERMINAL"] == "", settings
    # The build regenerates grub.cfg and fails unless it waits for no key.
    assert doors.index("\nupdate-grub\n") < doors.index("still waits at the boot menu")


def test_ipv6_clients_get_an_ipv6_address_and_a_dual_stack_bind(module):
    """allowed_ipv6_cidr_blocks is served end to end: an address on the instance, a
    subnet that can give one, and a bind that takes IPv6 (test_infra_ipv6 runs it)."""
    local = local_values(module)
    assert local["ipv6"] == "${length(var.allowed_ipv6_cidr_blocks) > 0}"
    assert local["bind_host"] == '${local.ipv6 ? "[::]" : "0.0.0.0"}'
    assert 'CRYPTOSERVER_METRICS_BIND = "${local.bind_host}:${var.metrics_port}"' in local["settings"]
    instance = single(resources(module, "aws_instance"))
    assert instance["ipv6_address_count"] == "${local.ipv6 ? 1 : 0}"
    condition = instance["lifecycle"][0]["precondition"][0]["condition"]
    assert condition.startswith("${!local.ipv6 ||") and "data.aws_subnet.this.ipv6_cidr_block" in condition
    output = blocks(module, "output")["ipv6_address"]
    assert output["value"] == "${local.ipv6 ? aws_instance.this.ipv6_addresses[0] : null}"


def test_tls_keys_are_made_on_the_host_never_sent_in_user_data(module, user_data):
    """With tls, the server reads the pair the first-boot script keeps in the secrets
    directory's tls/ (its default /secrets); user data carries only paths and a name."""
    assert blocks(module, "module")["user_data"]["tls_server_name"] == "${var.tls ? var.name : null}"
    local = local_values(user_data)
    assert local["tls_dir"] == "/secrets/tls"
    environment = local["environment"]
    for setting in ("CRYPTOSERVER_SECRETS_TLS_NAME = var.tls_server_name", 'CRYPTOSERVER_TLS_CERT = "${local.tls_dir}/cert.pem"',
                    'CRYPTOSERVER_TLS_KEY = "${local.tls_dir}/key.pem"'):
        assert setting in environment, setting
    setup = (DEPLOY / "cryptoserver-secrets-setup.sh").read_text()
    assert "dir=${CRYPTOSERVER_SECRETDIR:-/secrets}" in setup and "local tls_dir=$dir/tls " in setup
    assert "-keyout \"$pending/key.pem\" -out \"$pending/cert.pem\"" in setup
    # User data writes the settings file and the clients file, nothing else.
    assert local["env_file"]["path"] == "/etc/cryptoserver/env"
    assert local["clients_files"].count("path =") == 1
    assert "write_files = concat([local.env_file], local.clients_files)" in local["user_data"]
    assert "PRIVATE KEY" not in "".join(path.read_text() for path in terraform_files())
    assert blocks(module, "variable")["tls"]["default"] is True
    outputs = blocks(module, "output")
    assert outputs["endpoint"]["value"].startswith('${var.tls ? "https" : "http"}://')
    assert outputs["tls_server_name"]["value"] == "${var.tls ? var.name : null}"
