//! A checkpoint: freeze, capture, stream memory into an image, let go (or kill).

use super::capture;
use super::freeze::{FreezeError, Frozen, parent_of};
use super::inspect::{self, FlagHints, InspectError, RegionPlan, StorePolicy};
use super::memory::{MemoryError, PageMap, ProcessMemory};
use super::pages::{PageSink, ParentPages};
use super::precopy::{self, Tracking};
use super::remote::RemoteError;
use super::sys;
use super::threads::ThreadError;
use super::tracker::{TrackError, WriteTracker};
use crate::image::format::{
    Advice, Backing, CpuFeatures, FORMAT_VERSION, Manifest, PAGE_SIZE, ParentRef, TierKind,
};
use crate::image::writer::{CommittedImage, ImageWriter, WriteError};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Thread(#[from] ThreadError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Snapshot(#[from] super::snapshot::SnapshotError),
    #[error(transparent)]
    Track(TrackError),
    #[error("cannot assemble the injected code: {0}")]
    Assemble(String),
    #[error("internal error: a write-tracked page was never read")]
    Unread,
    #[error("internal error: the new image needs image {0}, which its parent does not name")]
    LostParent(u64),
}

/// What to checkpoint and where.
pub struct CheckpointRequest<'a> {
    pub pid: Pid,
    pub job: &'a str,
    pub rank: u32,
    pub tier: TierKind,
    /// `<tier root>/<job>/rank<R>`.
    pub rank_dir: &'a Path,
    pub seq: u64,
    /// End the target after the image is committed, without letting it run in between.
    pub kill: bool,
    /// A full image every `full_every` checkpoints; the others store only changed pages.
    pub full_every: u32,
}

/// The result printed by `mlckpt checkpoint --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointStats {
    pub path: PathBuf,
    pub seq: u64,
    pub tier: TierKind,
    pub bytes: u64,
    /// Time the target was not running.
    pub freeze_ms: f64,
    pub total_ms: f64,
    /// How memory was read: from a fork-snapshot while the target ran on, or frozen.
    #[serde(default)]
    pub mode: DumpMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpMode {
    /// Write-tracked memory read while the target ran, the rest while frozen.
    Precopy,
    /// Read from a fork of the frozen target while the target ran on.
    Snapshot,
    /// Read while the target was frozen.
    #[default]
    Frozen,
}

/// Checkpoints `req.pid`. With `tracking` (a supervisor's, kept across its checkpoints),
/// tracked memory is pre-copied while the target runs; without, memory is read from a
/// fork-snapshot (when the target is our child) or while frozen.
pub fn checkpoint(
    req: &CheckpointRequest,
    tracking: Option<&mut Tracking>,
) -> Result<CheckpointStats, DumpError> {
    let started = Instant::now();
    let Some(tracking) = tracking else {
        return dump(req, None, started, Duration::ZERO);
    };
    let mut stopped = Duration::ZERO;
    let result = match tracking.ready(req.pid, &mut stopped) {
        Some(tracker) => {
            let result = dump(req, Some(&mut *tracker), started, stopped);
            if result.is_err() {
                tracker.abandoned();
            }
            result
        }
        None => dump(req, None, started, stopped),
    };
    if matches!(result, Err(DumpError::Track(_))) {
        tracking.reset();
    }
    result
}

/// Below this much memory to read from the frozen target, a fork-snapshot (whose page
/// table copy costs ~25 ms per GiB mapped) is not worth it when memory is write-tracked.
const SNAPSHOT_MIN_BYTES: u64 = 32 << 20;

fn dump(
    req: &CheckpointRequest,
    mut tracker: Option<&mut WriteTracker>,
    started: Instant,
    stopped_before: Duration,
) -> Result<CheckpointStats, DumpError> {
    // Read before the freeze: it walks page tables, which takes long for big targets.
    let hints = inspect::flag_hints(req.pid)?;
    let parent = ParentPages::newest(req.rank_dir, req.full_every);
    let mut writer = ImageWriter::create(req.rank_dir, req.seq)?;
    let mem = ProcessMemory::open(req.pid)?;
    if let Some(t) = tracker.as_deref_mut() {
        let plans = inspect::read_regions_with(req.pid, &hints)?;
        let passes = !req.kill;
        precopy::before_freeze(
            t,
            &plans,
            &hints,
            parent.as_ref(),
            &mem,
            &mut writer,
            passes,
        )
        .map_err(|e| gone_as_exited(e, req.pid))?;
    }

    let freeze_began = Instant::now();
    let time_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut frozen = Frozen::freeze(req.pid)?;
    if let Some(t) = tracker.as_deref_mut() {
        t.scan().map_err(|e| gone_as_exited(e.into(), req.pid))?;
    }
    // Files first: an unsupported fd fails before any work (the target runs on untouched).
    let fds = inspect::read_fds(req.pid)?;
    let mut plans = inspect::read_regions_with(req.pid, &hints)?;
    let (mut tracked, untracked): (Vec<&mut RegionPlan>, Vec<&mut RegionPlan>) =
        plans.iter_mut().partition(|p| {
            tracker
                .as_deref()
                .is_some_and(|t| t.covers(p.region.start, p.region.end))
        });
    let tracked_ranges: Vec<(u64, u64)> = tracked
        .iter()
        .map(|p| (p.region.start, p.region.end))
        .collect();
    // A snapshot child must become ours to reap: only when we are the target's parent.
    // With --kill the target stays frozen anyway, so there is nothing to gain.
    let can_fork = !req.kill && parent_of(req.pid) == Some(nix::unistd::getpid());
    // Pages the target unmapped (or whose tracking broke) are not read any more.
    let frozen_read = tracker.as_deref_mut().map(|t| {
        t.index.retain_within(&tracked_ranges);
        t.index.pending_bytes() + resident(&untracked, &hints)
    });
    // Without tracking, a snapshot is the only way not to read all memory frozen.
    let try_snapshot = can_fork && frozen_read.is_none_or(|bytes| bytes > SNAPSHOT_MIN_BYTES);
    let mut captured = capture::capture_threads(&mut frozen, &mem, try_snapshot)?;
    let mut process = inspect::read_process(req.pid)?;

    let snapshot = captured.snapshot.take();
    let in_snapshot = match &snapshot {
        Some(s) => s.ranges()?,
        None => Default::default(),
    };
    let (later, now): (Vec<&mut RegionPlan>, Vec<&mut RegionPlan>) = untracked
        .into_iter()
        .partition(|p| snapshot_has_it(p, &in_snapshot));
    let mut sink = PageSink::new(parent.as_ref(), req.full_every > 1);
    dump_regions(&PageMap::open(req.pid)?, &mem, now, &mut sink, &mut writer)?;
    if snapshot.is_none()
        && let Some(t) = tracker.as_deref_mut()
    {
        precopy::read_pending(t, &mem, &mut writer, true)?;
    }
    let mut frozen_for = stopped_before + freeze_began.elapsed();
    if !req.kill {
        // Every byte of the image's state is read or held by the snapshot: the target may
        // go on while the rest is dumped and made durable.
        frozen.release().map_err(FreezeError::from)?;
        frozen_for = stopped_before + freeze_began.elapsed();
    }
    if let Some(snap) = &snapshot {
        dump_regions(&snap.pagemap, &snap.mem, later, &mut sink, &mut writer)?;
        if let Some(t) = tracker.as_deref_mut() {
            precopy::read_pending(t, &snap.mem, &mut writer, true)?;
        }
    }
    drop(snapshot);
    let mut parents = sink.parents().clone();
    if let Some(t) = tracker.as_deref() {
        for plan in &mut tracked {
            let r = &mut plan.region;
            r.runs = t
                .index
                .image_runs(r.start, r.end)
                .ok_or(DumpError::Unread)?;
            r.hashed = false;
        }
        for seq in t.index.referenced_images() {
            let hash = parent.as_ref().and_then(|p| p.image_hash(seq));
            parents.insert(seq, hash.ok_or(DumpError::LostParent(seq))?.to_string());
        }
    }
    let chain_depth = match (&parent, parents.is_empty()) {
        (Some(p), false) => p.chain_depth(),
        _ => 0,
    };
    let page_hashes: Vec<u8> = plans
        .iter_mut()
        .flat_map(|p| std::mem::take(&mut p.page_hashes))
        .collect();
    process.mm.brk = captured.brk;
    process.pending_signals = std::mem::take(&mut captured.process_pending);
    let manifest = Manifest {
        format: FORMAT_VERSION,
        mlckpt_version: env!("CARGO_PKG_VERSION").to_string(),
        job: req.job.to_string(),
        rank: req.rank,
        seq: req.seq,
        time_unix_ms,
        tier: req.tier,
        kernel: sys::kernel_release(),
        cpu: CpuFeatures {
            xfeatures: sys::xcr0(),
            xstate_size: captured.threads[0].xstate.len() as u32,
        },
        process,
        threads: captured.threads,
        regions: plans.into_iter().map(|p| p.region).collect(),
        fds,
        signals: captured.signals,
        pages_bytes: writer.pages_written(),
        parents: parents
            .into_iter()
            .map(|(seq, manifest_blake3)| ParentRef {
                seq,
                manifest_blake3,
            })
            .collect(),
        chain_depth,
    };
    let committed: CommittedImage = writer.commit(&manifest, &page_hashes)?;
    if let Some(t) = tracker {
        t.committed(req.seq, committed.manifest_blake3.clone(), &tracked_ranges);
    }
    if req.kill {
        frozen.kill();
        frozen_for = stopped_before + freeze_began.elapsed();
    }
    let mode = match (captured.mode, tracked_ranges.is_empty()) {
        (DumpMode::Frozen, false) => DumpMode::Precopy,
        (mode, _) => mode,
    };
    Ok(CheckpointStats {
        path: committed.path,
        seq: req.seq,
        tier: req.tier,
        bytes: committed.bytes,
        freeze_ms: frozen_for.as_secs_f64() * 1e3,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
        mode,
    })
}

/// A tracker error because the address space is gone means the target exited.
fn gone_as_exited(e: DumpError, pid: Pid) -> DumpError {
    match e {
        DumpError::Track(TrackError::Scan {
            source: nix::errno::Errno::ESRCH,
            ..
        }) => DumpError::Freeze(FreezeError::NoProcess { pid: pid.as_raw() }),
        other => other,
    }
}

/// Resident bytes of `plans` when the hints were read (a region whose hints are missing
/// counts in full).
fn resident(plans: &[&mut RegionPlan], hints: &FlagHints) -> u64 {
    plans
        .iter()
        .filter(|p| p.store != StorePolicy::Nothing)
        .map(|p| {
            let r = &p.region;
            hints.resident((r.start, r.end)).unwrap_or(r.len())
        })
        .sum()
}

/// Whether a fork-snapshot holds the region's checkpoint-time contents. Shared memory
/// goes on changing under the running target; `MADV_DONTFORK` memory is not in the child
/// (its range is missing there) and `MADV_WIPEONFORK` memory is zero there: all three are
/// dumped while frozen, as is a region whose flags are not known.
fn snapshot_has_it(plan: &RegionPlan, in_snapshot: &HashSet<(u64, u64)>) -> bool {
    let r = &plan.region;
    plan.flags_known
        && in_snapshot.contains(&(r.start, r.end))
        && !r.shared
        && r.backing != Backing::SharedAnonymous
        && !r
            .advice
            .iter()
            .any(|a| matches!(a, Advice::DontFork | Advice::WipeOnFork))
}

/// Decides which pages each region stores and streams them into the image, reading from
/// `mem` (the target, or its snapshot).
fn dump_regions(
    pagemap: &PageMap,
    mem: &ProcessMemory,
    plans: Vec<&mut RegionPlan>,
    sink: &mut PageSink,
    writer: &mut ImageWriter,
) -> Result<(), DumpError> {
    for plan in plans {
        let ranges = stored_runs(pagemap, plan)?;
        let (runs, hashes) = sink.store(writer, mem, &ranges)?;
        plan.region.runs = runs;
        plan.page_hashes = hashes;
    }
    Ok(())
}

/// Page runs `(addr, len)` of a region whose contents go into the image.
fn stored_runs(pagemap: &PageMap, plan: &RegionPlan) -> Result<Vec<(u64, u64)>, DumpError> {
    let (start, end) = (plan.region.start, plan.region.end);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut push = |addr: u64| match runs.last_mut() {
        Some((s, l)) if *s + *l == addr => *l += PAGE_SIZE,
        _ => runs.push((addr, PAGE_SIZE)),
    };
    match plan.store {
        StorePolicy::Nothing => {}
        StorePolicy::Everything => (start..end).step_by(PAGE_SIZE as usize).for_each(&mut push),
        StorePolicy::PrivateData => pagemap.scan(start, end, |addr, flags| {
            if flags.private_data() {
                push(addr);
            }
        })?,
    }
    Ok(runs)
}
