//! The memory of a job's processes other than its root: pre-copied while they run when
//! they are write-tracked, captured while the job is frozen, and read from a fork-snapshot
//! of each after the job runs again when much is left to read. A member is not our child:
//! its snapshot is its own clone child, which it is made to reap (see `snapshot`).

use super::access::TargetError;
use super::capture;
use super::dump::{
    Clock, DumpError, dump_regions, gone_as_exited, later_and_now, tracked_plans, tracked_runs,
    untracked_bytes,
};
use super::freeze::FreezeError;
use super::inspect::{self, FlagHints, RegionPlan};
use super::memory::{PageMap, ProcessMemory};
use super::pages::{PageSink, ParentPages};
use super::precopy;
use super::snapshot::{Snapshot, SnapshotParent};
use super::tracker::WriteTracker;
use super::tree::FrozenMembers;
use crate::image::format::{MemberProcess, MemoryRegion};
use crate::image::writer::ImageWriter;
use crate::objects;
use nix::unistd::Pid;
use std::time::Duration;

/// A member of the job whose writes are tracked, and what its pre-copy knew.
pub struct TrackedMember<'a> {
    pid: Pid,
    pub tracker: &'a mut WriteTracker,
    hints: FlagHints,
    /// The ranges its image takes from the tracker (set when it is dumped).
    pub ranges: Vec<(u64, u64)>,
    /// Its pre-copy found it writing too fast to converge.
    snapshot_wanted: bool,
}

/// Pre-copies every tracked member (see `precopy::before_freeze`). A member that exits
/// meanwhile is simply not tracked in this checkpoint.
pub fn precopy_members<'a>(
    trackers: Vec<(Pid, &'a mut WriteTracker)>,
    parent: Option<&ParentPages>,
    writer: &mut ImageWriter,
    mode: precopy::PrecopyMode,
    clock: &mut Clock,
) -> Result<Vec<TrackedMember<'a>>, DumpError> {
    let mut tracked = Vec::with_capacity(trackers.len());
    for (pid, tracker) in trackers {
        let Ok(hints) = inspect::flag_hints(pid) else {
            continue;
        };
        let Ok(mem) = ProcessMemory::open(pid) else {
            continue;
        };
        let plans = inspect::read_regions_with(pid, &hints)?;
        let before = precopy::Before {
            plans: &plans,
            hints: &hints,
            parent,
            mem: &mem,
        };
        match precopy::before_freeze(tracker, &before, writer, mode, clock)
            .map_err(|e| gone_as_exited(e, pid))
        {
            Ok(precopied) => tracked.push(TrackedMember {
                pid,
                tracker,
                hints,
                ranges: Vec::new(),
                snapshot_wanted: precopied.snapshot_wanted,
            }),
            Err(DumpError::Freeze(
                FreezeError::NoProcess { .. }
                | FreezeError::Target(TargetError::Gone { .. } | TargetError::Exited { .. }),
            )) => tracker.abandoned(),
            Err(e) => return Err(e),
        }
    }
    Ok(tracked)
}

/// A member captured while the job was frozen, whose memory may still be (in part) in its
/// snapshot.
pub struct MemberDump {
    image: MemberProcess,
    plans: Vec<RegionPlan>,
    /// Plans whose pages its tracker knows.
    by_tracker: Vec<usize>,
    /// Plans to read from the snapshot.
    later: Vec<usize>,
    snapshot: Option<Snapshot>,
}

impl MemberDump {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.image.process.pid)
    }

    /// Its memory regions (their page runs are filled by `finish`).
    pub fn regions(&self) -> impl Iterator<Item = &MemoryRegion> {
        self.plans.iter().map(|p| &p.region)
    }

    pub fn snapshotted(&self) -> bool {
        self.snapshot.is_some()
    }
}

/// Captures the job's processes other than its root, all frozen: threads, state, and the
/// memory that is not left to a snapshot. A tracked member's image takes its tracked
/// regions from its tracker (pages pre-copied, or stored in earlier images). With
/// `snapshots`, a member with much left to read is forked, its memory read by `finish`
/// after the job runs again.
pub fn dump_members(
    members: &mut FrozenMembers,
    files: &mut objects::JobFiles,
    writer: &mut ImageWriter,
    tracked: &mut Vec<TrackedMember>,
    snapshots: bool,
) -> Result<Vec<MemberDump>, DumpError> {
    let mut dumps = Vec::with_capacity(members.live.len());
    for (frozen, links) in &mut members.live {
        let pid = frozen.pid;
        let mem = ProcessMemory::open(pid)?;
        let mut tracker = tracked.iter_mut().find(|m| m.pid == pid);
        let mut plans = match &tracker {
            Some(m) => inspect::read_regions_with(pid, &m.hints)?,
            None => inspect::read_regions(pid)?,
        };
        let regions = plans.iter().map(|p| &p.region);
        objects::unlinked::add_mapped(&mut files.objects, pid.as_raw(), regions);
        inspect::leave_to_files(&mut plans, &objects::unlinked::mapped_names(&files.objects));
        if let Some(m) = tracker.as_deref_mut() {
            m.tracker.scan()?;
        }
        let fork = snapshots && worth_a_snapshot(&plans, tracker.as_deref(), pid);
        let parent = fork.then_some(SnapshotParent::Target(pid));
        let mut captured = capture::capture_threads(frozen, &mem, parent)?;
        let mut process = inspect::read_process(pid)?;
        process.mm.brk = captured.brk;
        process.pending_signals = std::mem::take(&mut captured.process_pending);
        process.parent_death_signal = captured.flags.parent_death_signal;
        process.child_subreaper = captured.flags.child_subreaper;
        process.attributes = std::mem::take(&mut captured.attributes);
        process.tree = *links;
        let mut by_tracker = Vec::new();
        if let Some(m) = tracker.as_deref_mut() {
            // After the capture, as for the root (rseq areas).
            m.tracker.scan()?;
            by_tracker = tracked_plans(&plans, Some(&*m.tracker));
            m.ranges = by_tracker
                .iter()
                .map(|&i| (plans[i].region.start, plans[i].region.end))
                .collect();
            m.tracker.index.retain_within(&m.ranges);
        }
        let snapshot = captured.snapshot.take();
        let (later, now) = later_and_now(&plans, &by_tracker, snapshot.as_ref())?;
        let pagemap = PageMap::open(pid)?;
        let mut sink = PageSink::new(None, false);
        dump_regions(&pagemap, &mem, &mut plans, &now, &mut sink, writer)?;
        if snapshot.is_none()
            && let Some(m) = tracker
        {
            precopy::read_pending(m.tracker, &mem, writer, true)?;
        }
        dumps.push(MemberDump {
            image: MemberProcess {
                process,
                threads: captured.threads,
                regions: Vec::new(),
                fds: files.fds.remove(&pid.as_raw()).unwrap_or_default(),
                signals: captured.signals,
            },
            plans,
            by_tracker,
            later,
            snapshot,
        });
    }
    // Tracked before the freeze but gone since: nothing of theirs is in the image.
    tracked.retain(|m| members.live.iter().any(|(f, _)| f.pid == m.pid));
    Ok(dumps)
}

/// Whether forking member `pid` saves the job more stop than it costs (~25 ms per GiB
/// mapped): its pre-copy did not converge, or much is left to read. An untracked member's
/// resident memory stands for what it has to read (its smaps would take long to read
/// while the job is stopped).
fn worth_a_snapshot(plans: &[RegionPlan], tracker: Option<&TrackedMember>, pid: Pid) -> bool {
    let Some(m) = tracker else {
        return precopy::resident_bytes(pid) > precopy::SNAPSHOT_MIN_BYTES;
    };
    if m.snapshot_wanted {
        return true;
    }
    let tracked = tracked_plans(plans, Some(&*m.tracker));
    untracked_bytes(plans, &tracked, &m.hints) + m.tracker.index.pending_bytes()
        > precopy::SNAPSHOT_MIN_BYTES
}

/// Reads what the members' snapshots hold (the job runs again meanwhile) and completes
/// their images. Returns them, and how long the members were stopped again to reap their
/// snapshots.
pub fn finish(
    dumps: Vec<MemberDump>,
    writer: &mut ImageWriter,
    tracked: &mut [TrackedMember],
) -> Result<(Vec<MemberProcess>, Duration), DumpError> {
    let mut images = Vec::with_capacity(dumps.len());
    let mut stopped = Duration::ZERO;
    for mut dump in dumps {
        let pid = dump.pid();
        let mut tracker = tracked.iter_mut().find(|m| m.pid == pid);
        if let Some(snap) = dump.snapshot.take() {
            let mut sink = PageSink::new(None, false);
            let result = dump_regions(
                &snap.pagemap,
                &snap.mem,
                &mut dump.plans,
                &dump.later,
                &mut sink,
                writer,
            )
            .and_then(|()| match tracker.as_deref_mut() {
                Some(m) => precopy::read_pending(m.tracker, &snap.mem, writer, true),
                None => Ok(()),
            });
            stopped += snap.end();
            result?;
        }
        if let Some(m) = tracker {
            tracked_runs(m.tracker, &mut dump.plans, &dump.by_tracker)?;
        }
        dump.image.regions = dump
            .plans
            .into_iter()
            .map(|p| MemoryRegion {
                hashed: false,
                ..p.region
            })
            .collect();
        images.push(dump.image);
    }
    Ok((images, stopped))
}
