//! A checkpoint: freeze, capture, stream memory into an image, let go (or kill).

use super::freeze::{FreezeError, Frozen, parent_of};
use super::inspect::{self, InspectError, RegionPlan, StorePolicy};
use super::memory::{MemoryError, PageMap, ProcessMemory};
use super::pages::{PageSink, ParentPages};
use super::remote::{RemoteError, RemoteThread, find_gadget};
use super::snapshot::Snapshot;
use super::sys;
use super::threads::{self, ThreadError};
use crate::image::format::{
    Advice, Backing, CpuFeatures, FORMAT_VERSION, Manifest, PAGE_SIZE, PendingSignal, SignalAction,
    ThreadState, TierKind,
};
use crate::image::writer::{CommittedImage, ImageWriter, WriteError};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
    Snapshot,
    #[default]
    Frozen,
}

pub fn checkpoint(req: &CheckpointRequest) -> Result<CheckpointStats, DumpError> {
    let started = Instant::now();
    let time_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // Read before the freeze: it walks page tables, which takes long for big targets.
    let hints = inspect::flag_hints(req.pid)?;
    let parent = ParentPages::newest(req.rank_dir, req.full_every);
    let mut frozen = Frozen::freeze(req.pid)?;
    // Files first: an unsupported fd fails before any work (the target runs on untouched).
    let fds = inspect::read_fds(req.pid)?;
    let mem = ProcessMemory::open(req.pid)?;
    // A snapshot child must become ours to reap: only when we are the target's parent.
    // With --kill the target stays frozen anyway, so there is nothing to gain.
    let try_snapshot = !req.kill && parent_of(req.pid) == Some(nix::unistd::getpid());
    let mut captured = capture_threads(&mut frozen, &mem, try_snapshot)?;
    let mut process = inspect::read_process(req.pid)?;
    let mut plans = inspect::read_regions_with(req.pid, &hints)?;

    let mut writer = ImageWriter::create(req.rank_dir, req.seq)?;
    let snapshot = captured.snapshot.take();
    let in_snapshot = match &snapshot {
        Some(s) => s.ranges()?,
        None => Default::default(),
    };
    let (later, now): (Vec<&mut RegionPlan>, Vec<&mut RegionPlan>) = plans
        .iter_mut()
        .partition(|p| snapshot_has_it(p, &in_snapshot));
    let mut sink = PageSink::new(&mut writer, parent.as_ref(), req.full_every > 1);
    dump_regions(&PageMap::open(req.pid)?, &mem, now, &mut sink)?;
    let mut frozen_for = started.elapsed();
    if !req.kill {
        // Every byte of the image's state is read or held by the snapshot: the target may
        // go on while the rest is dumped and made durable.
        frozen.release().map_err(FreezeError::from)?;
        frozen_for = started.elapsed();
    }
    if let Some(snap) = &snapshot {
        dump_regions(&snap.pagemap, &snap.mem, later, &mut sink)?;
    }
    drop(snapshot);
    let parents = sink.parents();
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
        parents,
        chain_depth,
    };
    let committed: CommittedImage = writer.commit(&manifest, &page_hashes)?;
    if req.kill {
        frozen.kill();
        frozen_for = started.elapsed();
    }
    Ok(CheckpointStats {
        path: committed.path,
        seq: req.seq,
        tier: req.tier,
        bytes: committed.bytes,
        freeze_ms: frozen_for.as_secs_f64() * 1e3,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
        mode: captured.mode,
    })
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

struct Captured {
    snapshot: Option<Snapshot>,
    mode: DumpMode,
    threads: Vec<ThreadState>,
    process_pending: Vec<PendingSignal>,
    signals: Vec<SignalAction>,
    brk: u64,
}

/// Runs the remote queries: the leader lends a scratch page for results, every thread
/// reports its own state; the scratch page is gone again before the map is read.
fn capture_threads(
    frozen: &mut Frozen,
    mem: &ProcessMemory,
    try_snapshot: bool,
) -> Result<Captured, DumpError> {
    let leader = frozen.leader();
    let gadget = find_gadget(mem, &gadget_candidates(leader)?)?;
    let mut lead = RemoteThread::new(leader, gadget)?;
    let scratch = lead.checked(
        "mmap(scratch)",
        libc::SYS_mmap,
        &[
            0,
            PAGE_SIZE,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )?;
    let result = capture_with_scratch(frozen, &mut lead, mem, gadget, scratch);
    let unmapped = lead.checked("munmap(scratch)", libc::SYS_munmap, &[scratch, PAGE_SIZE]);
    // The snapshot is taken last, once the scratch page is gone from the address space.
    let snapshot = match (&result, &unmapped, try_snapshot) {
        (Ok(_), Ok(_), true) => fork_snapshot(&mut lead),
        _ => None,
    };
    hold(frozen, leader, lead.finish()?);
    unmapped?;
    let mut captured = result?;
    captured.mode = if snapshot.is_some() {
        DumpMode::Snapshot
    } else {
        DumpMode::Frozen
    };
    captured.snapshot = snapshot;
    Ok(captured)
}

/// A snapshot, or None (with a note) when the target cannot fork: memory or process
/// limits. The checkpoint then dumps while frozen, as it would without snapshots.
fn fork_snapshot(lead: &mut RemoteThread) -> Option<Snapshot> {
    match Snapshot::fork(lead) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "mlckpt: note: fork-snapshot impossible ({}); dumping while the target is frozen",
                crate::error_chain(&e)
            );
            None
        }
    }
}

fn capture_with_scratch(
    frozen: &mut Frozen,
    lead: &mut RemoteThread,
    mem: &ProcessMemory,
    gadget: u64,
    scratch: u64,
) -> Result<Captured, DumpError> {
    let leader = frozen.leader();
    let brk = lead.checked("brk(0)", libc::SYS_brk, &[0])?;
    let signals = signal_actions(lead, mem, scratch)?;
    let mut threads = vec![threads::capture(lead, leader, mem, scratch)?];
    for tid in frozen.tids().into_iter().filter(|&t| t != leader) {
        let mut remote = RemoteThread::new(tid, gadget)?;
        let state = threads::capture(&mut remote, tid, mem, scratch);
        hold(frozen, tid, remote.finish()?);
        threads.push(state?);
    }
    Ok(Captured {
        snapshot: None,
        mode: DumpMode::Frozen,
        process_pending: threads::pending_signals(leader, true)?,
        threads,
        signals,
        brk,
    })
}

fn hold(frozen: &mut Frozen, tid: Pid, sig: Option<Signal>) {
    if let Some(sig) = sig {
        frozen.hold_signal(tid, sig);
    }
}

/// Where to look for a `syscall` instruction: the vDSO (its fallback paths have one),
/// found through the auxv's AT_SYSINFO_EHDR without walking the memory map; failing that,
/// every executable mapping, smallest first.
fn gadget_candidates(pid: Pid) -> Result<Vec<(u64, u64)>, DumpError> {
    const AT_SYSINFO_EHDR: u64 = 33;
    const VDSO_PAGES: u64 = 2;
    let auxv = inspect::read_auxv(pid)?;
    let vdso = auxv
        .chunks_exact(2)
        .find(|kv| kv[0] == AT_SYSINFO_EHDR)
        .map(|kv| (kv[1], kv[1] + VDSO_PAGES * PAGE_SIZE));
    if let Some(range) = vdso {
        return Ok(vec![range]);
    }
    let mut plans: Vec<RegionPlan> = inspect::read_regions(pid)?
        .into_iter()
        .filter(|p| p.region.prot.exec)
        .collect();
    plans.sort_by_key(|p| p.region.len());
    Ok(plans
        .iter()
        .map(|p| (p.region.start, p.region.end))
        .collect())
}

/// Every signal whose action is not the default, via `rt_sigaction(sig, NULL, &old)`.
fn signal_actions(
    remote: &mut RemoteThread,
    mem: &ProcessMemory,
    scratch: u64,
) -> Result<Vec<SignalAction>, DumpError> {
    let mut actions = Vec::new();
    for signo in 1..=64i32 {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        remote.checked(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            &[signo as u64, 0, scratch, 8],
        )?;
        // struct kernel_sigaction { handler; flags; restorer; mask }
        let raw = mem.read(scratch, 32)?;
        let word = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8"));
        let action = SignalAction {
            signo,
            handler: word(0),
            flags: word(1),
            restorer: word(2),
            mask: word(3),
        };
        if action.handler != 0 || action.flags != 0 || action.mask != 0 {
            actions.push(action);
        }
    }
    Ok(actions)
}

/// Decides which pages each region stores and streams them into the image, reading from
/// `mem` (the target, or its snapshot).
fn dump_regions(
    pagemap: &PageMap,
    mem: &ProcessMemory,
    plans: Vec<&mut RegionPlan>,
    sink: &mut PageSink,
) -> Result<(), DumpError> {
    for plan in plans {
        let ranges = stored_runs(pagemap, plan)?;
        let (runs, hashes) = sink.store(mem, &ranges)?;
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
