"""An independent implementation of cryptoserver's layout rule and MAC, written
from the README's specification with nothing but Python's hashlib and hmac.

Run as a script, it rewrites tests/vectors.json from the deterministic test keys;
the tests check that the committed file, this module, the Rust code and the
running server all agree.
"""

import hashlib
import hmac
import json
import os
import pathlib

KEY_LEN = 32
KEYS_PER_FILE = 65536
FILE_LEN = KEY_LEN * KEYS_PER_FILE
VECTORS = pathlib.Path(__file__).with_name("vectors.json")
MANIFEST = "cryptoserver.manifest"
VECTOR_MESSAGES = [b"", b"\x00", b"hello world", b"apples and pears", bytes(range(256)) * 4]
MODE32X_LABEL = b"cryptoserver MODE32X v1"
MODE32X_PROBES = 8
LONG_MESSAGE_RULE = "byte i = i mod 251"
LONG_MESSAGE_LEN = 1_000_000
NAMESPACE_SALT = b"cryptoserver namespace v1"
NAMESPACE_VECTOR_NAMES = ["billing", "auth"]
NAMESPACE_VECTOR_MESSAGES = [b"", b"hello world"]
MODE32X_VECTOR_MESSAGES = [b"", b"hello world", b"apples and pears", bytes(i % 251 for i in range(LONG_MESSAGE_LEN))]


def key_index(mode, message):
    """0 in MODE0; otherwise the leading 2 (MODE16) or 4 (MODE32) bytes of SHA-256, big-endian.
    MODE32X has 8 key indices per message: see mode32x_probes."""
    digest = hashlib.sha256(message).digest()
    return {"MODE0": 0, "MODE16": int.from_bytes(digest[:2], "big"), "MODE32": int.from_bytes(digest[:4], "big")}[mode]


def key_location(mode, message):
    """(file name, byte offset) of the message's key."""
    index = key_index(mode, message)
    if mode == "MODE0":
        return "secret", 0
    if mode == "MODE16":
        return "0000", KEY_LEN * index
    return f"{index >> 16:04x}", KEY_LEN * (index & 0xFFFF)


def mode32x_seed(message):
    """R = SHA-256(label || message)."""
    return hashlib.sha256(MODE32X_LABEL + message).digest()


def mode32x_probes(message):
    """The 8 probe indices: SHA-256(R || 0x00) cut into big-endian u32s."""
    digest = hashlib.sha256(mode32x_seed(message) + b"\x00").digest()
    return [int.from_bytes(digest[4 * j : 4 * j + 4], "big") for j in range(MODE32X_PROBES)]


def mode32x_key(message, key_at):
    """K' = SHA-256(R || 0x01 || key_0 .. key_7), `key_at(index)` giving the key MODE32 places at an index."""
    keys = b"".join(key_at(index) for index in mode32x_probes(message))
    return hashlib.sha256(mode32x_seed(message) + b"\x01" + keys).digest()


def key_indices(mode, message):
    """Every key index a message's MAC reads."""
    return mode32x_probes(message) if mode == "MODE32X" else [key_index(mode, message)]


def read_mode32_key(secret_dir, index):
    with open(pathlib.Path(secret_dir) / f"{index >> 16:04x}", "rb") as file:
        file.seek(KEY_LEN * (index & 0xFFFF))
        key = file.read(KEY_LEN)
    assert len(key) == KEY_LEN
    return key


def read_key(mode, secret_dir, message):
    """The key the MAC of `message` is made with (MODE32X's derived K')."""
    if mode == "MODE32X":
        return mode32x_key(message, lambda index: read_mode32_key(secret_dir, index))
    name, offset = key_location(mode, message)
    with open(pathlib.Path(secret_dir) / name, "rb") as file:
        file.seek(offset)
        key = file.read(KEY_LEN)
    assert len(key) == KEY_LEN
    return key


def namespace_key(key, namespace):
    """k_N: HKDF-SHA256 (RFC 5869) of the mode's key, salt NAMESPACE_SALT, info the
    namespace, 32 bytes: one HMAC to extract the PRK, one block to expand it."""
    prk = hmac.new(NAMESPACE_SALT, key, hashlib.sha256).digest()
    return hmac.new(prk, namespace.encode("ascii") + b"\x01", hashlib.sha256).digest()


def mac(mode, secret_dir, message, namespace=None):
    key = read_key(mode, secret_dir, message)
    if namespace is not None:
        key = namespace_key(key, namespace)
    return hmac.new(key, message, hashlib.sha256).digest()


def vector_key(file_index, slot):
    """The deterministic test key of a slot; never a real secret."""
    return hashlib.sha256(b"cryptoserver test vector" + file_index.to_bytes(2, "big") + slot.to_bytes(2, "big")).digest()


def vector_key_at(mode, index):
    """The deterministic test key with this key index in `mode`."""
    return vector_key(index >> 16 if mode in ("MODE32", "MODE32X") else 0, index & 0xFFFF)


def write_vector_secrets(mode, secret_dir, messages=VECTOR_MESSAGES):
    """Lays out the deterministic test keys for `mode` in `secret_dir`. MODE32 and
    MODE32X files are sparse: only the slots the messages select hold their keys."""
    secret_dir = pathlib.Path(secret_dir)
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    if mode == "MODE0":
        (secret_dir / "secret").write_bytes(vector_key(0, 0))
    elif mode == "MODE16":
        (secret_dir / "0000").write_bytes(b"".join(vector_key(0, slot) for slot in range(KEYS_PER_FILE)))
    else:
        indices = {index for message in messages for index in key_indices(mode, message)}
        write_sparse_mode32(secret_dir, {index: vector_key_at(mode, index) for index in indices})


def write_random_secrets(mode, secret_dir, messages=()):
    """A fresh directory (0700) of random secrets for `mode`, files 0400. MODE32
    files are sparse, with random keys only in the slots `messages` select (all 8
    probes of each in MODE32X)."""
    secret_dir = pathlib.Path(secret_dir)
    secret_dir.mkdir(mode=0o700, parents=True)
    if mode in ("MODE32", "MODE32X"):
        write_sparse_mode32(secret_dir, random_keys_for(messages, [mode]))
        return secret_dir
    name = "secret" if mode == "MODE0" else "0000"
    (secret_dir / name).write_bytes(os.urandom(KEY_LEN if mode == "MODE0" else FILE_LEN))
    os.chmod(secret_dir / name, 0o400)
    return secret_dir


def random_keys_for(messages, modes=("MODE32", "MODE32X")):
    """Random keys by key index, wherever `messages` read in any of `modes`: MODE32 and
    MODE32X use the same files, so one sparse directory can serve both."""
    return {index: os.urandom(KEY_LEN) for mode in modes for message in messages for index in key_indices(mode, message)}


def write_sparse_mode32(secret_dir, keys_by_index):
    """65,536 full-size sparse files; `keys_by_index` maps key indices to the keys to plant."""
    for file_index in range(KEYS_PER_FILE):
        with open(secret_dir / f"{file_index:04x}", "wb") as file:
            file.truncate(FILE_LEN)
    for index, key in keys_by_index.items():
        with open(secret_dir / f"{index >> 16:04x}", "r+b") as file:
            file.seek(KEY_LEN * (index & 0xFFFF))
            file.write(key)


def fingerprint(secret_dir):
    """The secrets fingerprint, written out from the README's definition: the first
    16 bytes of SHA-256 over a label, the mode, and each file's name, size and SHA-256."""
    manifest = json.loads((pathlib.Path(secret_dir) / MANIFEST).read_text())
    text = "cryptoserver secrets fingerprint v1\n" + manifest["mode"] + "\n"
    text += "".join(f"{entry['name']} {entry['size']} {entry['sha256']}\n" for entry in manifest["files"])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def compute_vectors():
    vectors = []
    for mode in ("MODE0", "MODE16", "MODE32"):
        for message in VECTOR_MESSAGES:
            index = key_index(mode, message)
            name, offset = key_location(mode, message)
            key = vector_key_at(mode, index)
            vectors.append(
                {
                    "mode": mode,
                    "message_hex": message.hex(),
                    "key_index": index,
                    "file": name,
                    "offset": offset,
                    "key_hex": key.hex(),
                    "mac_hex": hmac.new(key, message, hashlib.sha256).hexdigest(),
                }
            )
    return {
        "key_rule": "key of (file index f, slot s) = SHA-256(b'cryptoserver test vector' || u16be(f) || u16be(s))",
        # Before the original vectors, so adding these left every line of them as it was.
        "mode32x": compute_mode32x_vectors(),
        "namespaces": compute_namespace_vectors(),
        "vectors": vectors,
    }


def vector_mode_key(mode, message):
    """The test key the mode's rule gives for `message` (MODE32X: K')."""
    if mode == "MODE32X":
        return mode32x_key(message, lambda index: vector_key_at("MODE32X", index))
    return vector_key_at(mode, key_index(mode, message))


def compute_namespace_vectors():
    vectors = []
    for mode in ("MODE0", "MODE16", "MODE32", "MODE32X"):
        for namespace in NAMESPACE_VECTOR_NAMES:
            for message in NAMESPACE_VECTOR_MESSAGES:
                key = vector_mode_key(mode, message)
                derived = namespace_key(key, namespace)
                vectors.append(
                    {
                        "mode": mode,
                        "namespace": namespace,
                        "message_hex": message.hex(),
                        "key_hex": key.hex(),
                        "namespace_key_hex": derived.hex(),
                        "mac_hex": hmac.new(derived, message, hashlib.sha256).hexdigest(),
                    }
                )
    return {
        "rule": "k = the test key the mode's rule gives for m (MODE32X: K'); "
        "PRK = HMAC-SHA256(b'cryptoserver namespace v1', k); k_N = HMAC-SHA256(PRK, N || 0x01) "
        "(HKDF-SHA256, RFC 5869, 32 bytes); MAC = HMAC-SHA256(k_N, m)",
        "vectors": vectors,
    }


def mode32x_vector_message(vector):
    """A MODE32X vector's message: spelled out in hex, or given by LONG_MESSAGE_RULE."""
    if "message_hex" in vector:
        return bytes.fromhex(vector["message_hex"])
    assert vector["message_rule"] == LONG_MESSAGE_RULE, vector["message_rule"]
    return bytes(i % 251 for i in range(vector["message_len"]))


def compute_mode32x_vectors():
    vectors = []
    for message in MODE32X_VECTOR_MESSAGES:
        if len(message) == LONG_MESSAGE_LEN:
            described = {"message_rule": LONG_MESSAGE_RULE, "message_len": len(message)}
        else:
            described = {"message_hex": message.hex()}
        key = mode32x_key(message, lambda index: vector_key_at("MODE32X", index))
        vectors.append(
            {
                **described,
                "r_hex": mode32x_seed(message).hex(),
                "probe_indices": mode32x_probes(message),
                "derived_key_hex": key.hex(),
                "mac_hex": hmac.new(key, message, hashlib.sha256).hexdigest(),
            }
        )
    return {
        "rule": "R = SHA-256(b'cryptoserver MODE32X v1' || m); probe indices = SHA-256(R || 0x00) as 8 u32be; "
        "key_j = the test key MODE32 places at probe index j; K' = SHA-256(R || 0x01 || key_0 || ... || key_7); "
        "MAC = HMAC-SHA256(K', m)",
        "vectors": vectors,
    }


if __name__ == "__main__":
    VECTORS.write_text(json.dumps(compute_vectors(), indent=1) + "\n")
