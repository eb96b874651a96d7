//! The committed test vectors (tests/vectors.json) against the Rust layout rule and
//! MAC engine; tests/server/test_vectors.py checks the same file against Python's
//! hashlib/hmac and the running server.

use cryptoserver::layout::Mode;
use cryptoserver::mac::mac;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    mode: String,
    message_hex: String,
    key_index: u32,
    file: String,
    offset: u64,
    key_hex: String,
    mac_hex: String,
}

/// The deterministic key of slot `slot` in file number `file` (see tests/reference.py).
fn vector_key(file: u16, slot: u16) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"cryptoserver test vector")
        .chain_update(file.to_be_bytes())
        .chain_update(slot.to_be_bytes())
        .finalize()
        .into()
}

#[test]
fn committed_vectors_match_the_rust_implementation() {
    let vectors: Vectors = serde_json::from_str(include_str!("vectors.json")).unwrap();
    assert_eq!(vectors.vectors.len(), 15);
    for vector in &vectors.vectors {
        let mode: Mode = vector.mode.parse().unwrap();
        let message = hex::decode(&vector.message_hex).unwrap();
        let index = mode.key_index(&message);
        let location = mode.key_location(index);
        let context = format!("{} message {}", vector.mode, vector.message_hex);
        assert_eq!(index, vector.key_index, "{context}");
        assert_eq!(mode.file_name(location.file), vector.file, "{context}");
        assert_eq!(location.offset, vector.offset, "{context}");
        let key = vector_key(location.file as u16, (location.offset / 32) as u16);
        assert_eq!(hex::encode(key), vector.key_hex, "{context}");
        assert_eq!(
            hex::encode(mac(&key, &message)),
            vector.mac_hex,
            "{context}"
        );
    }
}
