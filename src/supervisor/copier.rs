//! Background copies to the partner and global tiers: one thread per tier, so a copy
//! never freezes the target and never blocks the supervisor's poll loop.
//!
//! Each tier copies one image at a time. A new image for a busy tier waits; if another
//! comes before it starts, only the newest waits (an older copy nobody waits for is not
//! worth making any more). Copies someone waits for (`checkpoint --tier`) are never dropped.

use crate::image::compress::Compression;
use crate::image::format::TierKind;
use crate::tiers::layout::RankPaths;
use crate::tiers::placement::{Copied, Gate, PlaceError, Placer};
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Called on the copier thread with the outcome of a copy.
pub type Reply = Box<dyn FnOnce(Result<Copied, PlaceError>) + Send>;

struct Job {
    src: PathBuf,
    reply: Option<Reply>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    busy: Option<PathBuf>,
    closing: bool,
}

type Shared = Arc<(Mutex<Queue>, Condvar)>;

struct Worker {
    tier: TierKind,
    shared: Shared,
    thread: JoinHandle<()>,
}

/// The copy threads of one supervisor.
pub struct Copier {
    workers: Vec<Worker>,
}

impl Copier {
    /// A thread for every tier above local that `paths` can place images on, storing
    /// pages with `compression`; copies wait while `gate` is held. With `generations` (a
    /// coordinated job) retention counts complete generations, not images.
    pub fn start(
        paths: &RankPaths,
        keep: u32,
        compression: Compression,
        gate: &Gate,
        generations: bool,
    ) -> Copier {
        let workers = [TierKind::Partner, TierKind::Global]
            .into_iter()
            .filter_map(|tier| Some((tier, paths.destination(tier)?)))
            .map(|(tier, dest)| {
                let shared = Shared::default();
                let queue = shared.clone();
                let placer = Placer::new(dest, keep)
                    .with_gate(gate.clone())
                    .with_compression(compression)
                    .with_generations(generations);
                let thread = std::thread::Builder::new()
                    .name(format!("mlckpt-copy-{tier}"))
                    .spawn(move || work(tier, placer, &queue))
                    .expect("spawn a copy thread");
                Worker {
                    tier,
                    shared,
                    thread,
                }
            })
            .collect();
        Copier { workers }
    }

    /// Whether copies to `tier` can be made.
    pub fn has(&self, tier: TierKind) -> bool {
        self.workers.iter().any(|w| w.tier == tier)
    }

    /// Queues a copy of the committed image `src` to `tier`. Without a thread for `tier`
    /// (callers check [`Copier::has`] first) `reply` is dropped.
    pub fn submit(&self, tier: TierKind, src: &Path, reply: Option<Reply>) {
        let Some(worker) = self.workers.iter().find(|w| w.tier == tier) else {
            return;
        };
        let mut queue = lock(&worker.shared);
        queue.jobs.retain(|job| job.reply.is_some());
        queue.jobs.push_back(Job {
            src: src.to_path_buf(),
            reply,
        });
        worker.shared.1.notify_all();
    }

    /// Images queued or being copied: local retention must not delete them.
    pub fn in_use(&self) -> BTreeSet<PathBuf> {
        let mut paths = BTreeSet::new();
        for worker in &self.workers {
            let queue = lock(&worker.shared);
            paths.extend(queue.jobs.iter().map(|j| j.src.clone()));
            paths.extend(queue.busy.clone());
        }
        paths
    }

    /// Lets every queued copy finish, then stops the threads.
    pub fn finish(self) {
        for worker in &self.workers {
            lock(&worker.shared).closing = true;
            worker.shared.1.notify_all();
        }
        for worker in self.workers {
            let _ = worker.thread.join();
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Queue> {
    // A panicking copy must not take the supervisor down with it.
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

fn work(tier: TierKind, mut placer: Placer, shared: &Shared) {
    while let Some(job) = next_job(shared) {
        let result = placer.place(&job.src);
        log(tier, &job.src, &result);
        if let Some(reply) = job.reply {
            reply(result);
        }
        lock(shared).busy = None;
    }
}

/// Waits for a job; `None` once closing and nothing is left.
fn next_job(shared: &Shared) -> Option<Job> {
    let mut queue = lock(shared);
    loop {
        if let Some(job) = queue.jobs.pop_front() {
            queue.busy = Some(job.src.clone());
            return Some(job);
        }
        if queue.closing {
            return None;
        }
        queue = shared.1.wait(queue).unwrap_or_else(|e| e.into_inner());
    }
}

fn log(tier: TierKind, src: &Path, result: &Result<Copied, PlaceError>) {
    let name = src.file_name().unwrap_or_default().to_string_lossy();
    match result {
        Ok(c) => {
            let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
            let secs = c.elapsed.as_secs_f64().max(1e-6);
            // Said only when it differs: the pages were compressed.
            let stored = match c.compression {
                Compression::Zstd { .. } if c.bytes > 0 => format!(
                    ", stored as {:.1} MiB with {}",
                    mib(c.stored),
                    c.compression
                ),
                _ => String::new(),
            };
            crate::info!(
                "copied {name} to the {tier} tier: {} ({:.1} MiB in {:.1} ms, \
                 {:.0} MiB/s{stored})",
                c.path.display(),
                mib(c.bytes),
                secs * 1000.0,
                mib(c.bytes) / secs
            );
            super::context::report_retention(&c.pruned);
        }
        Err(e) => crate::info!(
            "copy of {name} to the {tier} tier failed: {}; older copies there are \
             untouched",
            super::error_chain(e)
        ),
    }
}
