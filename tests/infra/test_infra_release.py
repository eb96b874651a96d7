"""`cargo xtask dist` for real (one release build for the whole module): what the
tarball holds, the glibc check against the image's base OS, and the tarball's own
installer run into a scratch system tree whose units `systemd-analyze` verifies and
rates."""

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tomllib

import pytest

from infra_tools import DEPLOY, REPO

VERSION = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]
TOP = f"cryptoserver-{VERSION}-x86_64-linux"
UNITS = ("cryptoserver.service", "cryptoserver-secrets.service", "cryptoserver-user-data.service")


def xtask_dist(*args):
    return subprocess.run(["cargo", "xtask", "dist", *args], cwd=REPO, capture_output=True, text=True, timeout=3600)


@pytest.fixture(scope="module")
def release():
    """The tarball of one `cargo xtask dist` run, and what the run printed."""
    result = xtask_dist()
    assert result.returncode == 0, result.stderr
    tarball = result.stdout.strip().splitlines()[-1]
    assert tarball.endswith(f"target/dist/{TOP}.tar.gz"), result.stdout
    return tarball, result.stderr


def sha256(path):
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def test_dist_builds_the_release_binaries_and_never_the_aws_crate(release):
    _, log = release
    assert "cargo build --release --package cryptoserver --bins" in log
    assert not re.search(r"Compiling (xtask-aws|aws-sdk|aws-config)", log), log


def test_tarball_holds_the_binaries_units_and_scripts_as_root(release):
    tarball, _ = release
    expected = {
        "bin/cryptoserver": 0o755,
        "bin/cryptoserver-secrets": 0o755,
        "install.sh": 0o755,
        "cryptoserver-secrets-setup.sh": 0o755,
        "env.example": 0o644,
        "systemd/cryptoserver.service": 0o644,
        "systemd/cryptoserver-secrets.service": 0o644,
        "cryptoserver-user-data.py": 0o755,
        "systemd/cryptoserver-user-data.service": 0o644,
    }
    with tarfile.open(tarball) as archive:
        members = {member.name: member for member in archive.getmembers()}
        files = {name.removeprefix(f"{TOP}/"): member for name, member in members.items() if member.isfile()}
        assert {name: member.mode for name, member in files.items()} == expected
        assert all(member.uid == 0 and member.gid == 0 for member in members.values())
        assert all(name == TOP or name.startswith(f"{TOP}/") for name in members)
        for name in expected:
            packed = archive.extractfile(f"{TOP}/{name}").read()
            source = REPO / "target/release" / name.removeprefix("bin/") if name.startswith("bin/") else DEPLOY / name
            assert packed == source.read_bytes(), name
    checksum = (REPO / f"target/dist/{TOP}.tar.gz.sha256").read_text()
    assert checksum == f"{sha256(tarball)}  {TOP}.tar.gz\n"


def test_packed_binaries_run_and_report_the_package_version(release, tmp_path):
    tarball, _ = release
    with tarfile.open(tarball) as archive:
        archive.extractall(tmp_path, filter="tar")
    for name in ("cryptoserver", "cryptoserver-secrets"):
        output = subprocess.run([tmp_path / TOP / "bin" / name, "--version"], capture_output=True, text=True, check=True)
        assert output.stdout.strip() == f"{name} {VERSION}"


def test_binaries_need_no_newer_glibc_than_debian_12(release):
    _, log = release
    needs = re.findall(r"release/(cryptoserver(?:-secrets)?): x86_64, needs glibc 2\.(\d+) or newer; the image allows up to 2\.36", log)
    assert {name for name, _ in needs} == {"cryptoserver", "cryptoserver-secrets"}, log
    assert all(int(minor) <= 36 for _, minor in needs)


def test_dist_refuses_binaries_too_new_for_the_base_os_and_keeps_the_tarball(release):
    tarball, _ = release
    before = (sha256(tarball), os.stat(tarball).st_mtime_ns)
    refused = xtask_dist("--max-glibc", "2.17")
    assert refused.returncode != 0
    message = refused.stderr
    assert re.search(r"target/release/cryptoserver(-secrets)? needs a glibc newer than 2\.17", message), message
    assert re.search(r"\w+@GLIBC_2\.\d+", message), message
    assert "--max-glibc" in message and "Debian 12" in message
    assert (sha256(tarball), os.stat(tarball).st_mtime_ns) == before
    bad_version = xtask_dist("--max-glibc", "two")
    assert bad_version.returncode != 0
    assert "`two` is not a glibc version such as 2.36" in bad_version.stderr


@pytest.fixture(scope="module")
def installed_root(release, tmp_path_factory):
    """A scratch system tree (the host's accounts and systemd units, copied) into
    which the tarball's own install.sh installed cryptoserver."""
    if os.geteuid() != 0:
        pytest.skip("install.sh creates a system user: needs root (CI runs as root)")
    if not shutil.which("systemd-analyze") or not os.path.isdir("/usr/lib/systemd/system"):
        pytest.skip("systemd-analyze and the systemd units are not installed here")
    tarball, _ = release
    scratch = tmp_path_factory.mktemp("install")
    with tarfile.open(tarball) as archive:
        archive.extractall(scratch, filter="tar")
    root = scratch / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if os.path.exists(f"/etc/{name}"):
            shutil.copy2(f"/etc/{name}", root / "etc" / name)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for _ in range(2):  # a second run changes nothing and does not fail
        result = subprocess.run([scratch / TOP / "install.sh", "--root", root], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert f"installed cryptoserver {VERSION} into {root}" in result.stderr
    return root


def test_installer_creates_a_login_less_user_and_enables_the_units(installed_root):
    users = [line.split(":") for line in (installed_root / "etc/passwd").read_text().splitlines()]
    service_users = [user for user in users if user[0] == "cryptoserver"]
    assert len(service_users) == 1
    assert service_users[0][5:] == ["/nonexistent", "/usr/sbin/nologin"]
    # The fixed ids every image gives it, which close-doors.sh checks on the image.
    assert service_users[0][2:4] == ["800", "800"]
    groups = [line.split(":") for line in (installed_root / "etc/group").read_text().splitlines()]
    assert [group[2] for group in groups if group[0] == "cryptoserver"] == ["800"]
    assert '[[ $(id -u cryptoserver):$(id -g cryptoserver) == 800:800 ]]' in (REPO / "packer/close-doors.sh").read_text()
    for path, mode in {"usr/local/bin/cryptoserver": 0o755, "usr/local/bin/cryptoserver-secrets": 0o755,
                       "usr/local/sbin/cryptoserver-secrets-setup.sh": 0o755,
                       "usr/local/sbin/cryptoserver-user-data.py": 0o755,
                       "etc/systemd/system/cryptoserver.service": 0o644}.items():
        assert (installed_root / path).stat().st_mode & 0o7777 == mode, path
    assert list((installed_root / "secrets").iterdir()) == [], "the image holds no secret"
    for unit in UNITS:
        assert (installed_root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink()


def test_systemd_analyze_verifies_the_installed_units(installed_root):
    units = [installed_root / "etc/systemd/system" / unit for unit in UNITS]
    result = subprocess.run(["systemd-analyze", "verify", f"--root={installed_root}", *units], capture_output=True, text=True)
    # verify also warns (unknown keys, bad values) with exit code 0: any output fails.
    assert result.returncode == 0 and not result.stdout + result.stderr, result.stdout + result.stderr


def exposure(installed_root, unit):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={installed_root}", unit],
                            capture_output=True, text=True, check=True)
    return float(re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d)", result.stdout).group(1))


def test_security_rating_is_the_one_the_readme_states(installed_root):
    server = exposure(installed_root, "cryptoserver.service")
    secrets = exposure(installed_root, "cryptoserver-secrets.service")
    assert server <= 1.5, "the server unit lost hardening"
    assert secrets <= 4.5, "the secrets unit lost hardening"
    readme = (REPO / "README.md").read_text()
    assert f"`cryptoserver.service`: **{server} OK**" in readme, f"README must state the measured {server}"
    assert f"`cryptoserver-secrets.service`: **{secrets} OK**" in readme, f"README must state the measured {secrets}"
