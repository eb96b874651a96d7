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

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Length of one key, in bytes.
pub const KEY_LEN: usize = 32;
/// Number of keys in one MODE16/MODE32 file.
pub const KEYS_PER_FILE: usize = 65_536;
/// Size of one MODE16/MODE32 file: 65,536 keys of 32 bytes (2 MiB).
pub const KEY_FILE_LEN: u64 = (KEYS_PER_FILE * KEY_LEN) as u64;
/// Number of files in a MODE32 directory.
pub const MODE32_FILE_COUNT: usize = 65_536;
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
    pub const ALL: [Mode; 3] = [Mode::Mode0, Mode::Mode16, Mode::Mode32];

    /// The canonical name, as operators write it in `CRYPTOSERVER_MODE`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Mode0 => "MODE0",
            Mode::Mode16 => "MODE16",
            Mode::Mode32 => "MODE32",
        }
    }

    /// Number of files the mode needs.
    pub fn file_count(self) -> usize {
        match self {
            Mode::Mode0 | Mode::Mode16 => 1,
            Mode::Mode32 => MODE32_FILE_COUNT,
        }
    }

    /// Exact size every file of the mode must have.
    pub fn file_len(self) -> u64 {
        match self {
            Mode::Mode0 => KEY_LEN as u64,
            Mode::Mode16 | Mode::Mode32 => KEY_FILE_LEN,
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
            Mode::Mode16 | Mode::Mode32 => format!("{index:04x}"),
        }
    }

    /// Names of all the files of the mode, in order.
    pub fn file_names(self) -> impl Iterator<Item = String> {
        (0..self.file_count()).map(move |index| self.file_name(index))
    }

    /// The key index of a message: 0 in MODE0, else the leading bytes of its SHA-256.
    pub fn key_index(self, message: &[u8]) -> u32 {
        if self == Mode::Mode0 {
            return 0;
        }
        let digest = Sha256::digest(message);
        match self {
            Mode::Mode0 => unreachable!(),
            Mode::Mode16 => u32::from(u16::from_be_bytes([digest[0], digest[1]])),
            Mode::Mode32 => u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
        }
    }

    /// Where the key with this index lives.
    pub fn key_location(self, key_index: u32) -> KeyLocation {
        let slot = key_index as usize % KEYS_PER_FILE;
        KeyLocation {
            file: match self {
                Mode::Mode0 | Mode::Mode16 => 0,
                Mode::Mode32 => (key_index >> 16) as usize,
            },
            offset: (slot * KEY_LEN) as u64,
        }
    }

    /// Where the key for `message` lives.
    pub fn locate(self, message: &[u8]) -> KeyLocation {
        self.key_location(self.key_index(message))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A mode name that is none of MODE0, MODE16, MODE32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMode(pub String);

impl fmt::Display for UnknownMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown mode '{}': valid modes are MODE0, MODE16 and MODE32 (case-insensitive)",
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
        assert!(error.contains("MODE8") && error.contains("MODE0, MODE16 and MODE32"));
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
}
