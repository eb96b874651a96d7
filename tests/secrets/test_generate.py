"""cryptoserver-secrets generate/verify on MODE0 and MODE16: output quality, permissions,
the manifest, and every refusal that protects an existing secret."""

import collections
import fcntl
import os
import pwd
import signal
import stat
import subprocess

import pytest

from secret_tools import (
    FILE_LEN,
    MANIFEST,
    assert_manifest_matches,
    available_bytes,
    final_files,
    generate,
    needs_root,
    read_manifest,
    secrets_command,
    snapshot,
    start_generate,
    temp_files,
    tmpfs,
    verify,
    wait_for,
)


def generated(secret_dir, mode, *args):
    result = generate(secret_dir, mode, *args)
    assert result.returncode == 0, result.stderr
    return result


def chi_square_bounds(degrees, z=4.75):
    """Two-sided bounds of the chi-square distribution at about p = 1e-6 (Wilson-Hilferty)."""
    scale = 2 / (9 * degrees)
    return tuple(degrees * (1 - scale + sign * z * scale**0.5) ** 3 for sign in (-1, 1))


def test_mode16_output_looks_random_and_two_runs_differ(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    generated(first, "MODE16")
    generated(second, "MODE16")
    data = (first / "0000").read_bytes()
    assert len(data) == FILE_LEN
    slots = [data[offset : offset + 32] for offset in range(0, FILE_LEN, 32)]
    assert bytes(32) not in slots, "an all-zero key slot"
    assert len(set(slots)) == len(slots), "two identical key slots"

    counts = collections.Counter(data)
    expected = FILE_LEN / 256
    chi_square = sum((counts.get(value, 0) - expected) ** 2 / expected for value in range(256))
    low, high = chi_square_bounds(255)
    assert low < chi_square < high, f"byte histogram chi-square {chi_square:.1f} outside ({low:.1f}, {high:.1f})"

    other = (second / "0000").read_bytes()
    assert data != other
    assert sum(a == b for a, b in zip(data[:65536], other[:65536])) < 65536 / 256 * 1.5


@pytest.mark.parametrize("mode, names", [("MODE0", ["secret"]), ("MODE16", ["0000"])])
def test_layout_permissions_and_manifest(tmp_path, mode, names):
    secret_dir = tmp_path / "parent" / "secrets"
    result = generated(secret_dir, mode)
    assert f"{mode} complete: wrote 1 file" in result.stderr
    assert stat.S_IMODE(os.stat(secret_dir).st_mode) == 0o700
    assert final_files(secret_dir) == names
    for name in [*names, MANIFEST]:
        assert stat.S_IMODE(os.stat(secret_dir / name).st_mode) == 0o400, name
    assert temp_files(secret_dir) == []
    assert_manifest_matches(secret_dir, mode, names)

    checked = verify(secret_dir)
    assert checked.returncode == 0, checked.stderr
    assert f"every file matches {MANIFEST} (1 {mode} file" in checked.stderr


@pytest.mark.parametrize("mode", ["MODE0", "MODE16"])
def test_a_rerun_on_a_complete_directory_changes_nothing(tmp_path, mode):
    secret_dir = tmp_path / "secrets"
    generated(secret_dir, mode)
    before = snapshot(secret_dir)
    result = generated(secret_dir, mode)
    assert "nothing to do" in result.stderr
    assert snapshot(secret_dir) == before


@pytest.mark.parametrize("mode, name, size", [("MODE16", "0000", FILE_LEN - 1), ("MODE0", "secret", 33), ("MODE32", "0001", 100)])
def test_a_wrong_sized_file_stops_the_run_before_anything_is_written(tmp_path, mode, name, size):
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o755)
    (secret_dir / name).write_bytes(os.urandom(size))
    if mode == "MODE32":
        (secret_dir / "0000").write_bytes(os.urandom(FILE_LEN))
        (secret_dir / ".0002.tmp").write_bytes(b"left by a killed run")
    before = snapshot(secret_dir)
    result = generate(secret_dir, mode)
    assert result.returncode != 0
    assert f"{secret_dir / name}: is {size} bytes" in result.stderr
    assert "nothing was written" in result.stderr and "never overwrites" in result.stderr
    assert snapshot(secret_dir) == before, "the refused run changed the directory"


def test_a_file_that_is_not_a_regular_file_is_refused(tmp_path):
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    os.symlink("/dev/zero", secret_dir / "0000")
    result = generate(secret_dir, "MODE16")
    assert result.returncode != 0
    assert f"{secret_dir / '0000'}: is not a regular file" in result.stderr
    assert os.listdir(secret_dir) == ["0000"]


@pytest.mark.parametrize("existing, wanted", [("MODE0", "MODE16"), ("MODE16", "MODE0"), ("MODE16", "MODE32")])
def test_a_manifest_of_another_mode_is_refused(tmp_path, existing, wanted):
    secret_dir = tmp_path / "secrets"
    generated(secret_dir, existing)
    before = snapshot(secret_dir)
    result = generate(secret_dir, wanted)
    assert result.returncode != 0
    assert f"{secret_dir / MANIFEST}: this directory holds {existing} secrets, not {wanted}" in result.stderr
    assert snapshot(secret_dir) == before


def test_a_complete_directory_that_lost_a_secret_is_not_regenerated(tmp_path):
    secret_dir = tmp_path / "secrets"
    generated(secret_dir, "MODE16")
    os.remove(secret_dir / "0000")
    result = generate(secret_dir, "MODE16")
    assert result.returncode != 0
    assert f"{secret_dir / '0000'}: is missing, but" in result.stderr
    assert "would silently change every MAC" in result.stderr
    assert not (secret_dir / "0000").exists()


def test_a_second_generator_on_the_same_directory_is_refused(tmp_path):
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o700)
    handle = os.open(secret_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        result = generate(secret_dir, "MODE16")
    finally:
        os.close(handle)
    assert result.returncode != 0
    assert f"{secret_dir}: another cryptoserver-secrets is working on this directory" in result.stderr
    assert os.listdir(secret_dir) == []


def test_owner_gets_the_directory_and_files(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root (CI runs as root)")
    nobody = pwd.getpwnam("nobody")
    secret_dir = tmp_path / "secrets"
    generated(secret_dir, "MODE16", "--owner", "nobody")
    for path in [secret_dir, secret_dir / "0000", secret_dir / MANIFEST]:
        info = os.stat(path)
        assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid), path


def test_an_unknown_owner_is_refused_before_anything_is_created(tmp_path):
    result = generate(tmp_path / "secrets", "MODE16", "--owner", "no-such-user-here")
    assert result.returncode != 0
    assert "--owner no-such-user-here: no such user" in result.stderr
    assert not (tmp_path / "secrets").exists()


def test_verify_names_a_changed_secret_and_fails(tmp_path):
    secret_dir = tmp_path / "secrets"
    generated(secret_dir, "MODE16")
    path = secret_dir / "0000"
    os.chmod(path, 0o600)
    with open(path, "r+b") as file:
        file.seek(4096)
        byte = file.read(1)
        file.seek(4096)
        file.write(bytes([byte[0] ^ 0x01]))
    result = verify(secret_dir)
    assert result.returncode != 0
    assert f"{path}: content differs from its SHA-256 in the manifest" in result.stderr
    assert "1 of the 1 MODE16 files do not match" in result.stderr


def test_verify_without_a_manifest_says_so(tmp_path):
    result = verify(tmp_path)
    assert result.returncode != 0
    assert f"{tmp_path / MANIFEST}: not found" in result.stderr


def test_killed_mid_write_then_resumed(tmp_path):
    """SIGKILL while the secret is being written leaves only a temporary file; the
    next run removes it, writes the secret and the manifest."""
    for attempt in range(20):
        secret_dir = tmp_path / f"attempt-{attempt}"
        process = start_generate(secret_dir, "MODE16", "--jobs", "1")
        temp = secret_dir / ".0000.tmp"
        wait_for(lambda: temp.exists() or process.poll() is not None, 60, "the temporary file")
        process.send_signal(signal.SIGKILL)
        process.communicate()
        if temp.exists():
            break
    else:
        pytest.fail("the generator never got killed while writing its temporary file")
    assert not (secret_dir / "0000").exists(), "a final file appeared before its temporary file was renamed"
    assert not (secret_dir / MANIFEST).exists()

    result = generated(secret_dir, "MODE16")
    assert "removed 1 temporary file left by an interrupted run" in result.stderr
    assert temp_files(secret_dir) == []
    assert_manifest_matches(secret_dir, "MODE16", ["0000"])


@needs_root
def test_not_enough_space_is_refused_naming_needed_and_available_bytes(tmp_path):
    with tmpfs(tmp_path, "1m") as mountpoint:
        secret_dir = mountpoint / "secrets"
        result = generate(secret_dir, "MODE16")
        assert result.returncode != 0
        assert f"{secret_dir}: not enough space for 1 MODE16 file and the manifest" in result.stderr
        needed = FILE_LEN + 4096
        assert f"they need {needed} bytes" in result.stderr
        assert f"the filesystem has {available_bytes(mountpoint)} bytes" in result.stderr
        assert os.listdir(secret_dir) == []


@needs_root
def test_a_disk_that_fills_up_mid_run_fails_cleanly_and_the_run_resumes(tmp_path):
    """Another process fills the filesystem between the space check and the write:
    the run fails naming the problem, leaves no partial file, and a later run finishes."""
    with tmpfs(tmp_path, "64m") as mountpoint:
        for attempt in range(10):
            secret_dir = mountpoint / f"attempt-{attempt}"
            process = start_generate(secret_dir, "MODE16")
            assert process.stderr.readline().startswith("generating 1 of the 1 MODE16 files")
            process.send_signal(signal.SIGSTOP)
            if not (secret_dir / "0000").exists():
                break
            process.send_signal(signal.SIGCONT)
            process.communicate()
        else:
            pytest.fail("the generator always finished before the disk could be filled")
        filler = mountpoint / "filler"
        filler.write_bytes(bytes(available_bytes(mountpoint) - 4096))
        process.send_signal(signal.SIGCONT)
        stderr = process.communicate(timeout=60)[1]
        assert process.returncode != 0
        assert "the filesystem is full" in stderr, stderr
        assert "no partial file remains" in stderr and "run the same command again to resume" in stderr
        assert os.listdir(secret_dir) == [], "a partial or temporary file was left behind"

        filler.unlink()
        generated(secret_dir, "MODE16")
        assert temp_files(secret_dir) == []
        assert_manifest_matches(secret_dir, "MODE16", ["0000"])
        assert read_manifest(secret_dir)["mode"] == "MODE16"


def size(mode):
    return subprocess.run(secrets_command("size", "--mode", mode), capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("mode", ["MODE0", "mode16"])
def test_size_prints_the_bytes_generate_writes(tmp_path, mode):
    """The first-boot script sizes the hot copy with it."""
    secret_dir = tmp_path / "secrets"
    assert generate(secret_dir, mode).returncode == 0
    written = sum(path.stat().st_size for path in secret_dir.iterdir() if path.name != MANIFEST)
    answer = size(mode)
    assert (answer.returncode, answer.stdout) == (0, f"{written}\n"), answer.stderr


def test_size_of_the_128_gib_modes_and_of_no_mode():
    for mode in ["MODE32", "MODE32X"]:
        assert size(mode).stdout == f"{65536 * FILE_LEN}\n"
    unknown = size("MODE8")
    assert unknown.returncode == 2 and "unknown mode 'MODE8'" in unknown.stderr, unknown.stderr
