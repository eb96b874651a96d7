"""What keeps the image booted in the VM tests the AMI's: `cargo xtask image` runs the
Packer template's provisioners, read from the template, in its order; and the VMs'
user data is what the Terraform modules render, with the settings the root module
and the pool give the user-data module."""

import re
import subprocess

import pytest

from infra_tools import PACKER, REPO, TERRAFORM, merged, parse_hcl
from vm import origin_settings, rendered_user_data, replica_settings


def test_the_image_build_runs_the_packer_provisioners_in_order():
    listed = subprocess.run(["cargo", "xtask", "image", "--list-steps"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert listed.returncode == 0, listed.stderr
    steps = listed.stdout.splitlines()
    provisioners = parse_hcl(PACKER / "cryptoserver.pkr.hcl")["build"][0]["provisioner"]
    expected = []
    for provisioner in provisioners:
        (kind, block), = provisioner.items()
        if kind == "file":
            expected.append(f"file cryptoserver-VERSION-x86_64-linux.tar.gz -> {block['destination']}")
        elif "inline" in block:
            expected.append(f"shell inline ({len(block['inline'])} lines)")
        else:
            expected.append(f"shell {block['script'].rsplit('/', 1)[-1]}")
    assert steps == expected


def settings_keys(module_dir):
    """The keys of the settings a module passes to the user-data module."""
    expression = next(block["settings"] for block in merged(module_dir)["locals"] if "settings" in block)
    return set(re.findall(r"\b(CRYPTOSERVER_[A-Z0-9_]+) =", expression))


@pytest.mark.parametrize("module_dir, settings", [
    (TERRAFORM, origin_settings("vol-0123456789abcdef0")),
    (TERRAFORM / "modules" / "pool", replica_settings("0123456789abcdef0123456789abcdef")),
], ids=["origin", "pool"])
def test_the_vms_get_the_settings_the_modules_pass(module_dir, settings):
    # The root module's metrics bind and restored volume are optional (off by default), as in the VMs.
    assert settings_keys(module_dir) - {"CRYPTOSERVER_METRICS_BIND", "CRYPTOSERVER_SECRETS_RESTORED"} == set(settings)


def test_the_user_data_is_rendered_by_terraform_from_the_module(tmp_path):
    rendered = rendered_user_data(tmp_path, mode="mode16", settings=origin_settings("vol-0123456789abcdef0"),
                                  token_sha256_digests=["ab" * 32], tls_server_name="cryptoserver.internal",
                                  hot_copy=True)
    assert rendered.startswith("#cloud-config\n")
    for line in ("CRYPTOSERVER_MODE=MODE16", "CRYPTOSERVER_SECRETS_HOT_COPY=instance-store",
                 "CRYPTOSERVER_TLS_CERT=/secrets/tls/cert.pem", "ab" * 32, "CRYPTOSERVER_TOKENS_FILE=/etc/cryptoserver/tokens"):
        assert line in rendered, line
