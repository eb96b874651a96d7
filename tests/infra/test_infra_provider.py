"""Every .tf file (the modules and their examples) against the hashicorp/aws schemas
of every provider version the constraint allows (the oldest and newest release of
each allowed major, from @cdktf/provider-aws): every argument and block it writes
exists there, and replacing the instance works despite its termination protection."""

import re

import pytest

from infra_tools import TERRAFORM, parse_hcl, provider_schema, terraform_files

# hashicorp/aws release -> the @cdktf/provider-aws release generated from it (the test
# checks its package.json agrees): the first and last of each major, and 6.8.0, the
# first with aws_instance's force_destroy.
SCHEMA_PACKAGES = {"5.99.1": "20.0.0", "5.100.0": "20.1.0", "6.0.0": "21.0.0", "6.8.0": "21.7.0", "6.25.0": "21.22.1"}
META_ARGUMENTS = {"count", "for_each", "depends_on", "lifecycle", "provider", "provisioner", "connection"}


def version(text):
    return tuple(int(part) for part in text.split("."))


def allowed_range(path=TERRAFORM / "versions.tf"):
    """The hashicorp/aws versions a versions.tf allows, `>= x.y.z, < A.0.0`, as (lowest, first excluded)."""
    required = parse_hcl(path)["terraform"][0]["required_providers"][0]["aws"]
    assert required["source"] == "hashicorp/aws"
    match = re.fullmatch(r">= ?(\d+\.\d+\.\d+), ?< ?(\d+\.0\.0)", required["version"])
    assert match, f"the provider constraint {required['version']!r} must bound both ends: >= x.y.z, < A.0.0"
    return version(match.group(1)), version(match.group(2))


def module_blocks(paths=None):
    """(kind, type, name, body) of every resource and data source in `paths` (every
    .tf file by default)."""
    for path in paths or terraform_files():
        parsed = parse_hcl(path)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for type_name, named in block.items():
                    for name, body in named.items():
                        yield kind, type_name, name, body


def unknown_arguments(body, schema, where):
    """Names in `body` that `schema` does not have, descending into nested blocks."""
    unknown = []
    for key, value in body.items():
        if key in META_ARGUMENTS:
            continue
        if key == "dynamic":
            for dynamic in value:
                for block_name, block in dynamic.items():
                    unknown += unknown_arguments({block_name: block["content"]}, schema, where)
            continue
        if key not in schema:
            unknown.append(f"{where}.{key}")
        elif schema[key] is not None and isinstance(value, list) and all(isinstance(item, dict) for item in value):
            for item in value:
                unknown += unknown_arguments(item, schema[key], f"{where}.{key}")
    return unknown


def allowed_schemas():
    lowest, excluded = allowed_range()
    return [(provider, package) for provider, package in SCHEMA_PACKAGES.items() if lowest <= version(provider) < excluded]


def test_the_oldest_and_newest_allowed_provider_are_checked():
    lowest, excluded = allowed_range()
    others = [path for path in terraform_files() if path.name == "versions.tf" and path != TERRAFORM / "versions.tf"]
    assert {path.relative_to(TERRAFORM).as_posix() for path in others} >= {"modules/pool/versions.tf", "examples/pool/versions.tf"}
    for path in others:
        assert allowed_range(path) == (lowest, excluded), f"{path} allows other provider versions than the root module"
    checked = [version(provider) for provider, _ in allowed_schemas()]
    assert lowest in checked, f"no schema of hashicorp/aws {lowest}, the oldest allowed: add its @cdktf/provider-aws release"
    for major in range(lowest[0], excluded[0]):
        assert any(checked_version[0] == major for checked_version in checked), f"no schema of hashicorp/aws {major}.x"


@pytest.mark.parametrize("provider, package", allowed_schemas())
def test_every_argument_exists_in_each_allowed_provider_version(provider, package):
    # terraform_data is Terraform's own resource, not the provider's.
    blocks = [block for block in module_blocks() if block[1] != "terraform_data"]
    # Every file is read: the pool and its example too.
    types = {(kind, type_name) for kind, type_name, _, _ in blocks}
    assert {("resource", "aws_launch_template"), ("resource", "aws_autoscaling_group"), ("resource", "aws_lb_target_group"),
            ("data", "aws_ec2_instance_type"), ("resource", "aws_kms_key")} <= types, types
    provider_version, schema = provider_schema(package, {(kind, type_name) for kind, type_name, _, _ in blocks})
    assert provider_version == provider, f"{package} is generated from hashicorp/aws {provider_version}, not {provider}"
    unknown = []
    for kind, type_name, name, body in blocks:
        unknown += unknown_arguments(body, schema[kind, type_name], f"{kind}.{type_name}.{name}")
        # What lifecycle's ignore_changes names must be an argument too, or it ignores nothing.
        for lifecycle in body.get("lifecycle", []):
            unknown += [f"{kind}.{type_name}.{name}.lifecycle.ignore_changes.{argument}"
                        for argument in lifecycle.get("ignore_changes", []) if argument not in schema[kind, type_name]]
    assert not unknown, f"hashicorp/aws {provider_version} has no argument {', '.join(unknown)}"


def test_replacing_the_instance_lifts_its_termination_protection():
    """Termination protection guards against a hand in the console; a replacing apply
    must still terminate the old instance, which hashicorp/aws 6 does only with
    force_destroy (from 6.8.0; the schema test refuses a constraint allowing older)."""
    instances = [body for kind, type_name, _, body in module_blocks([TERRAFORM / "main.tf"]) if type_name == "aws_instance"]
    assert len(instances) == 1
    assert instances[0]["disable_api_termination"] is True
    assert instances[0].get("force_destroy") is True, "without force_destroy, hashicorp/aws 6 refuses to replace the instance"
