"""The real MODE32 command, on a loop-mounted ext4 of 140 GiB backed by a sparse image
(so its space check passes and only what is written takes disk space), interrupted
every way it can be, then finished, then served.

One scenario, run once for the module, stage by stage:
1. the command is killed (SIGKILL) while writing its first files;
2. run again on a terminal, it reports the removed temporary files and the files
   kept, shows its progress bar, and is killed again;
3. all but 32 of the missing files are filled in by hand (hard links to a few
   random files: what the generator must keep and hash, like hand-made files);
   while the command runs, another process fills the filesystem;
4. with the space freed, the command finishes and writes the manifest.
The tests then check each stage's record, and that the server serves the result.
"""

import hashlib
import os
import pathlib
import pty
import re
import signal
import subprocess
import threading

import pytest
import requests

import reference
from conftest import binary, free_port, running_server
from secret_tools import (
    FILE_LEN,
    MANIFEST,
    assert_manifest_matches,
    available_bytes,
    final_files,
    loop_ext4,
    needs_root,
    read_manifest,
    secrets_command,
    sha256_file,
    start_generate,
    temp_files,
    wait_for,
)

pytestmark = needs_root

ALL_NAMES = [f"{index:04x}" for index in range(65536)]
LEFT_FOR_THE_DISK_FULL_RUN = 32
MAX_LINKS = 60000  # ext4 allows 65,000 links to one inode


def hash_files(secret_dir, names):
    return {name: sha256_file(secret_dir / name) for name in names}


def wait_for_files(secret_dir, count, process):
    wait_for(lambda: len(final_files(secret_dir)) >= count or process.poll() is not None, 120, f"{count} files")
    assert process.poll() is None, "the generator stopped on its own"


class Terminal:
    """The generator's stderr on a pseudo-terminal, collected as it arrives."""

    def __init__(self, secret_dir):
        controller, self.terminal = pty.openpty()
        env = {**os.environ, "TERM": "xterm"}
        self.process = subprocess.Popen(
            secrets_command("generate", "--mode", "MODE32", "--dir", secret_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.terminal,
            env=env,
        )
        os.close(self.terminal)
        self.chunks = []
        self.reader = threading.Thread(target=self._read, args=(controller,), daemon=True)
        self.reader.start()

    def _read(self, controller):
        try:
            while chunk := os.read(controller, 65536):
                self.chunks.append(chunk)
        except OSError:  # EIO once the generator is gone
            pass
        finally:
            os.close(controller)

    def output(self):
        return b"".join(self.chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mode32")
    with loop_ext4(tmp_path, 140 << 30, inodes=70_000) as mountpoint:
        secret_dir = mountpoint / "secrets"
        record = {"dir": secret_dir}

        # 1. Killed while writing its first files.
        process = start_generate(secret_dir, "MODE32")
        record["first_line"] = process.stderr.readline()
        wait_for_files(secret_dir, 8, process)
        record["hashed_before_kill_1"] = hash_files(secret_dir, final_files(secret_dir))
        process.kill()
        process.communicate()
        record["after_kill_1"] = {"finals": final_files(secret_dir), "temps": temp_files(secret_dir)}

        # 2. Resumed on a terminal, killed again.
        terminal = Terminal(secret_dir)
        wait_for_files(secret_dir, len(record["after_kill_1"]["finals"]) + 8, terminal.process)
        record["hashed_before_kill_2"] = hash_files(secret_dir, final_files(secret_dir))
        terminal.process.kill()
        terminal.process.wait()
        terminal.reader.join(timeout=10)
        record["terminal_output"] = terminal.output()
        record["after_kill_2"] = {"finals": final_files(secret_dir), "temps": temp_files(secret_dir)}

        # 3. Filled in by hand but for a few files; the disk fills up during the run.
        existing = set(final_files(secret_dir))
        missing = [name for name in ALL_NAMES if name not in existing]
        left, by_hand = missing[-LEFT_FOR_THE_DISK_FULL_RUN:], missing[:-LEFT_FOR_THE_DISK_FULL_RUN]
        record["hand_made"] = fill_by_hand(secret_dir, by_hand)
        record["left"] = left
        process = start_generate(secret_dir, "MODE32")
        record["disk_full_first_line"] = process.stderr.readline()
        process.send_signal(signal.SIGSTOP)
        record["done_before_the_disk_filled"] = [name for name in left if (secret_dir / name).exists()]
        filler = mountpoint / "filler"
        with open(filler, "wb") as file:
            os.posix_fallocate(file.fileno(), 0, available_bytes(mountpoint) - (5 << 20))
        process.send_signal(signal.SIGCONT)
        stderr = process.communicate(timeout=300)[1]
        record["disk_full"] = {
            "returncode": process.returncode,
            "stderr": stderr,
            "finals": final_files(secret_dir),
            "temps": temp_files(secret_dir),
            "manifest": (secret_dir / MANIFEST).exists(),
            "sizes": {os.path.getsize(secret_dir / name) for name in final_files(secret_dir)},
        }

        # 4. Space freed: the same command finishes.
        filler.unlink()
        result = subprocess.run(
            secrets_command("generate", "--mode", "MODE32", "--dir", secret_dir),
            capture_output=True,
            text=True,
            timeout=1200,
        )
        record["final_run"] = result
        yield record


def fill_by_hand(secret_dir, names):
    """Complete files the generator did not write: hard links to a few random files.
    Returns their SHA-256 by name."""
    hashes = {}
    for start in range(0, len(names), MAX_LINKS):
        group = names[start : start + MAX_LINKS]
        first = secret_dir / group[0]
        content = os.urandom(FILE_LEN)
        first.write_bytes(content)
        os.chmod(first, 0o400)
        digest = hashlib.sha256(content).hexdigest()
        for name in group:
            if name != group[0]:
                os.link(first, secret_dir / name)
            hashes[name] = digest
    return hashes


def test_the_real_command_passes_its_space_check_and_starts(scenario):
    assert scenario["first_line"].startswith("generating 65536 of the 65536 MODE32 files (128.00 GiB)")


def test_a_killed_run_leaves_only_complete_files(scenario):
    for stage in ("after_kill_1", "after_kill_2"):
        for name in scenario[stage]["finals"]:
            assert name in ALL_NAMES
        # Each job's writers have at most a group of files each in flight
        # (WRITERS_PER_JOB x FILES_IN_FLIGHT in src/generate.rs).
        assert len(scenario[stage]["temps"]) <= 4 * 4 * os.cpu_count(), scenario[stage]["temps"]


def test_the_resumed_run_reports_what_it_kept_and_removed(scenario):
    output = scenario["terminal_output"]
    kept = len(scenario["after_kill_1"]["finals"])
    removed = len(scenario["after_kill_1"]["temps"])
    assert f"of the 65536 MODE32 files (" in output, output
    assert f"{kept} already complete" in output, output
    if removed:
        plural = "" if removed == 1 else "s"
        assert f"removed {removed} temporary file{plural} left by an interrupted run" in output, output


def test_on_a_terminal_progress_is_a_bar_with_rate_and_eta(scenario):
    output = scenario["terminal_output"]
    assert "generating [" in output and "/s, ETA " in output, output


def test_a_full_disk_fails_cleanly(scenario):
    assert scenario["disk_full_first_line"].startswith(f"generating {LEFT_FOR_THE_DISK_FULL_RUN} of the 65536")
    assert len(scenario["done_before_the_disk_filled"]) < LEFT_FOR_THE_DISK_FULL_RUN
    disk_full = scenario["disk_full"]
    assert disk_full["returncode"] != 0
    assert "the filesystem is full" in disk_full["stderr"], disk_full["stderr"]
    assert "no partial file remains" in disk_full["stderr"]
    assert "run the same command again to resume" in disk_full["stderr"]
    assert disk_full["temps"] == [], "a temporary file was left behind"
    assert disk_full["sizes"] == {FILE_LEN}, "a final file is not complete"
    assert not disk_full["manifest"]
    assert len(disk_full["finals"]) < 65536, "the disk never filled up"


def test_the_last_run_finishes_everything(scenario):
    result = scenario["final_run"]
    assert result.returncode == 0, result.stderr
    assert "MODE32 complete" in result.stderr and f"wrote {MANIFEST}" in result.stderr
    # Not a terminal: a plain progress line every few seconds while the kept files are hashed.
    assert re.search(r"^hashing the files kept from before: [\d.]+ \w+ of 127\.\d+ GiB \(\d+%\), ", result.stderr, re.M)
    secret_dir = scenario["dir"]
    assert final_files(secret_dir) == ALL_NAMES
    assert temp_files(secret_dir) == []
    assert {os.path.getsize(secret_dir / name) for name in ALL_NAMES} == {FILE_LEN}


def test_files_completed_before_each_kill_are_unchanged(scenario):
    secret_dir = scenario["dir"]
    for stage in ("hashed_before_kill_1", "hashed_before_kill_2"):
        before = scenario[stage]
        assert before, stage
        assert hash_files(secret_dir, before) == before, stage


def test_the_manifest_records_every_file(scenario):
    secret_dir = scenario["dir"]
    hand_made = scenario["hand_made"]
    written = [name for name in ALL_NAMES if name not in hand_made]
    known = {**hand_made, **hash_files(secret_dir, written)}
    assert_manifest_matches(secret_dir, "MODE32", ALL_NAMES, known_hashes=known)
    for name in written:
        assert os.stat(secret_dir / name).st_mode & 0o777 == 0o400


def message_in_generated_file(scenario):
    generated = {int(name, 16) for name in ALL_NAMES if name not in scenario["hand_made"]}
    for counter in range(1_000_000):
        message = b"mode32 message %d" % counter
        if reference.key_index("MODE32", message) >> 16 in generated:
            return message
    raise AssertionError("no message lands in a generated file")


def test_the_server_serves_the_generated_mode32_directory(tmp_path, scenario):
    secret_dir = scenario["dir"]
    message = message_in_generated_file(scenario)
    with running_server(tmp_path, "MODE32", secret_dir, startup_timeout=120) as server:
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
        response = requests.post(f"{server.url}/hmac", data=message, timeout=10)
        assert response.status_code == 200
        assert response.content == reference.mac("MODE32", secret_dir, message)


def test_the_server_refuses_mode16_over_the_mode32_directory(scenario):
    secret_dir = scenario["dir"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSERVER_")}
    env.update(CRYPTOSERVER_MODE="MODE16", CRYPTOSERVER_SECRETDIR=str(secret_dir), CRYPTOSERVER_BIND=f"127.0.0.1:{free_port()}")
    result = subprocess.run([binary("cryptoserver")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "MODE32" in result.stderr and MANIFEST in result.stderr, result.stderr
    assert read_manifest(secret_dir)["mode"] == "MODE32"
