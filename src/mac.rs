//! The MAC engine: HMAC-SHA256 (RFC 2104) with one 32-byte key.

use std::fmt;

use base64::Engine as _;
use hmac::digest::core_api::CoreWrapper;
use hmac::digest::KeyInit;
use hmac::{HmacCore, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::layout::KEY_LEN;

/// Length of a MAC, in bytes.
pub const MAC_LEN: usize = 32;

pub type Mac = [u8; MAC_LEN];

/// A key with its HMAC inner and outer pad states already hashed, so a MAC costs
/// only the message's blocks plus the two finalisations.
#[derive(Clone)]
pub struct PrecomputedKey(HmacCore<Sha256>);

impl PrecomputedKey {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        PrecomputedKey(HmacCore::new_from_slice(key).expect("HMAC takes keys of any length"))
    }

    pub fn mac(&self, message: &[u8]) -> Mac {
        let mut hmac = CoreWrapper::from_core(self.0.clone());
        hmac.update(message);
        hmac.finalize().into_bytes().into()
    }
}

impl PrecomputedKey {
    /// Overwrites the key-derived state with zeros.
    pub fn zeroize(&mut self) {
        // SAFETY: HmacCore<Sha256> holds only integer arrays and counters, for
        // which all-zero bytes are a valid value, and it has no Drop of its own.
        unsafe { zeroize::zeroize_flat_type(&mut self.0) }
    }
}

/// Key material never reaches a log through `{:?}`.
impl fmt::Debug for PrecomputedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrecomputedKey(..)")
    }
}

/// HMAC-SHA256 of `message` under `key`, for keys read per request (MODE32).
pub fn mac(key: &[u8; KEY_LEN], message: &[u8]) -> Mac {
    PrecomputedKey::new(key).mac(message)
}

/// Standard base64, as `?encoding=base64` writes MACs.
pub const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const BASE64_ANY_PADDING: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Reads a MAC written as 64 hex digits (either case) or as standard base64,
/// padded or not; surrounding whitespace is ignored.
pub fn parse_mac(text: &[u8]) -> Option<Mac> {
    let text = text.trim_ascii();
    let bytes = if text.len() == 2 * MAC_LEN {
        hex::decode(text).ok()?
    } else {
        BASE64_ANY_PADDING.decode(text).ok()?
    };
    Mac::try_from(bytes).ok()
}

/// Compares two MACs in time independent of where they differ.
pub fn macs_equal(expected: &Mac, presented: &Mac) -> bool {
    expected.ct_eq(presented).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(text: &str) -> Vec<u8> {
        hex::decode(text).unwrap()
    }

    #[test]
    fn rfc4231_case_2_with_a_32_byte_key() {
        // RFC 4231 uses short keys; HMAC zero-pads keys up to the block size, so
        // "Jefe" padded with zeros to 32 bytes gives the same MAC as "Jefe".
        let mut key = [0u8; KEY_LEN];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            mac(&key, b"what do ya want for nothing?").to_vec(),
            unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn precomputed_key_can_be_reused() {
        let key = PrecomputedKey::new(&[7; KEY_LEN]);
        assert_eq!(key.mac(b"a"), mac(&[7; KEY_LEN], b"a"));
        assert_eq!(key.mac(b"a"), key.mac(b"a"));
        assert_ne!(key.mac(b"a"), key.mac(b"b"));
        assert_eq!(format!("{key:?}"), "PrecomputedKey(..)");
    }

    #[test]
    fn mac_text_forms() {
        let mac: Mac = std::array::from_fn(|i| i as u8 * 7);
        assert_eq!(parse_mac(hex::encode(mac).as_bytes()), Some(mac));
        assert_eq!(parse_mac(hex::encode_upper(mac).as_bytes()), Some(mac));
        let padded = BASE64.encode(mac);
        assert_eq!(parse_mac(padded.as_bytes()), Some(mac));
        assert_eq!(
            parse_mac(padded.trim_end_matches('=').as_bytes()),
            Some(mac)
        );
        assert_eq!(parse_mac(format!(" {padded}\t").as_bytes()), Some(mac));
        for bad in [
            "",
            "zz",
            &"g".repeat(64),
            &BASE64.encode([0u8; 31]),
            &hex::encode([0u8; 33]),
        ] {
            assert_eq!(parse_mac(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn comparison() {
        assert!(macs_equal(&[1; 32], &[1; 32]));
        let mut other = [1; 32];
        other[31] = 0;
        assert!(!macs_equal(&[1; 32], &other));
    }
}
