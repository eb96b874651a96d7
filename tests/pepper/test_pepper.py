"""examples/pepper end to end against a real server: registration, login, what
is stored, the pepper's effect, and both upgrade paths for existing hashes."""

import base64
import dataclasses
import hashlib
import sys

import pytest
from argon2 import Parameters, PasswordHasher, Type, low_level

import reference
from conftest import REPO, running_server, server_over_random_secrets
from cryptoserver_client import Client

sys.path.insert(0, str(REPO / "examples" / "pepper"))
from pepper import SCHEME, PepperedPasswords, Record  # noqa: E402

# Cheap enough for a test (1 MiB, one pass); production keeps the default.
FAST = Parameters(type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1, memory_cost=1024, parallelism=1)
STRONGER = Parameters(type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=2, memory_cost=2048, parallelism=1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # MODE16: the key depends on the Argon2 output, as in a sealed deployment.
    with server_over_random_secrets(tmp_path_factory, "MODE16", "pepper") as server:
        yield server


@pytest.fixture
def passwords(server):
    with Client(server.url) as client:
        yield PepperedPasswords(client, FAST)


def test_register_then_login(server, passwords):
    stored = passwords.register("correct horse battery staple")
    assert stored.startswith(f"${SCHEME}$v=19$m=1024,t=1,p=1,l=32$")
    assert "correct horse" not in stored
    assert passwords.login(stored, "correct horse battery staple") == (True, None)
    assert passwords.login(stored, "correct horse battery stapler") == (False, None)
    # Same password, another user: another salt, another record.
    assert passwords.register("correct horse battery staple") != stored


def test_what_is_stored_is_the_mac_of_the_salted_argon2id_output(server, passwords):
    record = Record.decode(passwords.register("hunter2"))
    digest = low_level.hash_secret_raw(b"hunter2", record.salt, time_cost=1, memory_cost=1024, parallelism=1, hash_len=32, type=Type.ID)
    assert len(record.salt) == 16
    assert record.mac == reference.mac("MODE16", server.secret_dir, digest)
    # Without the server's key the stored value is not the Argon2 output, nor a plain hash of it.
    assert record.mac not in (digest, hashlib.sha256(digest).digest())


def test_the_stored_records_are_useless_without_the_servers_keys(tmp_path, passwords):
    stored = passwords.register("hunter2")
    other = reference.write_random_secrets("MODE16", tmp_path / "other")
    with running_server(tmp_path, "MODE16", other) as elsewhere, Client(elsewhere.url) as client:
        assert PepperedPasswords(client, FAST).login(stored, "hunter2") == (False, None)


def test_existing_plain_argon2id_hashes_are_upgraded_at_login(passwords):
    legacy = PasswordHasher.from_parameters(FAST).hash("old password")
    assert passwords.login(legacy, "wrong") == (False, None)
    matches, replacement = passwords.login(legacy, "old password")
    assert matches and replacement is not None and replacement.startswith(f"${SCHEME}$")
    assert passwords.login(replacement, "old password") == (True, None)


def test_existing_hashes_are_peppered_in_place_without_passwords(server, passwords):
    legacy = PasswordHasher.from_parameters(FAST).hash("old password")
    peppered = passwords.pepper_existing(legacy)
    raw = base64.b64decode(legacy.rsplit("$", 1)[1] + "==")
    record = Record.decode(peppered)
    assert record.mac == reference.mac("MODE16", server.secret_dir, raw)
    assert base64.b64encode(raw).decode().rstrip("=") not in peppered
    assert passwords.login(peppered, "old password") == (True, None)
    assert passwords.login(peppered, "other password") == (False, None)
    with pytest.raises(ValueError, match="Argon2id"):
        passwords.pepper_existing(PasswordHasher.from_parameters(dataclasses.replace(FAST, type=Type.I)).hash("x"))
    with pytest.raises(ValueError, match="argon2-cffi"):
        passwords.pepper_existing("$pbkdf2-sha256$29000$abc$def")


def test_weaker_records_are_rehashed_at_login(server):
    with Client(server.url) as client:
        old = PepperedPasswords(client, FAST).register("pw")
        current = PepperedPasswords(client, STRONGER)
        matches, replacement = current.login(old, "pw")
        assert matches and replacement is not None
        assert Record.decode(replacement).time_cost == 2 and Record.decode(replacement).memory_cost == 2048
        assert current.login(replacement, "pw") == (True, None)


def test_a_corrupt_record_is_refused_by_name(passwords):
    with pytest.raises(ValueError, match=SCHEME):
        passwords.login("$argon2id-cryptoserver$v=19$m=1,t=1$x$y", "pw")
