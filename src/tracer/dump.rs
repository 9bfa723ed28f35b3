//! A checkpoint: freeze, capture, stream memory into an image, let go (or kill).

use super::access::TargetError;
use super::capture;
use super::freeze::{FreezeError, Frozen, parent_of};
use super::hugepages;
use super::inspect::{self, FlagHints, InspectError, RegionPlan, StorePolicy};
use super::members;
use super::memory::{MemoryError, PageMap, ProcessMemory};
use super::pages::{PageSink, ParentChoice, ParentPages};
use super::precopy::{self, Tracking};
use super::remote::RemoteError;
use super::snapshot::{Snapshot, SnapshotParent};
use super::sys;
use super::threads::ThreadError;
use super::tracker::{TrackError, WriteTracker};
use super::tree::{self, FrozenMembers};
use crate::image::format::{
    Advice, Backing, CpuFeatures, FORMAT_VERSION, FdKind, FdState, Manifest, MemoryRegion,
    PAGE_SIZE, ParentRef, TierKind,
};
use crate::image::writer::{CommittedImage, ImageWriter, WriteError};
use crate::objects::contents::{self, Access, WriteAccess};
use crate::objects::{self, Depth};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error(transparent)]
    Target(#[from] super::access::TargetError),
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
    #[error(transparent)]
    Objects(#[from] crate::objects::ObjectError),
    #[error(transparent)]
    Attributes(#[from] super::attributes::AttributeError),
    #[error(transparent)]
    Locks(#[from] crate::objects::locks::LockError),
    #[error("cannot assemble the injected code: {0}")]
    Assemble(String),
    #[error(
        "{}\n(the config says [image] outside_peers = \"refuse\"; with \"warn\" the \
         checkpoint goes on and the other side is gone after a restore)",
        .0.join("\n")
    )]
    OutsidePeers(Vec<String>),
    #[error(
        "{} part{} of the job cannot be checkpointed:\n  - {}",
        .0.len(),
        if .0.len() == 1 { "" } else { "s" },
        .0.join("\n  - ")
    )]
    Unsupported(Vec<String>),
    #[error("the checkpoint was called off before the freeze: {0}")]
    CalledOff(String),
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
    /// The image in `rank_dir` the new one may build on.
    pub parent: ParentChoice,
    /// Fail rather than warn when a pipe's other end is outside the job.
    pub refuse_outside_peers: bool,
    /// Whether fds 0-2 that are regular files follow the restoring command's stdio.
    pub stdio_files: objects::stdio::StdioFiles,
    /// Files written in place up to this size are copied into the image.
    pub file_copy_limit: u64,
    /// The key that authenticates the image.
    pub key: &'a crate::image::auth::ImageKey,
    /// Called when everything that can be done with the target running is done, right
    /// before the freeze: the barrier that freezes every rank of a generation together.
    /// An error calls the checkpoint off; the target was never stopped for it.
    pub before_freeze: Option<&'a dyn Fn() -> Result<(), String>>,
}

/// A rank's part in a checkpoint generation (`docs/tiers.md`), for `checkpoint --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationStats {
    pub generation: u64,
    pub ranks: u32,
    /// Latest minus earliest freeze start among the ranks.
    pub skew_ms: f64,
    /// From the coordinator's decision until every rank had committed the generation
    /// locally.
    pub commit_ms: f64,
    /// The longest freeze among the ranks.
    pub freeze_ms_max: f64,
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
    /// Why that mode: what was measured (the target's write rate against the read rate,
    /// what was left at the freeze).
    #[serde(default)]
    pub why: String,
    /// Where the time went, phase after phase; the `frozen.*` ones add up to the freeze.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// When the freeze began (microseconds since the epoch): ranks of a generation are
    /// compared by it.
    #[serde(default)]
    pub freeze_began_unix_us: u64,
    /// The generation this image belongs to, in a coordinated job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationStats>,
}

/// One step of a checkpoint and its duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub ms: f64,
}

/// Times a checkpoint's phases, one lap each.
pub struct Clock {
    phases: Vec<Phase>,
    mark: Instant,
}

impl Clock {
    pub fn new(started: Instant) -> Clock {
        Clock {
            phases: Vec::new(),
            mark: started,
        }
    }

    /// Ends phase `name` now.
    pub fn lap(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.push(Phase {
            name: name.to_string(),
            ms: (now - self.mark).as_secs_f64() * 1e3,
        });
        self.mark = now;
    }
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
    // A target that exited (or never was) fails the step that first notices, with that
    // step's error ("cannot open memory ... No such process"): say what happened instead.
    let exited = |e: DumpError| match super::access::check_target(req.pid) {
        Err(gone @ (TargetError::Gone { .. } | TargetError::Exited { .. })) => gone.into(),
        _ => e,
    };
    super::access::check_target(req.pid)?;
    let _ahead = super::priority::CheckpointPriority::raise();
    let _measured = crate::progress::start(&format!("checkpoint of {}", req.pid), 0);
    checkpoint_tracked(req, tracking).map_err(exited)
}

fn checkpoint_tracked(
    req: &CheckpointRequest,
    tracking: Option<&mut Tracking>,
) -> Result<CheckpointStats, DumpError> {
    let started = Instant::now();
    let Some(tracking) = tracking else {
        return dump(req, Trackers::default(), started, Duration::ZERO);
    };
    let mut stopped = Duration::ZERO;
    let result = {
        let members: Vec<Pid> = live_members(req.pid);
        let (root, members) = tracking.all_ready(req.pid, &members, &mut stopped);
        let mut trackers = Trackers { root, members };
        let result = dump(req, trackers.reborrow(), started, stopped);
        if result.is_err() {
            trackers.abandoned();
        }
        result
    };
    match result {
        Err(DumpError::Track(TrackError::Pinned { .. } | TrackError::Replaced { .. })) => {
            // Pinned memory or a new address space appeared mid-checkpoint: the trackers
            // cannot vouch for this one; once more, comparing contents.
            tracking.reset();
            dump(req, Trackers::default(), started, stopped)
        }
        Err(DumpError::Track(e)) => {
            tracking.reset();
            Err(DumpError::Track(e))
        }
        result => result,
    }
}

/// The write trackers one checkpoint uses: the root's, and those of the members that
/// have one.
#[derive(Default)]
struct Trackers<'a> {
    root: Option<&'a mut WriteTracker>,
    members: Vec<(Pid, &'a mut WriteTracker)>,
}

impl Trackers<'_> {
    fn reborrow(&mut self) -> Trackers<'_> {
        Trackers {
            root: self.root.as_deref_mut(),
            members: self
                .members
                .iter_mut()
                .map(|(p, t)| (*p, &mut **t))
                .collect(),
        }
    }

    fn abandoned(&mut self) {
        if let Some(t) = self.root.as_deref_mut() {
            t.abandoned();
        }
        for (_, t) in &mut self.members {
            t.abandoned();
        }
    }
}

/// The job's processes other than its root that are running now.
fn live_members(root: Pid) -> Vec<Pid> {
    tree::descendants(root.as_raw())
        .into_iter()
        .filter(|s| s.state != 'Z')
        .map(|s| Pid::from_raw(s.pid))
        .collect()
}

fn dump(
    req: &CheckpointRequest,
    trackers: Trackers,
    started: Instant,
    stopped_before: Duration,
) -> Result<CheckpointStats, DumpError> {
    let Trackers {
        root: mut tracker,
        members: member_trackers,
    } = trackers;
    let mut clock = Clock::new(started);
    // Read before the freeze: it walks page tables, which takes long for big targets.
    let hints = inspect::flag_hints(req.pid)?;
    clock.lap("prepare.smaps");
    let parent = ParentPages::choose(req.rank_dir, req.parent, req.full_every);
    clock.lap("prepare.parent");
    let mut writer = ImageWriter::create(req.rank_dir, req.seq)?;
    let mem = ProcessMemory::open(req.pid)?;
    clock.lap("prepare.writer");
    // The members' pre-copy first, the root's last: its drain comes right before the freeze.
    let snapshot_parent = snapshot_parent(req);
    let member_mode = precopy::PrecopyMode {
        passes: !req.kill,
        can_snapshot: snapshot_parent.is_some(),
    };
    let mut tracked_members = members::precopy_members(
        member_trackers,
        parent.as_ref(),
        &mut writer,
        member_mode,
        &mut clock,
    )?;
    let mut precopied = None;
    if let Some(t) = tracker.as_deref_mut() {
        // An fd mlckpt cannot restore fails the checkpoint: better before the pre-copy
        // than after it (the check while frozen below is the one that counts).
        check_files(req.pid, req.refuse_outside_peers, req.stdio_files)?;
        let plans = inspect::read_regions_with(req.pid, &hints)?;
        let before = precopy::Before {
            plans: &plans,
            hints: &hints,
            parent: parent.as_ref(),
            mem: &mem,
        };
        let mode = precopy::PrecopyMode {
            passes: !req.kill,
            can_snapshot: snapshot_parent.is_some(),
        };
        precopied = Some(
            precopy::before_freeze(t, &before, &mut writer, mode, &mut clock)
                .map_err(|e| gone_as_exited(e, req.pid))?,
        );
    }

    // A snapshot would split the huge pages the target writes meanwhile: note them.
    let huge_before = hugepages::mapped_huge(req.pid, &hints.huge_regions());
    if let Some(barrier) = req.before_freeze {
        barrier().map_err(DumpError::CalledOff)?;
        clock.lap("prepare.barrier");
    }
    writer.hold();
    let freeze_began = Instant::now();
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let time_unix_ms = since_epoch.as_millis() as u64;
    let mut frozen = Frozen::freeze(req.pid)?;
    let mut members = FrozenMembers::freeze(req.pid)?;
    clock.lap("frozen.seize");
    // Files first: an unsupported fd fails before any work (the job runs on untouched).
    let job_pids: Vec<Pid> = std::iter::once(req.pid).chain(members.pids()).collect();
    let mut sharing = tree::unsupported_sharing(req.pid, &members);
    sharing.extend(tree::escaped(req.pid));
    sharing.extend(super::attributes::unsupported(&job_pids));
    for &pid in &job_pids {
        let own = (pid == req.pid).then_some(&hints);
        sharing.extend(inspect::mapping_refusals(pid, own));
    }
    let mut files = match (
        objects::collect(&job_pids, Depth::Capture, req.stdio_files),
        sharing.is_empty(),
    ) {
        (result, true) => result?,
        (Ok(_), false) => return Err(DumpError::Unsupported(sharing)),
        (Err(objects::ObjectError::Unsupported(fds)), false) => {
            let all = sharing
                .into_iter()
                .chain(fds.iter().map(ToString::to_string));
            return Err(DumpError::Unsupported(all.collect()));
        }
        (Err(e), false) => return Err(e.into()),
    };
    // TCP connections in repair mode: out of it before the job runs again, or left in it
    // for the kill (dropped on an error: the job runs on).
    let repair = std::mem::take(&mut files.repair);
    let repair = if req.kill {
        Some(repair)
    } else {
        repair.release();
        None
    };
    if req.refuse_outside_peers && !files.warnings.is_empty() {
        return Err(DumpError::OutsidePeers(files.warnings));
    }
    warn_once(&files.warnings);
    let mut writes = fd_writes(&files.fds);
    let locks = crate::objects::locks::capture(&files.fds)?;
    let fds = files.fds.remove(&req.pid.as_raw()).unwrap_or_default();
    let mut plans = inspect::read_regions_with(req.pid, &hints)?;
    // Memfds and deleted files: their contents are stored once, as objects.
    let root_regions = plans.iter().map(|p| &p.region);
    objects::unlinked::add_mapped(&mut files.objects, req.pid.as_raw(), root_regions);
    inspect::leave_to_files(&mut plans, &objects::unlinked::mapped_names(&files.objects));
    clock.lap("frozen.inspect");
    if let Some(t) = tracker.as_deref_mut() {
        // What the target wrote since the last pass decides, not what was left after it.
        t.scan().map_err(|e| gone_as_exited(e.into(), req.pid))?;
    }
    let estimate = tracked_plans(&plans, tracker.as_deref());
    let (try_snapshot, mut why) = choose_snapshot(
        snapshot_parent,
        precopied.as_ref(),
        &plans,
        &estimate,
        tracker.as_deref(),
        &hints,
    );
    let mut captured = capture::capture_threads(&mut frozen, &mem, try_snapshot)?;
    if try_snapshot.is_some() && captured.mode != DumpMode::Snapshot {
        why = "frozen: the fork-snapshot failed (see the note)".to_string();
    }
    let mut process = inspect::read_process(req.pid)?;
    clock.lap("frozen.capture");
    // The last scan comes after the capture: its threads returning to user space made the
    // kernel write their rseq areas. A range it finds broken is no longer tracked.
    if let Some(t) = tracker.as_deref_mut() {
        t.scan().map_err(|e| gone_as_exited(e.into(), req.pid))?;
        clock.lap("frozen.scan");
    }
    let tracked = tracked_plans(&plans, tracker.as_deref());
    let tracked_ranges: Vec<(u64, u64)> = tracked
        .iter()
        .map(|&i| (plans[i].region.start, plans[i].region.end))
        .collect();
    if let Some(t) = tracker.as_deref_mut() {
        // Pages the target unmapped (or whose tracking broke) are not read any more.
        t.index.retain_within(&tracked_ranges);
    }

    let snapshot = captured.snapshot.take();
    let mut sink = PageSink::new(parent.as_ref(), req.full_every > 1);
    let mut memory = Memory {
        target: &mem,
        snapshot: snapshot.as_ref(),
        sink: &mut sink,
        writer: &mut writer,
        tracker: tracker.as_deref_mut(),
    };
    let later = memory.while_frozen(req.pid, &mut plans, &tracked, &mut clock)?;
    let member_dumps = members::dump_members(
        &mut members,
        &mut files,
        memory.writer,
        &mut tracked_members,
        snapshot_parent.is_some(),
    )?;
    if !member_dumps.is_empty() {
        clock.lap("frozen.members");
    }
    writes.extend(mapping_writes(req.pid, plans.iter().map(|p| &p.region)));
    for m in &member_dumps {
        writes.extend(mapping_writes(m.pid(), m.regions()));
    }
    let attaches: Vec<(i32, Vec<&MemoryRegion>)> =
        std::iter::once((req.pid.as_raw(), plans.iter().map(|p| &p.region).collect()))
            .chain(
                member_dumps
                    .iter()
                    .map(|m| (m.pid().as_raw(), m.regions().collect())),
            )
            .collect();
    let sysv_shm = crate::objects::sysv_shm::capture(&attaches).map_err(InspectError::from)?;
    let members_snapshotted = member_dumps.iter().filter(|m| m.snapshotted()).count();
    let parent_files = parent
        .as_ref()
        .map(|p| &p.files)
        .cloned()
        .unwrap_or_default();
    let written = contents::capture(&writes, req.file_copy_limit, &parent_files, memory.writer)?;
    // Memfds and deleted files: their contents exist nowhere else.
    let unlinked_parents =
        objects::unlinked::store_all(&mut files.objects, &parent_files, memory.writer)?;
    warn_once(&written.warnings);
    if !written.files.is_empty() {
        clock.lap("frozen.files");
    }
    let mut frozen_for = stopped_before + freeze_began.elapsed();
    if !req.kill {
        // Every byte of the image's state is read or held by the snapshot: the job may go
        // on while the rest is dumped and made durable.
        frozen.release().map_err(FreezeError::from)?;
        members.release()?;
        frozen_for = stopped_before + freeze_began.elapsed();
    }
    memory.writer.let_go()?;
    memory.after_release(&mut plans, &later)?;
    clock.lap("snapshot.memory");
    let (member_images, reaping) =
        members::finish(member_dumps, memory.writer, &mut tracked_members)?;
    frozen_for += reaping;
    if members_snapshotted > 0 {
        clock.lap("snapshot.members");
        why.push_str(&format!(
            "; {members_snapshotted} other process(es) read from snapshots"
        ));
    }
    if let Some(snapshot) = snapshot {
        // A snapshot that is the target's child costs a second, short stop to reap it.
        frozen_for += snapshot.end();
        clock.lap("snapshot.end");
    }
    if captured.mode == DumpMode::Snapshot && !huge_before.is_empty() {
        hugepages::collapse(req.pid, &huge_before);
        clock.lap("hugepages");
    }

    let mut parents = sink.parents().clone();
    if let Some(t) = tracker.as_deref() {
        tracked_runs(t, &mut plans, &tracked)?;
    }
    let referenced = tracker
        .iter()
        .map(|t| &**t)
        .chain(tracked_members.iter().map(|m| &*m.tracker))
        .flat_map(|t| t.index.referenced_images());
    for seq in referenced {
        let hash = parent.as_ref().and_then(|p| p.image_hash(seq));
        parents.insert(seq, hash.ok_or(DumpError::LostParent(seq))?.to_string());
    }
    for &seq in written.referenced.iter().chain(&unlinked_parents) {
        let hash = parent.as_ref().and_then(|p| p.image_hash(seq));
        parents.insert(seq, hash.ok_or(DumpError::LostParent(seq))?.to_string());
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
    process.parent_death_signal = captured.flags.parent_death_signal;
    process.child_subreaper = captured.flags.child_subreaper;
    process.attributes = std::mem::take(&mut captured.attributes);
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
        members: member_images,
        zombies: std::mem::take(&mut members.zombies),
        objects: files.objects,
        files: written.files,
        sysv_shm,
        locks,
    };
    let committed: CommittedImage = writer.commit(&manifest, &page_hashes, req.key)?;
    if let Some(t) = tracker {
        t.committed(req.seq, committed.manifest_blake3.clone(), &tracked_ranges);
    }
    for m in tracked_members {
        m.tracker
            .committed(req.seq, committed.manifest_blake3.clone(), &m.ranges);
    }
    if req.kill {
        if let Some(repair) = repair {
            repair.leave_for_kill();
        }
        members.kill();
        frozen.kill();
        frozen_for = stopped_before + freeze_began.elapsed();
    }
    clock.lap("commit");
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
        why,
        phases: clock.phases,
        freeze_began_unix_us: since_epoch.as_micros() as u64,
        generation: None,
    })
}

/// Fails, listing every fd the job holds that a checkpoint could not capture (the job runs
/// on: this is the check made before a pre-copy, and when supervision starts).
/// With `refuse_outside_peers`, a pipe to outside the job fails it too.
pub fn check_files(
    root: Pid,
    refuse_outside_peers: bool,
    stdio_files: objects::stdio::StdioFiles,
) -> Result<objects::JobFiles, DumpError> {
    let pids: Vec<Pid> = std::iter::once(root).chain(live_members(root)).collect();
    let files = objects::collect(&pids, Depth::Check, stdio_files)?;
    if refuse_outside_peers && !files.warnings.is_empty() {
        return Err(DumpError::OutsidePeers(files.warnings));
    }
    Ok(files)
}

/// Prints each warning the first time this process sees it: a supervisor checkpoints the
/// same job again and again.
pub fn warn_once(warnings: &[String]) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for w in warnings {
        if !seen.contains(w) {
            crate::warn!("{w}");
            seen.push(w.clone());
        }
    }
}

/// Every fd of the job open for writing on a regular file.
fn fd_writes(fds: &BTreeMap<i32, Vec<FdState>>) -> Vec<WriteAccess> {
    let writable = |f: &&FdState| f.kind == FdKind::File && f.flags & libc::O_ACCMODE != 0;
    fds.iter()
        .flat_map(|(&pid, list)| {
            list.iter().filter(writable).map(move |f| WriteAccess {
                pid,
                how: Access::Fd {
                    fd: f.fd,
                    flags: f.flags,
                    offset: f.offset,
                },
            })
        })
        .collect()
}

/// Every shared file mapping of process `pid` that is writable, or may be made so again
/// (`mprotect` after the checkpoint: its writes reach the file all the same).
fn mapping_writes<'a>(
    pid: Pid,
    regions: impl IntoIterator<Item = &'a MemoryRegion>,
) -> Vec<WriteAccess> {
    regions
        .into_iter()
        .filter(|r| r.shared)
        .filter_map(|r| match &r.backing {
            Backing::File(id) if r.prot.write || id.may_write => Some(WriteAccess {
                pid: pid.as_raw(),
                how: Access::Mapping(id.clone()),
            }),
            _ => None,
        })
        .collect()
}

/// Indexes of the plans whose regions `tracker` tracks.
pub(super) fn tracked_plans(plans: &[RegionPlan], tracker: Option<&WriteTracker>) -> Vec<usize> {
    let Some(t) = tracker else {
        return Vec::new();
    };
    (0..plans.len())
        .filter(|&i| t.covers(plans[i].region.start, plans[i].region.end))
        .collect()
}

/// Whose child a snapshot of the target would be; None if the target stays frozen anyway
/// (--kill).
fn snapshot_parent(req: &CheckpointRequest) -> Option<SnapshotParent> {
    match (req.kill, parent_of(req.pid) == Some(nix::unistd::getpid())) {
        (true, _) => None,
        (false, true) => Some(SnapshotParent::Us),
        (false, false) => Some(SnapshotParent::Target(req.pid)),
    }
}

/// Whether to fork a snapshot of the frozen target, and why. Without write tracking,
/// always (when possible); with it, when the pre-copy found the target writing too fast,
/// or when much is left to read at the freeze: forking copies the page tables, ~25 ms per
/// GiB mapped.
fn choose_snapshot(
    parent: Option<SnapshotParent>,
    precopied: Option<&precopy::Precopied>,
    plans: &[RegionPlan],
    tracked: &[usize],
    tracker: Option<&WriteTracker>,
    hints: &FlagHints,
) -> (Option<SnapshotParent>, String) {
    let Some(parent) = parent else {
        let why = precopied.map_or(
            "frozen: the target stays frozen (--kill)".to_string(),
            |p| p.why.clone(),
        );
        return (None, why);
    };
    let (Some(t), Some(precopied)) = (tracker, precopied) else {
        return (
            Some(parent),
            "snapshot: memory is not write-tracked".to_string(),
        );
    };
    if precopied.snapshot_wanted {
        return (Some(parent), precopied.why.clone());
    }
    let left = t.index.pending_bytes() + untracked_bytes(plans, tracked, hints);
    let left_text = precopy::human_bytes(left);
    if left > precopy::SNAPSHOT_MIN_BYTES {
        let why = format!(
            "{}; snapshot for the {left_text} left at the freeze",
            precopied.why
        );
        (Some(parent), why)
    } else {
        let why = format!("{}; {left_text} read while frozen", precopied.why);
        (None, why)
    }
}

/// Resident bytes of the regions of `plans` with contents to store that are not tracked.
pub(super) fn untracked_bytes(plans: &[RegionPlan], tracked: &[usize], hints: &FlagHints) -> u64 {
    (0..plans.len())
        .filter(|i| !tracked.contains(i) && plans[*i].store != StorePolicy::Nothing)
        .map(|i| {
            let r = &plans[i].region;
            hints.resident((r.start, r.end)).unwrap_or(r.len())
        })
        .sum()
}

/// Where the memory of the image comes from, and where it goes.
struct Memory<'a, 'p> {
    target: &'a ProcessMemory,
    snapshot: Option<&'a Snapshot>,
    sink: &'a mut PageSink<'p>,
    writer: &'a mut ImageWriter,
    tracker: Option<&'a mut WriteTracker>,
}

impl Memory<'_, '_> {
    /// Reads what must be read while the target is frozen: every untracked region the
    /// snapshot does not hold, and (without a snapshot) the pending tracked pages. Returns
    /// the untracked regions left for the snapshot.
    fn while_frozen(
        &mut self,
        pid: Pid,
        plans: &mut [RegionPlan],
        tracked: &[usize],
        clock: &mut Clock,
    ) -> Result<Vec<usize>, DumpError> {
        let (later, now) = later_and_now(plans, tracked, self.snapshot)?;
        let pagemap = PageMap::open(pid)?;
        dump_regions(&pagemap, self.target, plans, &now, self.sink, self.writer)?;
        clock.lap("frozen.untracked");
        if self.snapshot.is_none()
            && let Some(t) = self.tracker.as_deref_mut()
        {
            precopy::read_pending(t, self.target, self.writer, true)?;
            clock.lap("frozen.pending");
        }
        Ok(later)
    }

    /// Reads the regions `later` and the pending tracked pages from the snapshot, if any
    /// (the target runs again meanwhile).
    fn after_release(
        &mut self,
        plans: &mut [RegionPlan],
        later: &[usize],
    ) -> Result<(), DumpError> {
        let Some(snap) = self.snapshot else {
            return Ok(());
        };
        dump_regions(
            &snap.pagemap,
            &snap.mem,
            plans,
            later,
            self.sink,
            self.writer,
        )?;
        if let Some(t) = self.tracker.as_deref_mut() {
            precopy::read_pending(t, &snap.mem, self.writer, true)?;
        }
        Ok(())
    }
}

/// Fills the runs of the tracked regions from the tracker's index: they store no page
/// hashes (the next image asks the tracker, not the contents, what changed).
pub(super) fn tracked_runs(
    tracker: &WriteTracker,
    plans: &mut [RegionPlan],
    tracked: &[usize],
) -> Result<(), DumpError> {
    for &i in tracked {
        let r = &mut plans[i].region;
        r.runs = tracker
            .index
            .image_runs(r.start, r.end)
            .ok_or(DumpError::Unread)?;
        r.hashed = false;
    }
    Ok(())
}

/// A tracker error because the address space is gone means the target exited.
pub(super) fn gone_as_exited(e: DumpError, pid: Pid) -> DumpError {
    match e {
        DumpError::Track(TrackError::Scan {
            source: nix::errno::Errno::ESRCH,
            ..
        }) => DumpError::Freeze(FreezeError::NoProcess { pid: pid.as_raw() }),
        other => other,
    }
}

/// The untracked regions of `plans` (not in `tracked`): those `snapshot` holds, to read
/// from it once the job runs again, and those to read now.
pub(super) fn later_and_now(
    plans: &[RegionPlan],
    tracked: &[usize],
    snapshot: Option<&Snapshot>,
) -> Result<(Vec<usize>, Vec<usize>), DumpError> {
    let in_snapshot = match snapshot {
        Some(s) => s.ranges()?,
        None => HashSet::new(),
    };
    Ok((0..plans.len())
        .filter(|i| !tracked.contains(i))
        .partition(|&i| snapshot_has_it(&plans[i], &in_snapshot)))
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

/// Decides which pages each region of `which` stores and streams them into the image,
/// reading from `mem` (the target, or its snapshot).
pub(super) fn dump_regions(
    pagemap: &PageMap,
    mem: &ProcessMemory,
    plans: &mut [RegionPlan],
    which: &[usize],
    sink: &mut PageSink,
    writer: &mut ImageWriter,
) -> Result<(), DumpError> {
    let mut stored = Vec::with_capacity(which.len());
    for &i in which {
        stored.push((i, stored_runs(pagemap, &plans[i])?));
    }
    let bytes = stored.iter().flat_map(|(_, r)| r).map(|r| r.1).sum();
    crate::progress::add_total(bytes);
    for (i, ranges) in stored {
        let plan = &mut plans[i];
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
