"""Where a terraform binary is installed: the files are `terraform fmt` clean, and
Terraform itself evaluates the module's variable validations (they need no provider,
so no plugin is downloaded: variables.tf alone is planned in a scratch directory)."""

import os
import shutil
import subprocess

import pytest

from infra_tools import TERRAFORM

pytestmark = pytest.mark.skipif(not shutil.which("terraform"), reason="no terraform binary on PATH")

# No update check, no prompt, no colour: nothing leaves the machine.
ENV = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
REQUIRED = ["-var", "ami_id=ami-0123456789abcdef0", "-var", "subnet_id=subnet-0123456789abcdef0"]


def terraform(*args, cwd):
    return subprocess.run(["terraform", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


def test_terraform_files_are_formatted():
    result = terraform("fmt", "-check", "-recursive", "-diff", cwd=TERRAFORM)
    assert result.returncode == 0, result.stdout


@pytest.fixture(scope="module")
def variables_only(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("variables")
    shutil.copy(TERRAFORM / "variables.tf", scratch)
    result = terraform("init", "-no-color", cwd=scratch)
    assert result.returncode == 0, result.stdout + result.stderr
    return scratch


def plan(scratch, *settings):
    return terraform("plan", "-no-color", "-lock=false", *REQUIRED, *[arg for setting in settings for arg in ("-var", setting)], cwd=scratch)


@pytest.mark.parametrize(
    "settings",
    [
        [],
        ["mode=MODE16", "data_volume_size=1"],
        ["mode=mode32", "data_volume_size=130"],
        ["mode=MODE32x", "data_volume_size=130"],
        ["data_volume_type=io2", "data_volume_iops=16000"],
        ["data_volume_throughput=750"],
        ["data_volume_iops=4000", "data_volume_throughput=1000"],
        ["data_volume_iops=8000", "data_volume_throughput=2000"],
        ["metrics_port=9090", 'allowed_ipv6_cidr_blocks=["2001:db8::/56"]'],
        ['environment={CRYPTOSERVER_RATE_LIMIT="200:1000"}', 'tags={team="payments"}'],
        ["tls=false"],
    ],
)
def test_valid_settings_are_accepted(variables_only, settings):
    result = plan(variables_only, *settings)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "settings, message",
    [
        (["data_volume_size=129"], "needs at least 130 GiB"),
        (["mode=MODE64"], "mode is MODE0, MODE16, MODE32 or MODE32X"),
        (["mode=MODE32X", "data_volume_size=129"], "needs at least 130 GiB"),
        (["data_volume_type=st1"], "st1 and sc1 serve random reads far too slowly"),
        (["data_volume_type=io2"], "io1 and io2 volumes need data_volume_iops"),
        (["data_volume_type=gp2", "data_volume_throughput=500"], "on a gp3 volume"),
        (["data_volume_throughput=1000"], "at most 0.25 MiB/s per provisioned IOPS"),
        (["data_volume_iops=4000", "data_volume_throughput=1001"], "at most 0.25 MiB/s per provisioned IOPS"),
        (["instance_type=m7g.large"], "instance_type must be x86_64"),
        (["instance_type=t2.large"], "instance_type must be a Nitro type"),
        (["port=22"], "port is a whole number from 1024 to 65535"),
        (["metrics_port=8080"], "other than port"),
        (['allowed_cidr_blocks=["10.0.0.0/33"]'], "IPv4 CIDR blocks"),
        (['token_sha256_digests=["not-a-digest"]'], "64 lower-case hex digits"),
        (['environment={CRYPTOSERVER_MODE="MODE0"}'], "cannot set what the module manages"),
        (['environment={CRYPTOSERVER_TLS_CERT="/etc/cert.pem"}'], "the host makes its own key at first boot"),
        (['environment={CRYPTOSERVER_SECRETS_TLS_NAME="other"}'], "cannot set what the module manages"),
        (['tags={"cryptoserver:sealed"="false"}'], "cryptoserver: the module's own"),
        (["snapshot_interval_hours=5"], "what DLM supports"),
    ],
)
def test_invalid_settings_are_refused_with_a_clear_message(variables_only, settings, message):
    result = plan(variables_only, *settings)
    assert result.returncode != 0
    assert message in " ".join((result.stdout + result.stderr).split()), result.stdout + result.stderr
