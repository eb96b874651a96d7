"""Each module's README (the root module's and the pool's) documents exactly the
variables and outputs it has."""

import re

import pytest

from infra_tools import TERRAFORM, blocks, parse_hcl

MODULES = pytest.mark.parametrize("module", [TERRAFORM, TERRAFORM / "modules" / "pool"], ids=["root", "pool"])


def table_names(readme, heading):
    """First-column names (`name`) of the table under a `## heading`."""
    section = readme.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [match for match in re.findall(r"^\| `([a-z0-9_]+)` \|", section, re.MULTILINE)]


@MODULES
def test_readme_lists_every_variable_and_no_other(module):
    readme = (module / "README.md").read_text()
    variables = list(blocks(parse_hcl(module / "variables.tf"), "variable"))
    assert table_names(readme, "Inputs") == variables


@MODULES
def test_readme_lists_every_output_and_no_other(module):
    readme = (module / "README.md").read_text()
    outputs = list(blocks(parse_hcl(module / "outputs.tf"), "output"))
    assert table_names(readme, "Outputs") == outputs


@MODULES
def test_readme_states_each_type_and_default(module):
    readme = (module / "README.md").read_text()
    section = readme.split("\n## Inputs\n", 1)[1].split("\n## ", 1)[0]
    rows = {row[0]: row for row in re.findall(r"^\| `([a-z0-9_]+)` \| `([^`]+)` \| ([^|]+) \|", section, re.MULTILINE)}
    for name, variable in blocks(parse_hcl(module / "variables.tf"), "variable").items():
        _, documented_type, documented_default = rows[name]
        assert documented_type == variable["type"].removeprefix("${").removesuffix("}"), name
        expected = hcl_literal(variable["default"]) if "default" in variable else "required"
        assert documented_default.strip().strip("`") == expected, name


def hcl_literal(value):
    """A default as HCL writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, dict)) and not value:
        return "[]" if isinstance(value, list) else "{}"
    return str(value)
