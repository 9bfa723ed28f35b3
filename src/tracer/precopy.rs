//! Pre-copy: with write tracking, a checkpoint reads the target's memory while it runs,
//! then reads again only what was written meanwhile, until little is left; only that rest
//! is read while the target is frozen. Live migration of virtual machines works this way.
//!
//! An increment over the image the tracker describes reads only pages written since that
//! image; a full image reads every page with data once more.

use super::dump::{Clock, DumpError};
use super::freeze::Frozen;
use super::inspect::{self, FlagHints, RegionPlan};
use super::memory::ProcessMemory;
use super::page_index::{PageSource, PendingRun};
use super::pages::{PageSink, ParentPages, batches};
use super::remote::RemoteThread;
use super::tracker::{TrackError, WriteTracker, pins_memory};
use crate::image::format::Manifest;
use crate::image::writer::ImageWriter;
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// Pre-copying stops once a scan leaves at most this much to read: reading it while frozen
/// takes about a millisecond.
const FINAL_PENDING_BYTES: u64 = 4 << 20;

/// Pre-copy passes at most, the first one included.
const MAX_PASSES: usize = 6;

/// How long the write rate is measured before the first pass.
const RATE_PROBE: Duration = Duration::from_millis(20);

/// The read rate assumed before a pass measured one: what a modest disk sustains.
const ASSUMED_READ_RATE: f64 = 1e9;

/// Pre-copying goes on only while the target writes at most this share of what a pass
/// reads in the same time: every page written during a pass is read (and written to disk)
/// once more by the next.
const MAX_DIRTY_SHARE: f64 = 0.05;

/// Below this much memory left to read at the freeze, a fork-snapshot (whose page table
/// copy costs ~20 ms per GiB mapped) is not worth it.
pub const SNAPSHOT_MIN_BYTES: u64 = 32 << 20;

/// An increment in which more than this share of the pages changed is written as a full
/// image instead.
const FULL_INSTEAD_OF_INCREMENT: f64 = 0.8;

/// Members of the job with less resident memory than this are not write-tracked: reading
/// them while frozen costs less than a tracker (and short-lived step programs come and go
/// between checkpoints).
pub const MEMBER_TRACKING_MIN_BYTES: u64 = 16 << 20;

/// Write tracking of a supervised job, kept from one checkpoint to the next: its root's,
/// and that of each other process with enough memory to be worth it.
#[derive(Default)]
pub struct Tracking {
    root: ProcessTracking,
    members: std::collections::BTreeMap<i32, ProcessTracking>,
}

impl Tracking {
    /// Tracking that goes on with `tracker` (the root's), made when the job was restored.
    pub fn adopted(tracker: WriteTracker) -> Tracking {
        Tracking {
            root: ProcessTracking::adopted(tracker),
            members: Default::default(),
        }
    }

    /// The root's tracker, see [`ProcessTracking::ready`].
    pub fn ready(&mut self, pid: Pid, stopped: &mut Duration) -> Option<&mut WriteTracker> {
        self.root.ready(pid, stopped)
    }

    /// The root's tracker (see [`Tracking::ready`]) and those of the job's other processes
    /// (`members`, running) that are worth one, created now where needed; the trackers of
    /// processes gone are dropped.
    pub fn all_ready(
        &mut self,
        root: Pid,
        members: &[Pid],
        stopped: &mut Duration,
    ) -> (Option<&mut WriteTracker>, Vec<(Pid, &mut WriteTracker)>) {
        let root = self.root.ready(root, stopped);
        let members = members_ready(&mut self.members, members, stopped);
        (root, members)
    }

    /// Forgets every tracker after an error they cannot recover from; the next checkpoint
    /// starts new ones.
    pub fn reset(&mut self) {
        self.root.reset();
        self.members.clear();
    }
}

fn members_ready<'a>(
    trackers: &'a mut std::collections::BTreeMap<i32, ProcessTracking>,
    members: &[Pid],
    stopped: &mut Duration,
) -> Vec<(Pid, &'a mut WriteTracker)> {
    trackers.retain(|pid, _| members.iter().any(|m| m.as_raw() == *pid));
    for &pid in members {
        if resident_bytes(pid) >= MEMBER_TRACKING_MIN_BYTES {
            trackers.entry(pid.as_raw()).or_default();
        }
    }
    trackers
        .iter_mut()
        .filter_map(|(&pid, t)| {
            let pid = Pid::from_raw(pid);
            t.ready(pid, stopped).map(|t| (pid, t))
        })
        .collect()
}

/// Resident memory of `pid` (`/proc/PID/statm`), 0 if it is gone.
pub fn resident_bytes(pid: Pid) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * crate::image::format::PAGE_SIZE)
}

/// Write tracking of one process, kept from one checkpoint to the next.
#[derive(Default)]
pub struct ProcessTracking {
    tracker: Option<WriteTracker>,
    /// Tracking failed to start (old kernel, no userfaultfd): not tried again.
    unavailable: bool,
    /// The note about pinned memory was printed.
    pinned_noted: bool,
}

impl ProcessTracking {
    /// Tracking that goes on with `tracker`, made when the target was restored.
    pub fn adopted(tracker: WriteTracker) -> ProcessTracking {
        ProcessTracking {
            tracker: Some(tracker),
            ..ProcessTracking::default()
        }
    }

    /// The tracker of `pid`, created at first use (supervisors create it when they start):
    /// that takes a short stop of the target of its own, added to `stopped`. None (after a
    /// note) if tracking is not possible.
    pub fn ready(&mut self, pid: Pid, stopped: &mut Duration) -> Option<&mut WriteTracker> {
        if self
            .tracker
            .as_ref()
            .is_some_and(|t| t.pid() != pid || !t.same_address_space())
        {
            // Another process, or the same one after an exec.
            self.tracker = None;
        }
        if pins_memory(pid) {
            // A device may have written pinned pages (RDMA, io_uring fixed buffers)
            // without a page-table write: what the tracker saw cannot be trusted.
            self.tracker = None;
            if !std::mem::replace(&mut self.pinned_noted, true) {
                crate::info!(
                    "note: process {pid} has memory pinned for device I/O (VmPin); \
                     its checkpoints compare page contents instead of tracking writes"
                );
            }
            return None;
        }
        if self.tracker.is_none() && !self.unavailable {
            super::capture::prepare();
            let began = Instant::now();
            let created = start_tracker(pid);
            *stopped += began.elapsed();
            match created {
                Ok(t) => self.tracker = Some(t),
                Err(DumpError::Track(e)) => {
                    self.unavailable = true;
                    crate::info!(
                        "note: write tracking unavailable ({}); checkpoints use \
                         fork-snapshots instead",
                        crate::error_chain(&e)
                    );
                }
                // The target could not be stopped just now (it is exiting, or a debugger
                // holds it): the checkpoint says so itself; tracking is tried again later.
                Err(_) => {}
            }
        }
        self.tracker.as_mut()
    }

    /// Forgets the tracker after an error it cannot recover from (the target exec'd, say);
    /// the next checkpoint starts a new one.
    pub fn reset(&mut self) {
        self.tracker = None;
    }
}

/// Tracks the writes of a process restored from the image `manifest` describes (whose
/// hash is `blake3`), set up through `remote` (its main thread) while no thread of it has
/// run yet; `stub` is the restorer's area, unmapped before the process runs. The first checkpoint after the restore can then be an
/// increment over the image instead of a full one.
pub fn track_restored(
    pid: Pid,
    remote: &mut RemoteThread,
    manifest: &Manifest,
    blake3: String,
    stub: (u64, u64),
) -> Result<WriteTracker, DumpError> {
    let hints = inspect::flag_hints(pid)?;
    let plans: Vec<RegionPlan> = inspect::read_regions_with(pid, &hints)?
        .into_iter()
        .filter(|p| p.region.end <= stub.0 || stub.1 <= p.region.start)
        .collect();
    let mut tracker = WriteTracker::create(pid, remote)?;
    tracker.adopt_image(&plans, &hints, (manifest.seq, blake3), &manifest.regions);
    Ok(tracker)
}

fn start_tracker(pid: Pid) -> Result<WriteTracker, DumpError> {
    let mut frozen = Frozen::freeze(pid)?;
    let mem = ProcessMemory::open(pid)?;
    let gadget = super::capture::find_syscall_gadget(&mem, pid)?;
    let mut lead = RemoteThread::new(pid, gadget)?;
    let tracker = WriteTracker::create(pid, &mut lead);
    if let Some(sig) = lead.finish()? {
        frozen.hold_signal(pid, sig);
    }
    frozen.release().map_err(super::freeze::FreezeError::from)?;
    Ok(tracker?)
}

impl From<TrackError> for DumpError {
    fn from(e: TrackError) -> Self {
        DumpError::Track(e)
    }
}

/// What the checkpoint knows before the freeze.
pub struct Before<'a> {
    /// The map as it was just before.
    pub plans: &'a [RegionPlan],
    pub hints: &'a FlagHints,
    pub parent: Option<&'a ParentPages>,
    pub mem: &'a ProcessMemory,
}

/// How a checkpoint's pre-copy may go.
#[derive(Debug, Clone, Copy)]
pub struct PrecopyMode {
    /// Read while the target runs. A checkpoint that stops the target anyway makes no
    /// passes: they would only put the stop off.
    pub passes: bool,
    /// The rest may come from a fork-snapshot instead of the frozen target.
    pub can_snapshot: bool,
}

/// What the pre-copy found.
#[derive(Debug, Clone)]
pub struct Precopied {
    /// The target writes too fast for pre-copying to converge: the rest should come from
    /// a snapshot.
    pub snapshot_wanted: bool,
    /// Why, for `--json` and the log.
    pub why: String,
}

/// Registers new regions, decides between increment and full image, measures how fast the
/// target writes, and reads the tracked memory while the target runs, pass after pass, as
/// long as that converges: each pass must leave much less written behind than it read.
/// A target that writes faster than a twentieth of the read rate would only make the
/// passes read the same pages again and again; its memory is better taken from a
/// snapshot, whose freeze does not depend on how fast it writes.
pub fn before_freeze(
    tracker: &mut WriteTracker,
    before: &Before,
    writer: &mut ImageWriter,
    mode: PrecopyMode,
    clock: &mut Clock,
) -> Result<Precopied, DumpError> {
    tracker.register_new(before.plans, before.hints);
    let increment = before.parent.is_some_and(|p| {
        p.image_hash(p.seq)
            .is_some_and(|hash| tracker.describes(p.seq, hash))
    });
    if !increment {
        tracker.start_full();
    }
    tracker.scan()?;
    let mut why = String::new();
    let (changed, data) = (tracker.index.pending_bytes(), tracker.index.data_bytes());
    if increment && changed as f64 > FULL_INSTEAD_OF_INCREMENT * data as f64 {
        // An increment would save little and lengthen the chain every restore reads.
        tracker.start_full();
        why = format!(
            "full image ({} of {} changed since the last); ",
            human_bytes(changed),
            human_bytes(data)
        );
    }
    if !mode.passes {
        why.push_str("the target stays frozen: read while frozen");
        return Ok(Precopied {
            snapshot_wanted: false,
            why,
        });
    }
    let probe = Instant::now();
    std::thread::sleep(RATE_PROBE);
    // Bytes written in the last window (the probe, then each pass), and how fast.
    let mut written = tracker.scan()?;
    let mut dirty_rate = per_second(written, probe.elapsed());
    clock.lap("precopy.probe");
    let mut passes = 0;
    let mut last_read = u64::MAX;
    loop {
        let read_rate = tracker.read_rate.unwrap_or(ASSUMED_READ_RATE);
        // A small set of pages written over and over (a hot loop's arrays) makes a high
        // rate too, but pre-copy still ends with little left: only a rate that also leaves
        // more than the rest a freeze should read calls for a snapshot.
        let much_left = written > FINAL_PENDING_BYTES;
        if mode.can_snapshot && much_left && dirty_rate > MAX_DIRTY_SHARE * read_rate {
            why.push_str(&format!(
                "snapshot after {passes} pre-copy pass(es): the target writes {}/s, over \
                 {:.0}% of the {}/s a pass reads",
                human_bytes(dirty_rate as u64),
                MAX_DIRTY_SHARE * 100.0,
                human_bytes(read_rate as u64),
            ));
            return Ok(Precopied {
                snapshot_wanted: true,
                why,
            });
        }
        let pending = tracker.index.pending_bytes();
        // Done when little is left, or when another pass would not leave much less.
        if pending <= FINAL_PENDING_BYTES || pending > last_read / 2 || passes == MAX_PASSES {
            break;
        }
        let began = Instant::now();
        read_pending(tracker, before.mem, writer, false)?;
        let took = began.elapsed();
        tracker.read_rate = Some(per_second(pending, took));
        written = tracker.scan()?;
        dirty_rate = per_second(written, took);
        clock.lap("precopy.pass");
        passes += 1;
        last_read = pending;
    }
    // The freeze should not compete with the last batches' writes: let them finish, then
    // read what was written meanwhile.
    writer.drain();
    tracker.scan()?;
    read_pending(tracker, before.mem, writer, false)?;
    clock.lap("precopy.drain");
    why.push_str(&format!(
        "pre-copy: {passes} pass(es) while the target ran, which writes {}/s",
        human_bytes(dirty_rate as u64)
    ));
    Ok(Precopied {
        snapshot_wanted: false,
        why,
    })
}

fn per_second(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64().max(1e-6)
}

/// `n` bytes for people: "12.3 MiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// Reads every pending page from `mem` (the target, or its snapshot) into the image; a
/// page the image holds already (read in an earlier pass) goes back to its place. With
/// `all_or_error` false (the target is running), a page that cannot be read now stays
/// pending for the frozen pass, and what is read may be rewritten by a later pass.
pub fn read_pending(
    tracker: &mut WriteTracker,
    mem: &ProcessMemory,
    writer: &mut ImageWriter,
    all_or_error: bool,
) -> Result<(), DumpError> {
    let pending = tracker.index.pending();
    let mut fresh = Vec::new();
    let mut stale = Vec::new();
    for PendingRun { addr, len, slot } in pending {
        match slot {
            None => fresh.push((addr, len)),
            Some(slot) => stale.push((addr, len, slot)),
        }
    }
    crate::progress::add_total(fresh.iter().map(|r| r.1).sum());
    let mut sink = PageSink::new(None, false);
    if !all_or_error {
        sink = sink.revisable();
    }
    for batch in batches(&fresh) {
        let mut runs = Vec::new();
        match sink.store_batch(writer, mem, &batch, &mut runs, &mut Vec::new()) {
            Ok(()) => {}
            // Unreadable now; an image that cannot be written (a full disk) fails at once.
            Err(DumpError::Memory(_)) if !all_or_error => continue,
            Err(e) => return Err(e),
        }
        for run in runs {
            let stored = PageSource::Stored {
                image: None,
                offset: run.offset,
            };
            tracker.index.set(run.addr, run.addr + run.len, stored);
        }
    }
    reread_stale(tracker, mem, writer, &stale, all_or_error)
}

/// Reads pages written again since an earlier pass stored them, into their places.
fn reread_stale(
    tracker: &mut WriteTracker,
    mem: &ProcessMemory,
    writer: &mut ImageWriter,
    stale: &[(u64, u64, u64)],
    all_or_error: bool,
) -> Result<(), DumpError> {
    let ranges: Vec<(u64, u64)> = stale.iter().map(|r| (r.0, r.1)).collect();
    // Batches split runs: a piece's place is its run's, advanced.
    let slot_of = |addr: u64| {
        let (start, _, slot) = stale[stale.partition_point(|r| r.0 <= addr).saturating_sub(1)];
        slot + (addr - start)
    };
    for batch in batches(&ranges) {
        let total: usize = batch.iter().map(|r| r.1).sum();
        let mut buf = writer.take_buffer(total);
        buf.resize(total);
        match mem.read_ranges(&batch, buf.as_bytes_mut()) {
            Ok(()) => {}
            Err(_) if !all_or_error => continue,
            Err(e) => return Err(e.into()),
        }
        let places: Vec<(u64, u64)> = batch
            .iter()
            .map(|&(addr, len)| (slot_of(addr), len as u64))
            .collect();
        writer.rewrite(&places, buf)?;
        for (&(addr, len), &(offset, _)) in batch.iter().zip(&places) {
            let stored = PageSource::Stored {
                image: None,
                offset,
            };
            tracker.index.set(addr, addr + len as u64, stored);
        }
    }
    Ok(())
}
