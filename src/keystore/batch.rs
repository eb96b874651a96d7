//! A batch's MACs: its key reads in flight together, its MACs computed as the
//! keys arrive or spread over the blocking threads, the output in order.

use std::ops::Range;

use axum::body::Bytes;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};

use super::files::KeyFiles;
use super::{KeyStore, KeyUnavailable, Keys};
use crate::mac::{self, Mac};

/// A batch is split into at most this many tasks on the blocking thread pool.
const BATCH_TASKS: usize = 64;
/// In-memory keys: smaller batches run as one task, as a hand-off costs more than a few MACs.
const BATCH_MIN_CHUNK_IN_MEMORY: usize = 256;
/// MODE32: key reads of one batch in flight at once. More keep a disk's queue
/// no fuller (it serves a few dozen at once) and only delay everyone else's reads.
const BATCH_READS_IN_FLIGHT: usize = 64;

impl KeyStore {
    /// The MACs of the messages at `frames` in `body`, concatenated in order.
    pub async fn mac_batch(
        &self,
        body: Bytes,
        frames: Vec<Range<usize>>,
    ) -> Result<Vec<u8>, KeyUnavailable> {
        match &self.keys {
            Keys::OnDisk(files) if files.reads_through_ring() => {
                // The key reads are in flight together, not one after another
                // (io_uring submits the queued ones in one call); each MAC is
                // computed as its key arrives, and the output stays in order.
                let macs: Vec<Mac> = stream::iter(frames)
                    .map(|range| {
                        let message = &body[range];
                        async move {
                            let location = self.mode.locate(message);
                            let key = KeyFiles::read_key_async(files, location).await?;
                            Ok::<_, KeyUnavailable>(mac::mac(&key, message))
                        }
                    })
                    .buffered(BATCH_READS_IN_FLIGHT)
                    .try_collect()
                    .await?;
                Ok(macs.concat())
            }
            _ => self.mac_batch_on_threads(body, frames).await,
        }
    }

    /// Spread over blocking threads, so a large batch uses every core and
    /// leaves the async workers free; without io_uring, MODE32's reads are in
    /// flight together this way (a hand-off per read would cost twice as much).
    async fn mac_batch_on_threads(
        &self,
        body: Bytes,
        frames: Vec<Range<usize>>,
    ) -> Result<Vec<u8>, KeyUnavailable> {
        let min_chunk = match self.keys {
            Keys::InMemory(_) => BATCH_MIN_CHUNK_IN_MEMORY,
            Keys::OnDisk(_) => 1,
        };
        let chunk_len = frames.len().div_ceil(BATCH_TASKS).max(min_chunk);
        // Spawned tasks start at once; awaiting them in order keeps the output in order.
        let tasks: Vec<_> = frames
            .chunks(chunk_len)
            .map(|chunk| {
                let (store, body, chunk) = (self.clone(), body.clone(), chunk.to_vec());
                tokio::task::spawn_blocking(move || {
                    chunk
                        .into_iter()
                        .map(|range| store.mac_blocking(&body[range]))
                        .collect::<Result<Vec<Mac>, _>>()
                })
            })
            .collect();
        let mut macs = Vec::with_capacity(frames.len() * mac::MAC_LEN);
        for task in tasks {
            macs.extend(task.await.expect("MAC computations do not panic")?.concat());
        }
        Ok(macs)
    }
}
