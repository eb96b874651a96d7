"""The library's layering, read from its `use` lines: no module imports one that
imports it back, clap stays at the edges, and libc is called from one module."""

import itertools
import pathlib
import re

from conftest import REPO

SRC = REPO / "src"
# Where command-line parsing may live: the server's configuration, the secret
# tools' arguments, and the binaries.
CLAP_ALLOWED = {"config", "secrets::cli", "main", "bin::cryptoserver-secrets"}


def module_of(path):
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts == ["lib"]:
        return "crate"
    return "::".join(parts)


def modules():
    return {module_of(path): path for path in SRC.rglob("*.rs")}


def use_statements(text):
    """Every `use` statement outside the unit tests, joined onto one line, with comments dropped."""
    text = re.sub(r"//[^\n]*", "", text).split("#[cfg(test)]", 1)[0]
    return [" ".join(match.split()) for match in re.findall(r"\buse\s+([^;]+);", text)]


def imported_modules(module, text, known):
    """The crate modules a file's `use` lines name (the longest known prefix of each path)."""
    found = set()
    parent = module.rsplit("::", 1)[0] if "::" in module else "crate"
    for statement in use_statements(text):
        for path in expand(statement):
            if path.startswith("crate::"):
                path = path.removeprefix("crate::")
            elif path.startswith("super::"):
                path = (parent + "::" if parent != "crate" else "") + path.removeprefix("super::")
            elif path.startswith("self::") or path.split("::")[0] in child_names(module, known):
                path = module + "::" + path.removeprefix("self::")
            else:
                continue
            segments = path.split("::")
            for length in range(len(segments), 0, -1):
                candidate = "::".join(segments[:length])
                if candidate in known and candidate != module:
                    found.add(candidate)
                    break
    return found


def child_names(module, known):
    prefix = module + "::"
    return {name.removeprefix(prefix).split("::")[0] for name in known if name.startswith(prefix)}


def expand(statement):
    """`a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`."""
    statement = statement.replace(" ", "")
    depth, start = 0, None
    for index, char in enumerate(statement):
        if char == "{":
            if depth == 0:
                start = index
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                prefix, inner, rest = statement[:start], statement[start + 1 : index], statement[index + 1 :]
                parts, depth_inner, current = [], 0, ""
                for c in inner:
                    if c == "," and depth_inner == 0:
                        parts.append(current)
                        current = ""
                        continue
                    depth_inner += {"{": 1, "}": -1}.get(c, 0)
                    current += c
                parts.append(current)
                return [path for part in parts if part for path in expand(prefix + part + rest)]
    return [statement.split(" as ")[0]]


def graph():
    known = modules()
    return {module: imported_modules(module, path.read_text(), known) for module, path in known.items()}


def test_no_module_imports_one_that_imports_it_back():
    edges = graph()
    assert edges["http"] >= {"http::handlers", "http::state"}, "the parser lost the router's imports"
    cycles = []
    for start in edges:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for following in edges.get(node, ()):
                if following == start:
                    cycles.append(" -> ".join(trail + [start]))
                elif following not in trail and len(trail) < 8:
                    stack.append((following, trail + [following]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles))[:20])


def test_clap_is_only_at_the_edges():
    users = {module for module, path in modules().items() if re.search(r"\bclap::", path.read_text())}
    assert users and users <= CLAP_ALLOWED, sorted(users - CLAP_ALLOWED)


def test_libc_is_called_from_sys_alone():
    users = {module for module, path in modules().items() if re.search(r"\blibc::", path.read_text())}
    assert users == {"sys"}, sorted(users)


def test_the_expander_reads_nested_groups():
    assert expand("super::{error::{A, B}, state::C}") == ["super::error::A", "super::error::B", "super::state::C"]
    assert list(itertools.chain(expand("crate::x"))) == ["crate::x"]
