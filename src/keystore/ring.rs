//! MODE32 key reads through io_uring, driven by one thread. Async tasks queue
//! their reads and wake the thread through an eventfd (once per batch, not per
//! read); the thread alone submits and reaps, so the ring needs no lock and the
//! kernel runs the completions on that thread rather than interrupting the
//! async workers. A thread-pool `pread` hands every read to another thread and
//! back, which costs more than the read itself when the page is cached.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread;

use io_uring::{opcode, squeue, types, IoUring};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::layout::KEY_LEN;
use crate::limits::Work;
use crate::sys;

/// Submission queue size; more reads than this in flight are queued and
/// submitted as others complete.
const QUEUE_ENTRIES: u32 = 256;
/// The `user_data` of the read on the wake-up eventfd.
const WAKE_UP: u64 = u64::MAX;

type KeyResult = io::Result<Zeroizing<[u8; KEY_LEN]>>;

pub struct KeyReadRing {
    shared: Arc<Shared>,
    driver: Option<thread::JoinHandle<()>>,
}

/// What the async tasks and the driver thread share.
struct Shared {
    requests: Mutex<Vec<ReadRequest>>,
    /// Set by the first request since the driver last looked, which then
    /// writes the eventfd; later ones know the driver will see them.
    woken: AtomicBool,
    stopping: AtomicBool,
    /// Set, under the `requests` lock, once the driver has ended (or failed):
    /// from then on a read fails at once instead of waiting for nobody.
    driver_gone: AtomicBool,
    wake_up: OwnedFd,
    /// Makes the driver panic, to test what a failure of it does.
    #[cfg(test)]
    fail: AtomicBool,
}

struct ReadRequest {
    file: Arc<File>,
    offset: u64,
    work: Arc<Work>,
    done: oneshot::Sender<KeyResult>,
}

/// A read the kernel may still write to. The driver owns it, not the
/// request's future, so a request dropped midway frees nothing early, and
/// what the request's work keeps taken (a concurrency slot, a batch's reads)
/// stays taken until the read has completed.
struct InFlight {
    key: Box<Zeroizing<[u8; KEY_LEN]>>,
    _file: Arc<File>,
    _work: Arc<Work>,
    done: oneshot::Sender<KeyResult>,
}

impl KeyReadRing {
    /// Fails where io_uring is unavailable: kernels before 5.6, or a seccomp
    /// filter or `kernel.io_uring_disabled` that forbids it.
    pub fn new() -> io::Result<KeyReadRing> {
        let wake_up = sys::event_fd()?;
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            woken: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            driver_gone: AtomicBool::new(false),
            wake_up,
            #[cfg(test)]
            fail: AtomicBool::new(false),
        });
        // The ring is made on the thread that uses it: a single-issuer ring
        // belongs to the thread that creates it.
        let (ready, setup) = mpsc::channel();
        let driver = thread::Builder::new().name("key-reads".into()).spawn({
            let shared = Arc::clone(&shared);
            move || match new_ring() {
                Ok(ring) => {
                    let _ = ready.send(Ok(()));
                    Driver::new(ring, &shared).run();
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                }
            }
        })?;
        setup
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the io_uring thread died")))?;
        Ok(KeyReadRing {
            shared,
            driver: Some(driver),
        })
    }

    /// Reads the key at `offset` of `file` for `work`, which the read holds
    /// until it has completed, even if this future is dropped first. A short
    /// read is an error, and so is every read once the driver thread has failed.
    pub async fn read(&self, file: Arc<File>, offset: u64, work: Arc<Work>) -> KeyResult {
        let (done, result) = oneshot::channel();
        {
            let mut requests = self.shared.requests();
            if self.shared.driver_gone.load(Ordering::Acquire) {
                return Err(driver_gone());
            }
            requests.push(ReadRequest {
                file,
                offset,
                work,
                done,
            });
        }
        if !self.shared.woken.swap(true, Ordering::AcqRel) {
            self.shared.wake_driver()?;
        }
        result.await.unwrap_or_else(|_| Err(driver_gone()))
    }
}

impl Drop for KeyReadRing {
    /// The driver finishes the reads in flight first, so no buffer is freed
    /// while the kernel may write to it.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        if self.shared.wake_driver().is_ok() {
            if let Some(driver) = self.driver.take() {
                let _ = driver.join();
            }
        }
    }
}

impl Shared {
    fn wake_driver(&self) -> io::Result<()> {
        sys::signal_event_fd(&self.wake_up)
    }

    /// The queued requests. A panic elsewhere cannot leave the list half
    /// changed, so a poisoned lock is still good to use.
    fn requests(&self) -> MutexGuard<'_, Vec<ReadRequest>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn driver_gone() -> io::Error {
    io::Error::other("the io_uring thread stopped")
}

/// A ring for one thread: completions run when that thread waits for them
/// (kernel 6.1+), else as the kernel sees fit.
fn new_ring() -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(QUEUE_ENTRIES)
        .or_else(|_| IoUring::new(QUEUE_ENTRIES))
}

struct Driver<'a> {
    ring: IoUring,
    shared: &'a Shared,
    in_flight: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Requests taken from `shared` that did not fit in the submission queue yet.
    waiting: VecDeque<ReadRequest>,
    wake_up_count: Box<[u8; 8]>,
    /// Whether the kernel may still write to `wake_up_count`.
    wake_up_armed: bool,
}

impl<'a> Driver<'a> {
    fn new(ring: IoUring, shared: &'a Shared) -> Self {
        Driver {
            ring,
            shared,
            in_flight: Vec::new(),
            free: Vec::new(),
            waiting: VecDeque::new(),
            wake_up_count: Box::new([0; 8]),
            wake_up_armed: false,
        }
    }

    fn run(mut self) {
        self.arm_wake_up();
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // Completions overflowed: reaping them below makes room.
                Err(error) if error.kind() == io::ErrorKind::ResourceBusy => {}
                Err(error) => {
                    tracing::error!(%error, "io_uring wait failed; retrying");
                    thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            let mut woken = false;
            loop {
                let Some(completion) = self.ring.completion().next() else {
                    break;
                };
                match completion.user_data() {
                    WAKE_UP => {
                        woken = true;
                        self.wake_up_armed = false;
                    }
                    index => self.complete(index as usize, completion.result()),
                }
            }
            let stopping = self.shared.stopping.load(Ordering::Acquire);
            #[cfg(test)]
            if self.shared.fail.load(Ordering::Acquire) {
                panic!("the test made the io_uring driver fail");
            }
            if woken {
                // Cleared before taking the requests: one queued after this wakes us again.
                self.shared.woken.store(false, Ordering::Release);
                self.waiting.extend(self.shared.requests().drain(..));
                if !stopping {
                    self.arm_wake_up();
                }
            }
            self.queue_waiting();
            // Drop wakes the driver after setting `stopping`, so the armed
            // wake-up read completes and nothing of the driver's is left in flight.
            if stopping && !self.wake_up_armed && self.free.len() == self.in_flight.len() {
                return;
            }
        }
    }

    /// Reads the eventfd through the ring, so the one wait covers both the
    /// disk and new requests. [`Driver::queue_waiting`] leaves room for it.
    fn arm_wake_up(&mut self) {
        let read = opcode::Read::new(
            types::Fd(self.shared.wake_up.as_raw_fd()),
            self.wake_up_count.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(WAKE_UP);
        // SAFETY: the count buffer lives as long as the driver, which returns
        // only once this read has completed.
        unsafe { self.push(&read) };
        self.wake_up_armed = true;
    }

    fn queue_waiting(&mut self) {
        while !self.waiting.is_empty() {
            let queue = self.ring.submission();
            if queue.len() + 1 >= queue.capacity() {
                return;
            }
            drop(queue);
            let request = self.waiting.pop_front().expect("not empty");
            let mut key = Box::new(Zeroizing::new([0u8; KEY_LEN]));
            let read = opcode::Read::new(
                types::Fd(request.file.as_raw_fd()),
                key.as_mut_ptr(),
                KEY_LEN as u32,
            )
            .offset(request.offset)
            .build();
            let index = self.insert(InFlight {
                key,
                _file: request.file,
                _work: request.work,
                done: request.done,
            });
            // SAFETY: the buffer and the descriptor stay in `in_flight` until completed.
            unsafe { self.push(&read.user_data(index as u64)) };
        }
    }

    /// Queues one entry; only called with room in the submission queue.
    ///
    /// # Safety
    /// Every buffer and descriptor the entry points to must stay alive until
    /// its completion has been reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: the caller keeps what the entry points to alive until it completes.
        unsafe { self.ring.submission().push(entry) }
            .expect("callers check that the submission queue has room");
    }

    fn complete(&mut self, index: usize, result: i32) {
        self.free.push(index);
        let read = self.in_flight[index]
            .take()
            .expect("every completion belongs to a read in flight");
        let key = match result {
            length if length == KEY_LEN as i32 => Ok(Zeroizing::new(**read.key)),
            length if length >= 0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read {length} of the key's {KEY_LEN} bytes: the file is shorter"),
            )),
            error => Err(io::Error::from_raw_os_error(-error)),
        };
        // The request may have gone away; then there is no one to tell.
        let _ = read.done.send(key);
    }

    fn insert(&mut self, read: InFlight) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.in_flight[index] = Some(read);
                index
            }
            None => {
                self.in_flight.push(Some(read));
                self.in_flight.len() - 1
            }
        }
    }
}

impl Drop for Driver<'_> {
    /// Runs when the driver returns, and when it panics. Every request not
    /// answered yet fails (its sender is dropped), later ones fail at once, and
    /// the buffers the kernel may still write to are leaked rather than freed:
    /// a few bytes, once, against memory corruption. Key reads then take the
    /// blocking threads (see `KeyFiles::read_key_async`).
    fn drop(&mut self) {
        let queued = {
            let mut requests = self.shared.requests();
            self.shared.driver_gone.store(true, Ordering::Release);
            std::mem::take(&mut *requests)
        };
        drop(queued);
        self.waiting.clear();
        for read in self.in_flight.drain(..).flatten() {
            std::mem::forget(read.key);
        }
        if self.wake_up_armed {
            std::mem::forget(std::mem::replace(&mut self.wake_up_count, Box::new([0; 8])));
        }
        if thread::panicking() {
            tracing::error!(
                "the io_uring driver failed; MODE32 key reads use the blocking threads from now on"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A file whose byte at offset `i` is `i % 251`, so any window is recognisable.
    fn numbered_file(len: usize) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        file.write_all(&bytes).unwrap();
        Arc::new(file)
    }

    fn expected_key(offset: u64) -> [u8; KEY_LEN] {
        std::array::from_fn(|i| ((offset as usize + i) % 251) as u8)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_reads_each_get_their_own_bytes() {
        let ring = Arc::new(KeyReadRing::new().unwrap());
        let file = numbered_file(1 << 20);
        let mut reads = tokio::task::JoinSet::new();
        // More than the submission queue holds at once.
        for offset in (0..(1u64 << 20) - KEY_LEN as u64).step_by(499).take(2000) {
            let (ring, file) = (Arc::clone(&ring), Arc::clone(&file));
            reads.spawn(async move { (offset, ring.read(file, offset, Arc::default()).await) });
        }
        let mut count = 0;
        while let Some(read) = reads.join_next().await {
            let (offset, key) = read.unwrap();
            assert_eq!(*key.unwrap(), expected_key(offset), "offset {offset}");
            count += 1;
        }
        assert_eq!(count, 2000);
    }

    #[tokio::test]
    async fn short_and_failed_reads_are_errors() {
        let ring = KeyReadRing::new().unwrap();
        let short = ring
            .read(numbered_file(40), 20, Arc::default())
            .await
            .unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            short.to_string().contains("read 20 of the key's 32 bytes"),
            "{short}"
        );
        let directory = Arc::new(File::open(std::env::temp_dir()).unwrap());
        let error = ring.read(directory, 0, Arc::default()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::IsADirectory);
        // The ring still serves after errors.
        assert_eq!(
            *ring
                .read(numbered_file(64), 7, Arc::default())
                .await
                .unwrap(),
            expected_key(7)
        );
    }

    #[tokio::test]
    async fn abandoned_reads_do_not_disturb_the_others_and_the_ring_stops() {
        let ring = KeyReadRing::new().unwrap();
        let file = numbered_file(1 << 16);
        for offset in 0..100 {
            // Polled once, so queued, then dropped before it completes.
            let read = ring.read(Arc::clone(&file), offset, Arc::default());
            let _ = tokio::time::timeout(std::time::Duration::ZERO, read).await;
        }
        assert_eq!(
            *ring
                .read(Arc::clone(&file), 5, Arc::default())
                .await
                .unwrap(),
            expected_key(5)
        );
        // Drop joins the driver thread: it must not hang on the abandoned reads.
        drop(ring);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_read_holds_its_work_until_it_has_completed() {
        use std::os::unix::net::UnixStream;
        use std::time::{Duration, Instant};

        let ring = KeyReadRing::new().unwrap();
        // A read of a socket completes only once its peer writes.
        let (socket, peer) = UnixStream::pair().unwrap();
        let socket = Arc::new(File::from(OwnedFd::from(socket)));
        let work = Arc::new(Work::default());
        let read = ring.read(socket, 0, Arc::clone(&work));
        let timed_out = tokio::time::timeout(Duration::from_millis(50), read).await;
        assert!(timed_out.is_err(), "a read of a silent socket completed");
        assert_eq!(
            Arc::strong_count(&work),
            2,
            "the read in flight let go of its work"
        );
        (&peer).write_all(&[7; KEY_LEN]).unwrap();
        let started = Instant::now();
        while Arc::strong_count(&work) > 1 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the completed read kept its work"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_driver_fails_its_reads_instead_of_hanging_them() {
        use std::os::unix::net::UnixStream;
        use std::time::Duration;

        let ring = Arc::new(KeyReadRing::new().unwrap());
        // A read of a socket completes only once its peer writes: it is in
        // the kernel's hands when the driver fails.
        let (socket, peer) = UnixStream::pair().unwrap();
        let socket = Arc::new(File::from(OwnedFd::from(socket)));
        let in_flight = tokio::spawn({
            let ring = Arc::clone(&ring);
            async move { ring.read(socket, 0, Arc::default()).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        ring.shared.fail.store(true, Ordering::Release);
        ring.shared.wake_driver().unwrap();
        let limit = Duration::from_secs(5);
        let failed = tokio::time::timeout(limit, in_flight).await;
        assert!(failed.expect("the read in flight hangs").unwrap().is_err());
        let file = numbered_file(64);
        for _ in 0..3 {
            let later =
                tokio::time::timeout(limit, ring.read(Arc::clone(&file), 0, Arc::default())).await;
            let error = later.expect("a read after the failure hangs").unwrap_err();
            assert!(
                error.to_string().contains("io_uring thread stopped"),
                "{error}"
            );
        }
        // The kernel may now complete the read into the leaked buffer.
        (&peer).write_all(&[7; KEY_LEN]).unwrap();
        drop(Arc::into_inner(ring).expect("no read holds the ring"));
    }
}
