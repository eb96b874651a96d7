//! The committed test vectors (tests/vectors.json) against the Rust layout rule and
//! MAC engine; tests/server/test_vectors.py checks the same file against Python's
//! hashlib/hmac and the running server.

use cryptoserver::layout::{namespace_key, Mode, Probes};
use cryptoserver::mac::mac;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
    mode32x: Mode32xVectors,
    namespaces: NamespaceVectors,
}

#[derive(Deserialize)]
struct NamespaceVectors {
    vectors: Vec<NamespaceVector>,
}

#[derive(Deserialize)]
struct NamespaceVector {
    mode: String,
    namespace: String,
    message_hex: String,
    key_hex: String,
    namespace_key_hex: String,
    mac_hex: String,
}

#[derive(Deserialize)]
struct Mode32xVectors {
    vectors: Vec<Mode32xVector>,
}

/// A message is spelled out in hex, or given as a length and the rule "byte i = i mod 251".
#[derive(Deserialize)]
struct Mode32xVector {
    message_hex: Option<String>,
    message_rule: Option<String>,
    message_len: Option<usize>,
    r_hex: String,
    probe_indices: Vec<u32>,
    derived_key_hex: String,
    mac_hex: String,
}

impl Mode32xVector {
    fn message(&self) -> Vec<u8> {
        match (&self.message_hex, &self.message_rule, self.message_len) {
            (Some(hex), None, None) => hex::decode(hex).unwrap(),
            (None, Some(rule), Some(len)) if rule == "byte i = i mod 251" => {
                (0..len).map(|i| (i % 251) as u8).collect()
            }
            _ => panic!("a vector gives its message in hex or by the rule 'byte i = i mod 251'"),
        }
    }
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

#[test]
fn committed_mode32x_vectors_match_the_rust_implementation() {
    let vectors: Vectors = serde_json::from_str(include_str!("vectors.json")).unwrap();
    let vectors = vectors.mode32x.vectors;
    assert_eq!(vectors.len(), 4);
    assert!(vectors.iter().any(|v| v.message_len == Some(1_000_000)));
    for vector in &vectors {
        let message = vector.message();
        let context = format!("MODE32X message of {} bytes", message.len());
        let r = Sha256::new()
            .chain_update(b"cryptoserver MODE32X v1")
            .chain_update(&message)
            .finalize();
        assert_eq!(hex::encode(r), vector.r_hex, "{context}");
        let probes = Probes::of(&message);
        assert_eq!(probes.indices().to_vec(), vector.probe_indices, "{context}");
        let keys: Vec<_> = probes
            .locations()
            .iter()
            .map(|location| {
                Zeroizing::new(vector_key(
                    location.file as u16,
                    (location.offset / 32) as u16,
                ))
            })
            .collect();
        let derived = probes.derive_key(&keys);
        assert_eq!(hex::encode(*derived), vector.derived_key_hex, "{context}");
        assert_eq!(
            hex::encode(mac(&derived, &message)),
            vector.mac_hex,
            "{context}"
        );
    }
}

/// The key the mode's rule gives for `message` from the test keys (MODE32X: `K'`).
fn vector_mode_key(mode: Mode, message: &[u8]) -> [u8; 32] {
    let key_at = |location: cryptoserver::layout::KeyLocation| {
        vector_key(location.file as u16, (location.offset / 32) as u16)
    };
    if mode == Mode::Mode32x {
        let probes = Probes::of(message);
        let keys: Vec<_> = probes
            .locations()
            .map(|location| Zeroizing::new(key_at(location)))
            .to_vec();
        return *probes.derive_key(&keys);
    }
    key_at(mode.locate(message))
}

#[test]
fn committed_namespace_vectors_match_the_rust_implementation() {
    let vectors: Vectors = serde_json::from_str(include_str!("vectors.json")).unwrap();
    let vectors = vectors.namespaces.vectors;
    assert_eq!(vectors.len(), 16);
    for mode in Mode::ALL {
        for namespace in ["billing", "auth"] {
            for message in ["", "68656c6c6f20776f726c64"] {
                assert!(vectors.iter().any(|v| v.mode == mode.name()
                    && v.namespace == namespace
                    && v.message_hex == message));
            }
        }
    }
    for vector in &vectors {
        let mode: Mode = vector.mode.parse().unwrap();
        let message = hex::decode(&vector.message_hex).unwrap();
        let context = format!(
            "{} namespace {} message {}",
            vector.mode, vector.namespace, vector.message_hex
        );
        let key = vector_mode_key(mode, &message);
        assert_eq!(hex::encode(key), vector.key_hex, "{context}");
        let derived = namespace_key(&key, &vector.namespace);
        assert_eq!(hex::encode(*derived), vector.namespace_key_hex, "{context}");
        assert_eq!(
            hex::encode(mac(&derived, &message)),
            vector.mac_hex,
            "{context}"
        );
    }
}
