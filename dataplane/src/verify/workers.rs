//! Verify across cores: a pool of verify workers, each on its own pinned core,
//! fed from the receive stage by bounded queues.
//!
//! ```text
//!  receive stage ──submit──▶ [queue 0] ──▶ worker 0 (core c0) ─┐
//!                   (round   [queue 1] ──▶ worker 1 (core c1) ─┼──▶ [results] ──recv──▶ caller
//!                    robin)  [  ...  ] ──▶ ...                 ─┘
//! ```
//!
//! Work moves as owned [`VerifyBatch`]es: the caller fills one with
//! [`VerifyBatch::push`], hands it to [`VerifyPool::submit`], and gets the same
//! batch back from [`VerifyPool::try_recv`] / [`VerifyPool::recv_timeout`]
//! with [`VerifyBatch::verdicts`] filled in. Clearing and refilling returned
//! batches means no allocation in steady state.
//!
//! Every queue is bounded. [`VerifyPool::submit`] never blocks: when the
//! chosen worker's queue is full it tries the others once, and when all are
//! full it hands the batch back as `Err` and counts a `queue_full` drop on the
//! worker it first chose. A worker blocks when the results queue is full, so a
//! caller that stops draining results sees queue-full drops, not unbounded
//! memory.
//!
//! Each worker keeps [`WorkerStats`] in atomics written once per batch (never
//! per signature), readable at any time with [`VerifyPool::stats`].

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::{Verifier, VerifyItem};

/// Pool settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Number of worker threads. Default 1. Each costs one core at full load;
    /// more workers than free cores only adds contention.
    pub workers: NonZeroUsize,
    /// CPU ids to pin workers to: worker `i` runs on `cores[i % cores.len()]`.
    /// Empty (the default) means no pinning. Every id must be a CPU this
    /// process may run on, or [`VerifyPool::start`] fails naming it.
    pub cores: Vec<usize>,
    /// Batches each worker's input queue holds. Default 64 (one second of
    /// backlog at 64 batches of 64 per second is far more than needed; the
    /// bound matters, not the size). Memory is one pointer-sized slot each;
    /// the batches themselves belong to the caller.
    pub queue_depth: NonZeroUsize,
    /// Verified batches the shared results queue holds before workers block.
    /// Default 256.
    pub results_depth: NonZeroUsize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: NonZeroUsize::MIN,
            cores: Vec::new(),
            queue_depth: NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN),
            results_depth: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Why a pool could not start. No thread is left running after an error.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A configured core is not one this process may run on.
    #[error("verify.cores: CPU {core} is not available to this process (available: {available:?})")]
    NoSuchCore {
        /// The configured id.
        core: usize,
        /// The ids that are available.
        available: Vec<usize>,
    },
    /// The OS refused to start a thread.
    #[error("cannot start verify worker {worker}: {source}")]
    Spawn {
        /// Worker index.
        worker: usize,
        /// Cause.
        source: std::io::Error,
    },
}

/// An owned batch of signatures to verify, with room for the verdicts.
///
/// Messages are stored back to back in one buffer, so a reused batch does not
/// allocate once it has grown to its working size.
#[derive(Clone, Debug, Default)]
pub struct VerifyBatch {
    /// Caller's tag, returned unchanged (e.g. a sequence number or a slot
    /// index to match results to packets).
    pub tag: u64,
    entries: Vec<Entry>,
    bytes: Vec<u8>,
    verdicts: Vec<bool>,
}

/// Key, signature and message end offset of one batch item.
#[derive(Clone, Copy, Debug)]
struct Entry {
    public_key: [u8; 32],
    signature: [u8; 64],
    end: usize,
}

impl VerifyBatch {
    /// An empty batch with room for `items` signatures over `message_bytes`
    /// bytes of messages in total.
    pub fn with_capacity(items: usize, message_bytes: usize) -> VerifyBatch {
        VerifyBatch {
            tag: 0,
            entries: Vec::with_capacity(items),
            bytes: Vec::with_capacity(message_bytes),
            verdicts: Vec::with_capacity(items),
        }
    }

    /// Appends one signature to check. Clears any verdicts.
    pub fn push(&mut self, public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) {
        self.verdicts.clear();
        self.bytes.extend_from_slice(message);
        self.entries.push(Entry {
            public_key: *public_key,
            signature: *signature,
            end: self.bytes.len(),
        });
    }

    /// Number of signatures.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the batch holds no signature.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Empties the batch, keeping its memory and tag.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes.clear();
        self.verdicts.clear();
    }

    /// Item `i`, or `None` past the end.
    pub fn item(&self, i: usize) -> Option<VerifyItem<'_>> {
        let e = self.entries.get(i)?;
        let start = match i.checked_sub(1) {
            Some(p) => self.entries[p].end,
            None => 0,
        };
        Some(VerifyItem {
            public_key: &e.public_key,
            message: &self.bytes[start..e.end],
            signature: &e.signature,
        })
    }

    /// Verdicts, one per item in push order, once the batch came back from
    /// the pool (or from [`VerifyBatch::verify`]); empty before.
    pub fn verdicts(&self) -> &[bool] {
        &self.verdicts
    }

    /// Verifies the batch in the calling thread with `verifier`, filling
    /// [`VerifyBatch::verdicts`]. Returns the number of invalid signatures.
    pub fn verify(&mut self, verifier: &mut Verifier) -> u32 {
        let n = self.len();
        let mut verdicts = core::mem::take(&mut self.verdicts);
        verdicts.clear();
        verdicts.resize(n, false);
        let report = verifier.verify_with(
            n,
            |i| self.item(i).unwrap_or(VerifyItem::EMPTY),
            &mut verdicts,
        );
        self.verdicts = verdicts;
        report.failures
    }
}

/// Counters of one worker, as read by [`VerifyPool::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Batches verified.
    pub batches: u64,
    /// Signatures verified.
    pub signatures: u64,
    /// Signatures found invalid.
    pub failures: u64,
    /// Batches dropped at submit because every queue was full (counted on the
    /// worker that was chosen first).
    pub queue_full: u64,
    /// Whether the worker runs pinned to its configured core.
    pub pinned: bool,
    /// Whether the worker uses batch equations (false only if the OS random
    /// source failed; verdicts stay correct but cost more).
    pub batching: bool,
}

/// Shared counters of one worker, on their own cache lines.
#[derive(Default)]
#[repr(align(128))]
struct WorkerCounters {
    batches: AtomicU64,
    signatures: AtomicU64,
    failures: AtomicU64,
    queue_full: AtomicU64,
    pinned: AtomicBool,
    batching: AtomicBool,
}

/// A running pool of verify workers. Dropping it stops and joins them
/// (batches still queued are discarded).
pub struct VerifyPool {
    inputs: Vec<Sender<VerifyBatch>>,
    results: Receiver<VerifyBatch>,
    counters: Arc<[WorkerCounters]>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
}

impl core::fmt::Debug for VerifyPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VerifyPool")
            .field("workers", &self.inputs.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl VerifyPool {
    /// Starts `cfg.workers` threads named `verify-<i>`, pinning each to its
    /// core when `cfg.cores` is not empty. A worker whose pinning the OS
    /// refuses still runs (unpinned), says so in the log and in
    /// [`WorkerStats::pinned`].
    pub fn start(cfg: &PoolConfig) -> Result<VerifyPool, PoolError> {
        if !cfg.cores.is_empty() {
            let available: Vec<usize> = core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect();
            if let Some(&core) = cfg.cores.iter().find(|c| !available.contains(c)) {
                return Err(PoolError::NoSuchCore { core, available });
            }
        }
        let n = cfg.workers.get();
        let counters: Arc<[WorkerCounters]> = (0..n).map(|_| WorkerCounters::default()).collect();
        let (result_tx, results) = bounded(cfg.results_depth.get());
        let mut pool = VerifyPool {
            inputs: Vec::with_capacity(n),
            results,
            counters,
            handles: Vec::with_capacity(n),
            next: 0,
        };
        for worker in 0..n {
            let (tx, rx) = bounded(cfg.queue_depth.get());
            let core = (!cfg.cores.is_empty()).then(|| cfg.cores[worker % cfg.cores.len()]);
            let result_tx = result_tx.clone();
            let counters = Arc::clone(&pool.counters);
            let handle = std::thread::Builder::new()
                .name(format!("verify-{worker}"))
                .spawn(move || run_worker(worker, core, &rx, &result_tx, &counters[worker]))
                .map_err(|source| PoolError::Spawn { worker, source })?;
            // On a later error, `pool` drops and joins the started workers.
            pool.inputs.push(tx);
            pool.handles.push(handle);
        }
        Ok(pool)
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inputs.len()
    }

    /// Queues `batch` for verification without blocking. Workers are chosen
    /// round-robin; if the chosen one's queue is full the others are tried in
    /// turn. When every queue is full the batch comes back as `Err` (so its
    /// memory can be reused) and `queue_full` is counted.
    pub fn submit(&mut self, batch: VerifyBatch) -> Result<(), VerifyBatch> {
        let n = self.inputs.len();
        let first = self.next;
        self.next = (self.next + 1) % n;
        let mut batch = batch;
        for step in 0..n {
            let w = (first + step) % n;
            match self.inputs[w].try_send(batch) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => batch = b,
            }
        }
        self.counters[first]
            .queue_full
            .fetch_add(1, Ordering::Relaxed);
        Err(batch)
    }

    /// A verified batch, if one is ready.
    pub fn try_recv(&self) -> Option<VerifyBatch> {
        self.results.try_recv().ok()
    }

    /// A verified batch, waiting at most `timeout` for one.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<VerifyBatch> {
        self.results.recv_timeout(timeout).ok()
    }

    /// A handle that reads the workers' counters from any thread, for
    /// exporters (the pool itself stays with the stage that feeds it).
    pub fn stats_handle(&self) -> PoolStats {
        PoolStats {
            counters: self.counters.clone(),
        }
    }

    /// A snapshot of every worker's counters, by worker index.
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.stats_handle().snapshot()
    }
}

/// Read-only access to a pool's per-worker counters.
#[derive(Clone)]
pub struct PoolStats {
    counters: Arc<[WorkerCounters]>,
}

impl core::fmt::Debug for PoolStats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.snapshot()).finish()
    }
}

impl PoolStats {
    /// Every worker's counters, by worker index.
    pub fn snapshot(&self) -> Vec<WorkerStats> {
        self.counters
            .iter()
            .map(|c| WorkerStats {
                batches: c.batches.load(Ordering::Relaxed),
                signatures: c.signatures.load(Ordering::Relaxed),
                failures: c.failures.load(Ordering::Relaxed),
                queue_full: c.queue_full.load(Ordering::Relaxed),
                pinned: c.pinned.load(Ordering::Relaxed),
                batching: c.batching.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Drop for VerifyPool {
    fn drop(&mut self) {
        // Closing the inputs ends each worker's receive loop; dropping the
        // results receiver unblocks a worker stuck on a full results queue.
        self.inputs.clear();
        self.results = crossbeam_channel::never();
        for h in self.handles.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = h.join();
        }
    }
}

fn run_worker(
    worker: usize,
    core: Option<usize>,
    input: &Receiver<VerifyBatch>,
    results: &Sender<VerifyBatch>,
    counters: &WorkerCounters,
) {
    if let Some(id) = core {
        let pinned = core_affinity::set_for_current(core_affinity::CoreId { id });
        counters.pinned.store(pinned, Ordering::Relaxed);
        if !pinned {
            tracing::warn!(
                worker,
                core = id,
                "verify worker could not be pinned; running unpinned"
            );
        }
    }
    let mut verifier = Verifier::new();
    counters
        .batching
        .store(verifier.is_batching(), Ordering::Relaxed);
    if !verifier.is_batching() {
        tracing::warn!(
            worker,
            "OS random source failed: verify worker checks signatures one by one"
        );
    }
    while let Ok(mut batch) = input.recv() {
        let failures = batch.verify(&mut verifier);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .signatures
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters
            .failures
            .fetch_add(u64::from(failures), Ordering::Relaxed);
        if results.send(batch).is_err() {
            return;
        }
    }
}
