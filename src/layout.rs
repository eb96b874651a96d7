//! The on-disk layout of the secrets and the rule that picks one key per message.
//!
//! This module is the single owner of that rule: the server, the secret
//! generator, the tests and the benchmarks all call it, so they can never
//! disagree about which file and which 32 bytes hold a message's key.
//!
//! - MODE0: file `secret`, 32 bytes, one key.
//! - MODE16: file `0000`, 65,536 keys of 32 bytes. The key index is the
//!   big-endian u16 of the first 2 bytes of SHA-256(message).
//! - MODE32: files `0000`..`ffff`, 65,536 keys each. The key index is the
//!   big-endian u32 of the first 4 bytes of SHA-256(message); its high 16 bits
//!   name the file, its low 16 bits the slot in that file.
//! - MODE32X: MODE32's files; each message reads 8 keys and derives its own
//!   (see [`Probes`]), so a partial copy of the files predicts few MACs.
//!
//! A client with a namespace MACs under a key derived from the mode's key
//! (see [`namespace_key`]).

use std::fmt;
use std::str::FromStr;

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Length of one key, in bytes.
pub const KEY_LEN: usize = 32;
/// Number of keys in one MODE16/MODE32 file.
pub const KEYS_PER_FILE: usize = 65_536;
/// Size of one MODE16/MODE32 file: 65,536 keys of 32 bytes (2 MiB).
pub const KEY_FILE_LEN: u64 = (KEYS_PER_FILE * KEY_LEN) as u64;
/// Number of files in a MODE32 directory.
pub const MODE32_FILE_COUNT: usize = 65_536;
/// Keys one MODE32X message reads.
pub const MODE32X_PROBES: usize = 8;
/// What MODE32X hashes before the message: 23 ASCII bytes, no terminator.
pub const MODE32X_LABEL: &[u8] = b"cryptoserver MODE32X v1";
/// HKDF's salt in the namespace rule: 25 ASCII bytes, no terminator.
pub const NAMESPACE_SALT: &[u8] = b"cryptoserver namespace v1";
/// Name of the single MODE0 key file.
pub const MODE0_FILE_NAME: &str = "secret";
/// Name of the manifest the generator writes last.
pub const MANIFEST_FILE_NAME: &str = "cryptoserver.manifest";

/// How many keys the server uses, and so how the secrets directory is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Mode0,
    Mode16,
    Mode32,
    Mode32x,
}

/// Where one key lives: which file of the mode, and at which byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLocation {
    /// Index of the file in [`Mode::file_name`] order.
    pub file: usize,
    /// Byte offset of the 32-byte key inside that file.
    pub offset: u64,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Mode0, Mode::Mode16, Mode::Mode32, Mode::Mode32x];

    /// The canonical name, as operators write it in `CRYPTOSERVER_MODE`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Mode0 => "MODE0",
            Mode::Mode16 => "MODE16",
            Mode::Mode32 => "MODE32",
            Mode::Mode32x => "MODE32X",
        }
    }

    /// Number of files the mode needs.
    pub fn file_count(self) -> usize {
        match self {
            Mode::Mode0 | Mode::Mode16 => 1,
            Mode::Mode32 | Mode::Mode32x => MODE32_FILE_COUNT,
        }
    }

    /// Exact size every file of the mode must have.
    pub fn file_len(self) -> u64 {
        match self {
            Mode::Mode0 => KEY_LEN as u64,
            Mode::Mode16 | Mode::Mode32 | Mode::Mode32x => KEY_FILE_LEN,
        }
    }

    /// Total bytes of secrets the mode holds.
    pub fn total_len(self) -> u64 {
        self.file_len() * self.file_count() as u64
    }

    /// Name of file number `index` (`secret`, or four lower-case hex digits).
    pub fn file_name(self, index: usize) -> String {
        assert!(
            index < self.file_count(),
            "{self} has no file number {index}"
        );
        match self {
            Mode::Mode0 => MODE0_FILE_NAME.to_owned(),
            Mode::Mode16 | Mode::Mode32 | Mode::Mode32x => format!("{index:04x}"),
        }
    }

    /// Names of all the files of the mode, in order.
    pub fn file_names(self) -> impl Iterator<Item = String> {
        (0..self.file_count()).map(move |index| self.file_name(index))
    }

    /// Whether the two modes lay out the same files: a directory of one
    /// passes the other's startup checks (MODE32 and MODE32X).
    pub fn same_files_as(self, other: Mode) -> bool {
        self.file_count() == other.file_count() && self.file_len() == other.file_len()
    }

    /// How many keys one MAC reads: 8 in MODE32X, else 1.
    pub fn keys_per_mac(self) -> usize {
        match self {
            Mode::Mode32x => MODE32X_PROBES,
            Mode::Mode0 | Mode::Mode16 | Mode::Mode32 => 1,
        }
    }

    /// The key index of a message: 0 in MODE0, else the leading bytes of its SHA-256.
    ///
    /// # Panics
    /// In MODE32X, where a message has 8 key indices: see [`Probes`].
    pub fn key_index(self, message: &[u8]) -> u32 {
        if self == Mode::Mode0 {
            return 0;
        }
        let digest = Sha256::digest(message);
        match self {
            Mode::Mode0 => unreachable!(),
            Mode::Mode16 => u32::from(u16::from_be_bytes([digest[0], digest[1]])),
            Mode::Mode32 => u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
            Mode::Mode32x => panic!("MODE32X reads {MODE32X_PROBES} keys per message: use Probes"),
        }
    }

    /// Where the key with this index lives.
    pub fn key_location(self, key_index: u32) -> KeyLocation {
        let slot = key_index as usize % KEYS_PER_FILE;
        KeyLocation {
            file: match self {
                Mode::Mode0 | Mode::Mode16 => 0,
                Mode::Mode32 | Mode::Mode32x => (key_index >> 16) as usize,
            },
            offset: (slot * KEY_LEN) as u64,
        }
    }

    /// Where the key for `message` lives.
    ///
    /// # Panics
    /// In MODE32X, as [`Mode::key_index`].
    pub fn locate(self, message: &[u8]) -> KeyLocation {
        self.key_location(self.key_index(message))
    }
}

/// MODE32X's rule for one message `m`:
/// 1. `R = SHA-256("cryptoserver MODE32X v1" || m)`;
/// 2. `P = SHA-256(R || 0x00)`, read as 8 big-endian u32 probe indices;
/// 3. probe `j` is the key MODE32 places at index `w_j` (repeats are read as they are);
/// 4. `K' = SHA-256(R || 0x01 || key_0 || ... || key_7)`;
/// 5. the MAC is HMAC-SHA256(`K'`, `m`).
///
/// An attacker holding a fraction λ of the files, taken before `m` was chosen,
/// has all 8 probes of `m` with probability about λ^8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probes {
    /// Public: anyone who knows the message can compute it.
    r: [u8; 32],
    indices: [u32; MODE32X_PROBES],
}

impl Probes {
    pub fn of(message: &[u8]) -> Probes {
        let r: [u8; 32] = Sha256::new()
            .chain_update(MODE32X_LABEL)
            .chain_update(message)
            .finalize()
            .into();
        let p = Sha256::new()
            .chain_update(r)
            .chain_update([0x00])
            .finalize();
        let indices = std::array::from_fn(|j| {
            u32::from_be_bytes(p[4 * j..4 * j + 4].try_into().expect("4 bytes"))
        });
        Probes { r, indices }
    }

    /// The 8 probe indices `w_0 .. w_7`, in order.
    pub fn indices(&self) -> [u32; MODE32X_PROBES] {
        self.indices
    }

    /// Where each probe's key lives: exactly where MODE32 places its index.
    pub fn locations(&self) -> [KeyLocation; MODE32X_PROBES] {
        self.indices.map(|index| Mode::Mode32x.key_location(index))
    }

    /// `K'` from the keys read at [`Probes::locations`], in the same order.
    /// The hasher, which holds the last key's tail, is zeroed before it is dropped.
    pub fn derive_key(&self, keys: &[Zeroizing<[u8; KEY_LEN]>]) -> Zeroizing<[u8; KEY_LEN]> {
        assert_eq!(keys.len(), MODE32X_PROBES, "one key per probe");
        let mut hasher = Sha256::new().chain_update(self.r).chain_update([0x01]);
        for key in keys {
            hasher.update(key.as_slice());
        }
        let mut derived = Zeroizing::new([0u8; KEY_LEN]);
        hasher.finalize_into_reset((&mut *derived).into());
        // SAFETY: Sha256 holds only integer arrays and counters, for which
        // all-zero bytes are a valid value, and it has no Drop of its own.
        unsafe { zeroize::zeroize_flat_type(&mut hasher) };
        derived
    }
}

/// The namespace rule: the key a client of `namespace` MACs under, from the
/// key `k` the mode's rule gives for the message (MODE32X: `K'`):
/// `k_N` = HKDF-SHA256 (RFC 5869) with salt [`NAMESPACE_SALT`], input key
/// material `k`, info the namespace's ASCII bytes, 32 bytes long; that is
/// `PRK = HMAC(salt, k)`, `k_N = HMAC(PRK, N || 0x01)`.
///
/// Not `HMAC(k, label || N)`: the server MACs under `k` whatever a client
/// sends, so a key of that shape is a MAC any client of the default namespace
/// could ask for. The server never MACs under the public salt.
pub fn namespace_key(key: &[u8; KEY_LEN], namespace: &str) -> Zeroizing<[u8; KEY_LEN]> {
    let mut derived = Zeroizing::new([0u8; KEY_LEN]);
    let mut hkdf = Hkdf::<Sha256>::new(Some(NAMESPACE_SALT), key);
    hkdf.expand(namespace.as_bytes(), derived.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    // SAFETY: Hkdf<Sha256> holds the PRK's HMAC state: integer arrays and
    // counters, for which all-zero bytes are a valid value, and no Drop of its own.
    unsafe { zeroize::zeroize_flat_type(&mut hkdf) };
    derived
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A mode name that is none of MODE0, MODE16, MODE32, MODE32X.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMode(pub String);

impl fmt::Display for UnknownMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown mode '{}': valid modes are MODE0, MODE16, MODE32 and MODE32X (case-insensitive)",
            self.0
        )
    }
}

impl std::error::Error for UnknownMode {}

impl FromStr for Mode {
    type Err = UnknownMode;

    /// Case-insensitive: the original design itself writes `Mode32`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name().eq_ignore_ascii_case(text))
            .ok_or_else(|| UnknownMode(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_parse_case_insensitively() {
        assert_eq!("MODE0".parse(), Ok(Mode::Mode0));
        assert_eq!("Mode32".parse(), Ok(Mode::Mode32));
        assert_eq!("mode16".parse(), Ok(Mode::Mode16));
        let error = "MODE8".parse::<Mode>().unwrap_err().to_string();
        assert!(error.contains("MODE8") && error.contains("MODE0, MODE16, MODE32 and MODE32X"));
        assert_eq!("mode32x".parse(), Ok(Mode::Mode32x));
        assert!(" MODE0".parse::<Mode>().is_err());
    }

    #[test]
    fn file_names_follow_the_original_design() {
        assert_eq!(Mode::Mode0.file_names().collect::<Vec<_>>(), ["secret"]);
        assert_eq!(Mode::Mode16.file_names().collect::<Vec<_>>(), ["0000"]);
        let mode32: Vec<_> = Mode::Mode32.file_names().collect();
        assert_eq!(mode32.len(), 65_536);
        assert_eq!(mode32[0xbeef], "beef");
        assert_eq!(mode32[0xffff], "ffff");
        assert_eq!(Mode::Mode32.total_len(), 128 << 30);
        assert!(Mode::Mode32x.file_names().eq(Mode::Mode32.file_names()));
        assert!(Mode::Mode32x.same_files_as(Mode::Mode32));
        assert!(
            !Mode::Mode16.same_files_as(Mode::Mode32) && !Mode::Mode0.same_files_as(Mode::Mode16)
        );
    }

    #[test]
    fn key_location_matches_the_rule() {
        // SHA-256("hello world") = b94d27b9...
        assert_eq!(
            Mode::Mode0.locate(b"hello world"),
            KeyLocation { file: 0, offset: 0 }
        );
        assert_eq!(Mode::Mode16.key_index(b"hello world"), 0xb94d);
        assert_eq!(
            Mode::Mode16.locate(b"hello world"),
            KeyLocation {
                file: 0,
                offset: 32 * 0xb94d
            }
        );
        assert_eq!(Mode::Mode32.key_index(b"hello world"), 0xb94d27b9);
        assert_eq!(
            Mode::Mode32.locate(b"hello world"),
            KeyLocation {
                file: 0xb94d,
                offset: 32 * 0x27b9
            }
        );
        // The last slot ends exactly at the end of the file.
        let last = Mode::Mode32.key_location(u32::MAX);
        assert_eq!(
            (last.file, last.offset + KEY_LEN as u64),
            (0xffff, KEY_FILE_LEN)
        );
    }

    #[test]
    fn namespace_keys_follow_the_rule() {
        use hmac::{Hmac, Mac as _};
        let hmac = |key: &[u8], message: &[u8]| -> Vec<u8> {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        };
        assert_eq!(NAMESPACE_SALT.len(), 25);
        let key = [7u8; KEY_LEN];
        let prk = hmac(NAMESPACE_SALT, &key);
        let expected = hmac(&prk, b"billing\x01");
        assert_eq!(namespace_key(&key, "billing").as_slice(), expected);
        assert_ne!(namespace_key(&key, "auth"), namespace_key(&key, "billing"));
        assert_ne!(
            namespace_key(&[8; KEY_LEN], "billing"),
            namespace_key(&key, "billing")
        );
    }

    #[test]
    fn mode32x_probes_follow_the_rule() {
        let message = b"hello world";
        let r = Sha256::digest([MODE32X_LABEL, message].concat());
        let p = Sha256::digest([r.as_slice(), &[0]].concat());
        let probes = Probes::of(message);
        assert_eq!(
            probes.indices()[0],
            u32::from_be_bytes(p[..4].try_into().unwrap())
        );
        assert_eq!(
            probes.indices()[7],
            u32::from_be_bytes(p[28..].try_into().unwrap())
        );
        let w = probes.indices()[3];
        assert_eq!(probes.locations()[3], Mode::Mode32.key_location(w));
        let keys: Vec<_> = (0..8u8).map(|j| Zeroizing::new([j; KEY_LEN])).collect();
        let mut input = [r.as_slice(), &[1]].concat();
        (0..8u8).for_each(|j| input.extend([j; KEY_LEN]));
        assert_eq!(input.len(), 32 + 1 + 256);
        assert_eq!(
            probes.derive_key(&keys).as_slice(),
            Sha256::digest(&input).as_slice()
        );
    }
}
