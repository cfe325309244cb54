//! Reading documents on every core: an order-keeping parallel map over a slice.
//!
//! Owns: [`runs`], which splits the work into contiguous runs that idle threads take in
//! turn (a core busy with something else just takes fewer runs), and gives each run's
//! result in input order. Must not: know what a document is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

/// Below this many bytes of input a second thread costs more than it saves.
const MIN_PARALLEL_BYTES: usize = 256 * 1024;
/// Runs per thread: enough that a thread slowed by other work does not hold up the rest.
const RUNS_PER_THREAD: usize = 16;

/// `f` of runs of the items (each run with the index of its first item), in order; on up
/// to [`thread::available_parallelism`] threads when the items (`bytes` of each summed)
/// are large enough to be worth it, else one run of all. A run's result gathers its
/// items' (one allocation per run, not per item, is what keeps the peak memory down).
pub(super) fn runs<T, R, F>(items: &[T], bytes: impl Fn(&T) -> usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&[T], usize) -> R + Sync,
{
    let total: usize = items.iter().map(&bytes).sum();
    let threads = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len());
    if threads < 2 || total < MIN_PARALLEL_BYTES {
        return vec![f(items, 0)];
    }
    // Contiguous runs of about equal bytes, taken in turn from a shared counter.
    let target = total.div_ceil(threads * RUNS_PER_THREAD).max(1);
    let mut runs = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        acc += bytes(item);
        if acc >= target {
            runs.push(start..i + 1);
            (start, acc) = (i + 1, 0);
        }
    }
    if start < items.len() {
        runs.push(start..items.len());
    }
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::with_capacity(runs.len()));
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                let Some(run) = runs.get(r) else { break };
                let out = f(&items[run.clone()], run.start);
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((r, out));
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_unstable_by_key(|(r, _)| *r);
    done.into_iter().map(|(_, out)| out).collect()
}
