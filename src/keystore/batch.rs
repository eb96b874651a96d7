//! A batch's MACs: its key reads in flight together and each MAC computed as
//! its key arrives, or the work spread over the blocking threads; the output
//! always in the order of the frames.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};

use super::files::{KeyFiles, KeyUnavailable};
use crate::layout::Mode;
use crate::limits::{ConcurrencyLimit, HeldSlot};
use crate::mac::{self, Mac};

/// A batch is split into at most this many tasks on the blocking thread pool.
const BATCH_TASKS: usize = 64;
/// In-memory keys: smaller batches run as one task, as a hand-off costs more than a few MACs.
pub(super) const CHUNK_IN_MEMORY: usize = 256;
/// MODE32 and MODE32X: key reads of one batch in flight at once. More keep a disk's queue
/// no fuller (it serves a few dozen at once) and only delay everyone else's reads.
const READS_IN_FLIGHT: usize = 64;

/// Reads through io_uring (and MODE32X's on the thread pool too, so a message's
/// 8 reads are in flight together): the key reads are in flight together, not
/// one after another (the ring submits the queued ones in one call).
pub(super) async fn macs_as_keys_arrive(
    files: &Arc<KeyFiles>,
    mode: Mode,
    body: &Bytes,
    frames: Vec<Range<usize>>,
) -> Result<Vec<u8>, KeyUnavailable> {
    let macs: Vec<Mac> = stream::iter(frames)
        .map(|range| KeyFiles::mac_async(files, &body[range]))
        .buffered(READS_IN_FLIGHT / mode.keys_per_mac())
        .try_collect()
        .await?;
    Ok(macs.concat())
}

/// Spread over blocking threads in chunks of at least `min_chunk` messages, so
/// a large batch uses every core and leaves the async workers free; without
/// io_uring, MODE32's reads are in flight together this way (a hand-off per
/// read would cost twice as much). When the future is dropped before the
/// tasks are done (the client went away), they stop after their message at
/// hand, and a slot of `limit` stays held until the last one has stopped.
pub(super) async fn macs_on_threads(
    body: Bytes,
    frames: Vec<Range<usize>>,
    min_chunk: usize,
    limit: &Arc<ConcurrencyLimit>,
    mac_of: impl Fn(&[u8]) -> Result<Mac, KeyUnavailable> + Clone + Send + 'static,
) -> Result<Vec<u8>, KeyUnavailable> {
    let chunk_len = frames.len().div_ceil(BATCH_TASKS).max(min_chunk);
    let mut work = AbandonOnDrop {
        work: Arc::new(Work::default()),
        limit,
        awaited: false,
    };
    // Spawned tasks start at once; awaiting them in order keeps the output in order.
    let tasks: Vec<_> = frames
        .chunks(chunk_len)
        .map(|chunk| {
            let (mac_of, body, chunk) = (mac_of.clone(), body.clone(), chunk.to_vec());
            let work = Arc::clone(&work.work);
            tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .take_while(|_| !work.stop.load(Ordering::Relaxed))
                    .map(|range| mac_of(&body[range]))
                    .collect::<Result<Vec<Mac>, _>>()
            })
        })
        .collect();
    let mut macs = Vec::with_capacity(frames.len() * mac::MAC_LEN);
    for task in tasks {
        // A failed chunk ends the batch; the chunks not awaited stop early.
        macs.extend(task.await.expect("MAC computations do not panic")?.concat());
    }
    work.awaited = true;
    Ok(macs)
}

/// What a batch's blocking tasks share; dropped with the last of them.
#[derive(Default)]
struct Work {
    stop: AtomicBool,
    /// Held for work whose batch was abandoned, until that work has stopped.
    slot: Mutex<Option<HeldSlot>>,
}

/// Tells a batch's tasks to stop, and makes them hold a concurrency slot,
/// unless every task was awaited to its end.
struct AbandonOnDrop<'a> {
    work: Arc<Work>,
    limit: &'a Arc<ConcurrencyLimit>,
    awaited: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if !self.awaited {
            self.work.stop.store(true, Ordering::Relaxed);
            // If the tasks have all stopped already, the slot goes with this `Arc`.
            *self
                .work
                .slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(self.limit.hold());
        }
    }
}
