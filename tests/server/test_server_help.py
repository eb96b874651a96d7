"""`cryptoserver --help` and the README's configuration table describe the same
settings: each flag with its environment variable and its default."""

import os
import re
import subprocess

from conftest import REPO, binary


def readme_rows():
    """(variable, flag, default, meaning) of each row of the README's configuration table with a flag."""
    section = (REPO / "README.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(CRYPTOSERVER_[A-Z_]+)` \| `(--[a-z-]+)` \| ([^|]+) \| (.+) \|$", section, re.MULTILINE)


POWERS = {"10^9": "1000000000", "2^20": "1048576", "2^32-1": "4294967295"}


def ranges(text):
    """The ranges a text states ("1 to 3,600", "1KiB to 1MiB"), numbers written out."""
    text = re.sub(r"(\d),(?=\d{3})", r"\1", text)
    for power, number in POWERS.items():
        text = text.replace(power, number)
    return sorted(re.findall(r"(\d+(?:\.\d+)?(?:[KMG]iB| bytes?)?) to (\d+(?:\.\d+)?(?:[KMG]iB)?)", text))


def help_by_flag():
    """Each flag's help text in `cryptoserver --help`, on one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSERVER_")}
    text = subprocess.run([binary("cryptoserver"), "--help"], env=env, capture_output=True, text=True, check=True).stdout
    entries = re.split(r"^\s+(?:-\w, )?(--[a-z-]+)(?: <[A-Z_]+>)?\n", text, flags=re.MULTILINE)[1:]
    return {flag: " ".join(body.split()) for flag, body in zip(entries[::2], entries[1::2])}


def test_help_and_the_readme_table_name_the_same_settings():
    documented = {flag for _, flag, _, _ in readme_rows()}
    assert len(documented) > 15, "the README's table was not found"
    assert set(help_by_flag()) - {"--help", "--version"} == documented


def test_help_and_the_readme_table_agree_on_variables_defaults_and_ranges():
    helps = help_by_flag()
    for variable, flag, default, meaning in readme_rows():
        text = helps[flag]
        assert ranges(meaning) == ranges(text), (flag, meaning, text)
        assert f"[env: {variable}=]" in text, (flag, text)
        literal = re.fullmatch(r"`([^`]+)`", default.strip())
        if literal:
            assert f"[default: {literal[1]}]" in text or f"Default: {literal[1]}" in text, (flag, default, text)
        else:
            assert "[default:" not in text, (flag, default, text)
