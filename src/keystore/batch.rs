//! A batch's MACs: its key reads in flight together, within its share of the
//! batches' read budget taken a message at a time, and each MAC computed as
//! its key arrives; or, for keys
//! in memory, the work spread over the blocking threads. The output always in
//! the order of the frames.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};

use super::files::{KeyError, KeyFiles};
use crate::layout::Mode;
use crate::limits::{ConcurrencyLimit, Work, WorkGuard};
use crate::mac::{self, Mac};

/// A batch is split into at most this many tasks on the blocking thread pool.
const BATCH_TASKS: usize = 64;
/// In-memory keys: smaller batches run as one task, as a hand-off costs more than a few MACs.
pub(super) const CHUNK_IN_MEMORY: usize = 256;

/// Keys on disk: as many messages in flight as the batch's share of the read
/// budget allows (a MODE32X message reads 8 keys at once), each taking its
/// reads in its client's turn and giving them back when its MAC is done, each
/// read through io_uring or on the blocking threads, so the reads are in flight
/// together rather than one after another. When the batch fails or is dropped,
/// no new read starts, and the reads in flight hold `work` (their reads, and a
/// slot once the request has ended) until they have stopped.
pub(super) async fn macs_as_keys_arrive(
    files: &Arc<KeyFiles>,
    (mode, namespace): (Mode, Option<&str>),
    (body, frames): (&Bytes, Vec<Range<usize>>),
    work: &Arc<Work>,
    timeout: Duration,
) -> Result<Vec<u8>, KeyError> {
    let batch = work
        .batch()
        .expect("a batch reading keys is admitted to the budget");
    let per_message = mode.keys_per_mac();
    let macs: Vec<Mac> = stream::iter(frames)
        .map(|range| async move {
            let reads = batch
                .take(per_message, timeout)
                .await
                .ok_or(KeyError::BatchReadsBusy)?;
            let reads = work.message_reads(reads);
            let mac = KeyFiles::mac_async(files, namespace, &body[range], work, timeout).await?;
            reads.done();
            Ok::<_, KeyError>(mac)
        })
        .buffered(batch.messages_at_once(per_message))
        .try_collect()
        .await?;
    Ok(macs.concat())
}

/// Keys in memory: spread over blocking threads in chunks of at least
/// `min_chunk` messages, so a large batch uses every core and leaves the async
/// workers free. When the future is dropped before the tasks are done (the
/// client went away), they stop after their message at hand, and a slot of
/// `limit` stays held until the last one has stopped.
pub(super) async fn macs_on_threads(
    body: Bytes,
    frames: Vec<Range<usize>>,
    min_chunk: usize,
    limit: &Arc<ConcurrencyLimit>,
    mac_of: impl Fn(&[u8]) -> Mac + Clone + Send + 'static,
) -> Vec<u8> {
    let chunk_len = frames.len().div_ceil(BATCH_TASKS).max(min_chunk);
    let guard = WorkGuard::new(limit, None);
    // Spawned tasks start at once; awaiting them in order keeps the output in order.
    let tasks: Vec<_> = frames
        .chunks(chunk_len)
        .map(|chunk| {
            let (mac_of, body, chunk) = (mac_of.clone(), body.clone(), chunk.to_vec());
            let work = Arc::clone(guard.work());
            tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .take_while(|_| !work.stopping())
                    .map(|range| mac_of(&body[range]))
                    .collect::<Vec<Mac>>()
            })
        })
        .collect();
    let mut macs = Vec::with_capacity(frames.len() * mac::MAC_LEN);
    for task in tasks {
        macs.extend(task.await.expect("MAC computations do not panic").concat());
    }
    guard.finish();
    macs
}
