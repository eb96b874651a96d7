//! The secrets as the server holds them: checked once at startup (fail closed),
//! then MODE0/MODE16 keys in memory and MODE32/MODE32X keys read from disk per request.
//!
//! - [`startup`]: the checks a directory passes before it is served.
//! - [`files`]: MODE32's files, read per key, with failures tracked for `/readyz`.
//! - [`descriptors`]: how many files the process may keep open.
//! - [`batch`]: how a batch's keys are read and its MACs computed.
//! - [`ring`]: the io_uring driver; [`table`]: the in-memory keys.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;

use crate::layout::{KeyLocation, Mode, KEY_LEN};
use crate::limits::ConcurrencyLimit;
use crate::mac::{self, Mac};
use crate::manifest::{Fingerprint, Manifest};
use crate::metrics::KeyReadStats;

mod batch;
mod descriptors;
mod files;
mod ring;
mod startup;
mod table;

pub use descriptors::{descriptors_left, mode32_files_kept_open};
pub use files::{KeyReads, KeyUnavailable, UnknownKeyReads};
pub use startup::LoadError;

use files::KeyFiles;
use table::KeyTable;

/// Cheap to clone: the keys are shared.
#[derive(Clone)]
pub struct KeyStore {
    mode: Mode,
    keys: Keys,
    /// Of the directory's manifest; `None` for secrets made by hand.
    fingerprint: Option<Fingerprint>,
}

#[derive(Clone)]
enum Keys {
    /// MODE0 and MODE16: every key, with its HMAC pads already hashed.
    InMemory(Arc<KeyTable>),
    /// MODE32 and MODE32X: 128 GiB stays on disk.
    OnDisk(Arc<KeyFiles>),
}

impl KeyStore {
    /// Checks the secrets directory for `mode` and loads it; `reads` applies to
    /// MODE32 and MODE32X only. Blocking: call before serving.
    pub fn load(mode: Mode, dir: &Path, reads: KeyReads) -> Result<KeyStore, LoadError> {
        startup::check_directory(dir)?;
        let manifest = startup::read_manifest(mode, dir)?;
        let keys = match mode {
            Mode::Mode0 | Mode::Mode16 => Keys::InMemory(Arc::new(startup::load_in_memory(
                mode,
                dir,
                manifest.as_ref(),
            )?)),
            Mode::Mode32 | Mode::Mode32x => {
                Keys::OnDisk(Arc::new(KeyFiles::open(mode, dir, reads)?))
            }
        };
        Ok(KeyStore {
            mode,
            keys,
            fingerprint: manifest.as_ref().map(Manifest::fingerprint),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The fingerprint of the secrets served, from their manifest.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The MAC of `message` under the key the layout rule picks for it.
    pub async fn mac(&self, message: &[u8]) -> Result<Mac, KeyUnavailable> {
        match &self.keys {
            Keys::InMemory(_) => self.mac_blocking(message),
            Keys::OnDisk(files) => KeyFiles::mac_async(files, message).await,
        }
    }

    /// The MACs of the messages at `frames` in `body`, concatenated in order.
    /// Work on the blocking threads that this future leaves behind when dropped
    /// stops after the message at hand, and holds a place under `limit` until then.
    pub async fn mac_batch(
        &self,
        body: Bytes,
        frames: Vec<Range<usize>>,
        limit: &Arc<ConcurrencyLimit>,
    ) -> Result<Vec<u8>, KeyUnavailable> {
        match &self.keys {
            Keys::OnDisk(files) if files.reads_through_ring() || self.mode.keys_per_mac() > 1 => {
                batch::macs_as_keys_arrive(files, self.mode, &body, frames).await
            }
            Keys::InMemory(_) => {
                let store = self.clone();
                batch::macs_on_threads(
                    body,
                    frames,
                    batch::CHUNK_IN_MEMORY,
                    limit,
                    move |message| store.mac_blocking(message),
                )
                .await
            }
            Keys::OnDisk(_) => {
                let store = self.clone();
                batch::macs_on_threads(body, frames, 1, limit, move |message| {
                    store.mac_blocking(message)
                })
                .await
            }
        }
    }

    /// The MAC of one message, reading its key on this thread if it is on disk
    /// (MODE32 without io_uring; MODE32X never reads on one thread).
    fn mac_blocking(&self, message: &[u8]) -> Result<Mac, KeyUnavailable> {
        let location = self.mode.locate(message);
        match &self.keys {
            Keys::InMemory(keys) => Ok(keys[slot(location)].mac(message)),
            Keys::OnDisk(files) => Ok(mac::mac(&*files.read_key(location)?, message)),
        }
    }

    /// MODE32's key-read counters; `None` for keys held in memory.
    pub fn read_stats(&self) -> Option<&KeyReadStats> {
        match &self.keys {
            Keys::InMemory(_) => None,
            Keys::OnDisk(files) => Some(files.stats()),
        }
    }

    /// True while every key can be read: MODE32 files that failed are probed
    /// again (at most once a second, however often this is asked), so readiness
    /// comes back by itself once they can be read.
    pub async fn is_ready(&self) -> bool {
        match &self.keys {
            Keys::InMemory(_) => true,
            Keys::OnDisk(files) => KeyFiles::is_ready(files).await,
        }
    }
}

/// Index of an in-memory key: its slot in the one MODE0/MODE16 file.
fn slot(location: KeyLocation) -> usize {
    (location.offset / KEY_LEN as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_reads_parse_case_insensitively_and_name_the_choices() {
        assert_eq!("io-uring".parse(), Ok(KeyReads::IoUring));
        assert_eq!("THREADS".parse(), Ok(KeyReads::Threads));
        for reads in KeyReads::ALL {
            assert_eq!(reads.name().parse(), Ok(reads));
        }
        let error = "mmap".parse::<KeyReads>().unwrap_err();
        assert_eq!(error, UnknownKeyReads("mmap".to_owned()));
        assert!(error.to_string().contains("auto, io-uring or threads"));
    }
}
