"""`pip install ./clients/python`, as the README says, builds the client with its
type information and leaves nothing behind in the checkout."""

import subprocess
import sys
import zipfile

from conftest import REPO

CLIENT = REPO / "clients" / "python"


def files_git_does_not_track():
    """Untracked and ignored files under clients/python, but the interpreter's caches."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", str(CLIENT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return {line for line in status if "__pycache__" not in line}


def test_building_the_client_leaves_the_checkout_clean(tmp_path):
    before = files_git_does_not_track()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(CLIENT)],
        check=True,
        timeout=300,
    )
    assert files_git_does_not_track() - before == set()
    [wheel] = tmp_path.glob("cryptoserver_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"cryptoserver_client/__init__.py", "cryptoserver_client/py.typed"} <= set(names), names
