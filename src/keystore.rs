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
use crate::limits::{ClientId, ReadBudget, ReadLimits, WorkGuard};
use crate::mac::Mac;
use crate::manifest::{Fingerprint, Manifest};
use crate::metrics::KeyReadStats;

mod batch;
mod descriptors;
mod files;
mod ring;
mod startup;
mod table;

pub use descriptors::{descriptors_left, mode32_files_kept_open};
pub use files::{KeyError, KeyReads, KeyUnavailable, UnknownKeyReads};
pub use startup::LoadError;

use files::KeyFiles;
use table::{InMemoryKeys, KeyTable};

/// Cheap to clone: the keys are shared.
#[derive(Clone)]
pub struct KeyStore {
    mode: Mode,
    keys: Keys,
    /// Of the directory's manifest; `None` for secrets made by hand.
    fingerprint: Option<Fingerprint>,
    /// What bounds the reads of keys on disk.
    limits: Arc<ReadLimits>,
}

#[derive(Clone)]
enum Keys {
    /// MODE0 and MODE16: every key, with its HMAC pads already hashed.
    InMemory(Arc<InMemoryKeys>),
    /// MODE32 and MODE32X: 128 GiB stays on disk.
    OnDisk(Arc<KeyFiles>),
}

impl KeyStore {
    /// Checks the secrets directory for `mode` and loads it; `reads` applies to
    /// MODE32 and MODE32X only. MACs may then be asked in `namespaces` (MODE0
    /// and MODE16 derive their keys now), or in any namespace when the keys
    /// stay on disk. Blocking: call before serving.
    pub fn load(
        mode: Mode,
        dir: &Path,
        reads: KeyReads,
        namespaces: &[&str],
    ) -> Result<KeyStore, LoadError> {
        startup::check_directory(dir)?;
        let manifest = startup::read_manifest(mode, dir)?;
        let keys = match mode {
            Mode::Mode0 | Mode::Mode16 => Keys::InMemory(Arc::new(startup::load_in_memory(
                mode,
                dir,
                manifest.as_ref(),
                namespaces,
            )?)),
            Mode::Mode32 | Mode::Mode32x => {
                Keys::OnDisk(Arc::new(KeyFiles::open(mode, dir, reads)?))
            }
        };
        Ok(KeyStore {
            mode,
            keys,
            fingerprint: manifest.as_ref().map(Manifest::fingerprint),
            limits: Arc::default(),
        })
    }

    /// Reads keys on disk under `limits` rather than the defaults (which know
    /// no concurrency limit).
    pub fn with_limits(self, limits: ReadLimits) -> KeyStore {
        KeyStore {
            limits: Arc::new(limits),
            ..self
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether MACs may be asked in `namespace`: any, with keys on disk; in
    /// MODE0 and MODE16, the namespaces it was loaded with.
    pub fn derives(&self, namespace: &str) -> bool {
        match &self.keys {
            Keys::InMemory(keys) => keys.namespaces.contains_key(namespace),
            Keys::OnDisk(_) => true,
        }
    }

    /// The fingerprint of the secrets served, from their manifest.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The MAC of `message` under the key the layout rule picks for it, in
    /// `namespace` when there is one (one [`KeyStore::load`] was given). A key
    /// read on disk that this future leaves behind (dropped, or timed out)
    /// holds a place under the concurrency limit until it has stopped. Key
    /// reads are timed: run it on a tokio runtime with timers enabled.
    pub async fn mac(&self, namespace: Option<&str>, message: &[u8]) -> Result<Mac, KeyError> {
        match &self.keys {
            Keys::InMemory(keys) => Ok(mac_in_memory(keys.of(namespace), self.mode, message)),
            Keys::OnDisk(files) => {
                let guard = WorkGuard::new(&self.limits.concurrency, None);
                let mac = KeyFiles::mac_async(
                    files,
                    namespace,
                    message,
                    guard.work(),
                    self.limits.timeout,
                )
                .await?;
                guard.finish();
                Ok(mac)
            }
        }
    }

    /// The MACs of the messages at `frames` in `body`, concatenated in order,
    /// in `namespace` as [`KeyStore::mac`].
    /// Keys on disk: the batch of `client` is admitted to the batches' read
    /// budget and its messages take their reads in that client's turn, each
    /// waiting for them up to the key-read timeout; refused, or a message not
    /// served in time, it fails with [`KeyError::BatchReadsBusy`]. Work this
    /// future leaves behind (dropped, failed or timed out) starts nothing new,
    /// and holds its reads and a place under the concurrency limit until it
    /// has stopped.
    pub async fn mac_batch(
        &self,
        client: ClientId,
        namespace: Option<&str>,
        body: Bytes,
        frames: Vec<Range<usize>>,
    ) -> Result<Vec<u8>, KeyError> {
        match &self.keys {
            Keys::InMemory(keys) => {
                let (keys, mode) = (Arc::clone(keys), self.mode);
                let namespace = namespace.map(str::to_owned);
                Ok(batch::macs_on_threads(
                    body,
                    frames,
                    batch::CHUNK_IN_MEMORY,
                    &self.limits.concurrency,
                    move |message| mac_in_memory(keys.of(namespace.as_deref()), mode, message),
                )
                .await)
            }
            Keys::OnDisk(_) if frames.is_empty() => Ok(Vec::new()),
            Keys::OnDisk(files) => {
                let batch = self
                    .limits
                    .batches
                    .admit(client)
                    .ok_or(KeyError::BatchReadsBusy)?;
                let guard = WorkGuard::new(&self.limits.concurrency, Some(batch));
                let macs = batch::macs_as_keys_arrive(
                    files,
                    (self.mode, namespace),
                    (&body, frames),
                    guard.work(),
                    self.limits.timeout,
                )
                .await?;
                guard.finish();
                Ok(macs)
            }
        }
    }

    /// MODE32's key-read counters and the batches' read budget; `None` for
    /// keys held in memory.
    pub fn read_stats(&self) -> Option<(&KeyReadStats, &ReadBudget)> {
        match &self.keys {
            Keys::InMemory(_) => None,
            Keys::OnDisk(files) => Some((files.stats(), &self.limits.batches)),
        }
    }

    /// False while a MODE32 file that a read failed in has not read whole
    /// since: such files are read whole again (at most once a second and one
    /// probe at a time, however often this is asked), so readiness comes back by
    /// itself once they read. Files no read has touched are not looked at. A
    /// probe slower than the key-read timeout answers false.
    pub async fn is_ready(&self) -> bool {
        match &self.keys {
            Keys::InMemory(_) => true,
            Keys::OnDisk(files) => KeyFiles::is_ready(files, self.limits.timeout).await,
        }
    }
}

/// The MAC of `message` under its MODE0 or MODE16 key.
fn mac_in_memory(keys: &KeyTable, mode: Mode, message: &[u8]) -> Mac {
    keys[slot(mode.locate(message))].mac(message)
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
