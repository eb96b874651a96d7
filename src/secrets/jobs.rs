//! Per-file work spread over N threads (generating, hashing, verifying secret files).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The default number of parallel jobs: every core.
pub fn default_jobs() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Runs `work(state, i)` for every `i` in `0..count` on `jobs` threads, each
/// with its own `state` from `new_state` (a reusable buffer), and returns the
/// results in index order. The first error stops the workers from starting more
/// items (items already started finish) and is returned.
pub fn map<S, R: Send, E: Send>(
    jobs: NonZeroUsize,
    count: usize,
    new_state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, usize) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let fail = |error| {
        failed.store(true, Ordering::Relaxed);
        first_error
            .lock()
            .expect("no worker panics holding the lock")
            .get_or_insert(error);
    };
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.get().min(count.max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut state = new_state();
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count {
                            break;
                        }
                        match work(&mut state, index) {
                            Ok(result) => done.push((index, result)),
                            Err(error) => fail(error),
                        }
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a job panicked"))
            .collect()
    });
    if let Some(error) = first_error.into_inner().expect("no worker panicked") {
        return Err(error);
    }
    results.sort_unstable_by_key(|(index, _)| *index);
    Ok(results.into_iter().map(|(_, result)| result).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_index_order() {
        let jobs = NonZeroUsize::new(4).unwrap();
        let squares = map(jobs, 1000, || (), |(), i| Ok::<_, ()>(i * i)).unwrap();
        assert_eq!(squares, (0..1000).map(|i| i * i).collect::<Vec<_>>());
        assert_eq!(
            map(jobs, 0, || (), |(), i| Ok::<_, ()>(i)).unwrap(),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn an_error_stops_new_work() {
        let started = AtomicUsize::new(0);
        let result = map(
            NonZeroUsize::new(2).unwrap(),
            10_000,
            || (),
            |(), i| {
                started.fetch_add(1, Ordering::Relaxed);
                if i == 3 {
                    Err(format!("item {i} failed"))
                } else {
                    Ok(i)
                }
            },
        );
        assert_eq!(result.unwrap_err(), "item 3 failed");
        assert!(started.load(Ordering::Relaxed) < 10_000);
    }
}
