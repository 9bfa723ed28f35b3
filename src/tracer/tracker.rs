//! Write tracking: which pages of the target changed since the last look, without freezing
//! it and without reading its memory.
//!
//! The supervisor holds a userfaultfd of the target's address space in asynchronous
//! write-protect mode (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7): the kernel resolves the fault of
//! the first write to a protected page by itself, in the target, and only clears the
//! page's protection. `PAGEMAP_SCAN` then reports the unprotected ("written") pages and
//! protects them again in one atomic walk. With `UFFD_FEATURE_WP_UNPOPULATED`, a page that
//! lost its contents (`MADV_DONTNEED`) or got some for the first time also reads as
//! written, so every change of contents shows.
//!
//! The uffd is created inside the frozen target (it belongs to the address space of the
//! process that creates it), copied out with `pidfd_getfd` and closed there again: the
//! target's fd table ends as it was. `UFFD_USER_MODE_ONLY` needs no privilege in the target;
//! asynchronous write protection never delivers a fault to user space anyway.
//!
//! Only private anonymous writable regions are tracked, and only those whose page tables
//! stay small (tracking installs markers in every unpopulated page of a region): a huge
//! sparse reservation is left to the content-hashed dump. DMA into pinned pages (RDMA,
//! io_uring fixed buffers) bypasses the page tables and is not seen, as with soft-dirty.

use super::inspect::{FlagHints, RegionPlan, StorePolicy};
use super::page_index::{PageIndex, PageSource};
use super::remote::{RemoteError, RemoteThread};
use super::sys::{self, PageRegion, ScanRequest};
use crate::image::format::{Advice, Backing, MemoryRegion};
use nix::errno::Errno;
use nix::unistd::Pid;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("cannot create a userfaultfd in process {pid}")]
    Create {
        pid: i32,
        #[source]
        source: RemoteError,
    },
    #[error("write tracking is not available ({what})")]
    Unavailable {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "process {pid} pinned memory for device I/O during the checkpoint; a device may have \
         written it unseen"
    )]
    Pinned { pid: i32 },
    #[error("process {pid} replaced its address space (exec) during the checkpoint")]
    Replaced { pid: i32 },
    #[error("scanning written pages of {start:#x}..{end:#x} failed")]
    Scan {
        start: u64,
        end: u64,
        #[source]
        source: Errno,
    },
}

const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// A region smaller than this is always tracked; a larger one only while at least a
/// quarter of it is resident (its markers then cost under 1 % of its memory).
const ALWAYS_TRACKED_BYTES: u64 = 64 << 20;

/// Page regions asked of the kernel per scan call (72 KiB).
const SCAN_BATCH: usize = 3072;

/// Whether a region can be write-tracked cheaply: private anonymous writable memory, not
/// (to be) backed by transparent huge pages, whose markers cost little. `hints` tell its
/// memory use.
pub fn trackable(plan: &RegionPlan, hints: &FlagHints) -> bool {
    let r = &plan.region;
    let private_anon = r.backing == Backing::Anonymous
        && !r.shared
        && plan.store == StorePolicy::PrivateData
        && plan.flags_known;
    let small_enough = r.len() <= ALWAYS_TRACKED_BYTES
        || hints
            .resident((r.start, r.end))
            .is_some_and(|rss| rss.saturating_mul(4) >= r.len());
    private_anon && r.prot.write && small_enough && !huge_paged(plan, hints)
}

/// The kernel splits a huge page at the first write under asynchronous write protection,
/// and khugepaged does not merge write-protected pages back: tracking would cost the target
/// its huge pages for good. Such regions are dumped from fork-snapshots instead (whose copy
/// of a huge page's page table entry is cheap).
fn huge_paged(plan: &RegionPlan, hints: &FlagHints) -> bool {
    let r = &plan.region;
    r.advice.contains(&Advice::HugePage) || hints.huge((r.start, r.end)).unwrap_or(0) > 0
}

/// How a newly registered range's pages start out.
#[derive(Clone, Copy)]
enum Protection {
    /// Unprotected: the next scan reports every page with data (and protects it).
    Cleared,
    /// Protected: only pages written from now on are reported.
    Set,
}

/// Whether `pid` has pages pinned for device I/O (`VmPin` in `/proc/PID/status`).
pub fn pins_memory(pid: Pid) -> bool {
    procfs::process::Process::new(pid.as_raw())
        .and_then(|p| p.status())
        .is_ok_and(|s| s.vmpin.unwrap_or(0) > 0)
}

/// The tracking state of one target, kept by its supervisor from one checkpoint to the
/// next.
pub struct WriteTracker {
    pid: Pid,
    uffd: OwnedFd,
    pagemap: File,
    /// Registered ranges, sorted and disjoint, each tracked without a break since it was
    /// registered.
    ranges: Vec<(u64, u64)>,
    /// Pages with data in the tracked ranges and where their contents are.
    pub index: PageIndex,
    /// The image `index` describes (seq, manifest blake3): the last one committed with it.
    /// None: no image holds what the index refers to, the next one reads everything.
    epoch: Option<(u64, String)>,
    scan_out: Vec<PageRegion>,
    /// How fast a pre-copy pass read this target's pages last time (bytes per second).
    pub read_rate: Option<f64>,
}

impl WriteTracker {
    /// Creates the uffd through a thread of the frozen target.
    pub fn create(pid: Pid, remote: &mut RemoteThread) -> Result<WriteTracker, TrackError> {
        let create = |source| TrackError::Create {
            pid: pid.as_raw(),
            source,
        };
        let flags = libc::O_CLOEXEC as u64 | libc::O_NONBLOCK as u64 | sys::UFFD_USER_MODE_ONLY;
        let fd = remote
            .checked("userfaultfd", libc::SYS_userfaultfd, &[flags])
            .map_err(create)?;
        let copied =
            sys::pidfd_open(pid).and_then(|pidfd| sys::pidfd_getfd(pidfd.as_fd(), fd as i32));
        remote
            .checked("close(userfaultfd)", libc::SYS_close, &[fd])
            .map_err(create)?;
        let uffd = copied.map_err(|source| TrackError::Unavailable {
            what: "pidfd_getfd",
            source,
        })?;
        let wanted = sys::UFFD_FEATURE_WP_ASYNC | sys::UFFD_FEATURE_WP_UNPOPULATED;
        let granted =
            sys::uffd_api(uffd.as_fd(), wanted).map_err(|source| TrackError::Unavailable {
                what: "UFFDIO_API with asynchronous write protection (Linux 6.7+)",
                source,
            })?;
        if granted & wanted != wanted {
            return Err(TrackError::Unavailable {
                what: "asynchronous write protection (Linux 6.7+)",
                source: Errno::ENOTSUP,
            });
        }
        let path = format!("/proc/{pid}/pagemap");
        let pagemap = File::open(&path).map_err(|source| TrackError::Open { path, source })?;
        Ok(WriteTracker {
            pid,
            uffd,
            pagemap,
            ranges: Vec::new(),
            index: PageIndex::default(),
            epoch: None,
            scan_out: vec![PageRegion::default(); SCAN_BATCH],
            read_rate: None,
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Registers every trackable region of `plans` not tracked yet, and removes any write
    /// protection its pages still carry, so that the first scan reports every page with data.
    /// Pages can carry protection from an earlier registration that the kernel dropped
    /// without clearing it: `mremap` of a registered region unregisters the VMA it lands in
    /// (merged with its neighbour, the neighbour too) but leaves its pages protected.
    pub fn register_new(&mut self, plans: &[RegionPlan], hints: &FlagHints) {
        for plan in plans.iter().filter(|p| huge_paged(p, hints)) {
            // Huge pages came (THP "always"): stop before the next scan protects them.
            let (start, end) = (plan.region.start, plan.region.end);
            let overlapping: Vec<(u64, u64)> = self
                .ranges
                .iter()
                .copied()
                .filter(|&(s, e)| s < end && start < e)
                .collect();
            for (s, e) in overlapping {
                self.drop_range(s, e);
            }
        }
        for (start, end) in self.untracked(plans, hints) {
            self.register(start, end, Protection::Cleared);
        }
    }

    /// Starts tracking a process restored from image `seq` (manifest hash `blake3`, memory
    /// `regions`) before it runs: its memory holds what the image's runs say and nothing
    /// else, so every page is protected now and the index refers to the image for each page
    /// with data. The next checkpoint can then be an increment over that image.
    pub fn adopt_image(
        &mut self,
        plans: &[RegionPlan],
        hints: &FlagHints,
        (seq, blake3): (u64, String),
        regions: &[MemoryRegion],
    ) {
        for (start, end) in self.untracked(plans, hints) {
            self.register(start, end, Protection::Set);
        }
        for run in regions.iter().flat_map(|r| &r.runs) {
            if self.covers(run.addr, run.addr + run.len) {
                let source = PageSource::Stored {
                    image: Some(run.image.unwrap_or(seq)),
                    offset: run.offset,
                };
                self.index.set(run.addr, run.addr + run.len, source);
            }
        }
        self.epoch = Some((seq, blake3));
    }

    /// The trackable regions of `plans` not tracked yet.
    fn untracked(&self, plans: &[RegionPlan], hints: &FlagHints) -> Vec<(u64, u64)> {
        plans
            .iter()
            .filter(|p| trackable(p, hints))
            .map(|p| (p.region.start, p.region.end))
            .filter(|&(start, end)| !self.covers(start, end))
            .collect()
    }

    /// Registers `[start, end)` and sets its pages' protection as `protection` says. A
    /// range the kernel refuses stays untracked.
    fn register(&mut self, start: u64, end: u64, protection: Protection) {
        let uffd = self.uffd.as_fd();
        let registered =
            sys::uffd_register_wp(uffd, start, end - start).and_then(|()| match protection {
                Protection::Cleared => sys::uffd_unprotect(uffd, start, end - start),
                Protection::Set => sys::uffd_protect(uffd, start, end - start),
            });
        match registered {
            Ok(()) => {
                self.index.remove(start, end);
                self.add_range(start, end);
            }
            Err(_) => {
                let _ = sys::uffd_unregister(uffd, start, end - start);
            }
        }
    }

    /// Whether `[start, end)` lies in a tracked range.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.ranges.iter().any(|&(s, e)| s <= start && end <= e)
    }

    fn add_range(&mut self, start: u64, end: u64) {
        self.ranges.push((start, end));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match merged.last_mut() {
                Some(last) if last.1 >= s => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.ranges = merged;
    }

    /// Reports pages written since the last scan and protects them again: each becomes
    /// pending in the index if it holds data now, or leaves the index if it became empty
    /// (zero). A range in which the target replaced a mapping (it is no longer registered
    /// throughout) is dropped, with what the index knew of it.
    ///
    /// A page pinned for device I/O (RDMA, io_uring fixed buffers) can be written by DMA
    /// after the scan protected it, without a fault: if any memory is pinned around the scan,
    /// the tracker cannot be trusted (`TrackError::Pinned`). A pin that starts and ends
    /// between two scans is seen: pinning for write faults the page in as written.
    ///
    /// After an exec the tracker's pagemap and uffd still name the old address space, where
    /// a scan finds nothing written: that is checked too (`TrackError::Replaced`).
    ///
    /// Returns the bytes written since the last scan (of pages that were written, whether
    /// they hold data now or not).
    pub fn scan(&mut self) -> Result<u64, TrackError> {
        self.still_valid()?;
        let written = self.scan_ranges()?;
        self.still_valid()?;
        Ok(written)
    }

    fn still_valid(&self) -> Result<(), TrackError> {
        let pid = self.pid.as_raw();
        if !self.same_address_space() {
            return Err(TrackError::Replaced { pid });
        }
        if pins_memory(self.pid) {
            return Err(TrackError::Pinned { pid });
        }
        Ok(())
    }

    /// Whether the address space the tracker follows is still the target's: the pagemap
    /// file pins the one it was opened on, and reads as empty once that one is gone.
    pub fn same_address_space(&self) -> bool {
        use std::os::unix::fs::FileExt;
        let mut entry = [0u8; 8];
        self.pagemap.read_at(&mut entry, 0).is_ok_and(|n| n == 8)
    }

    fn scan_ranges(&mut self) -> Result<u64, TrackError> {
        let mut written = 0;
        for (start, end) in self.ranges.clone() {
            match self.scan_range(start, end) {
                Ok(bytes) => written += bytes,
                Err(TrackError::Scan {
                    source: Errno::EPERM,
                    ..
                }) => self.drop_range(start, end),
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    fn scan_range(&mut self, start: u64, end: u64) -> Result<u64, TrackError> {
        let mut written = 0;
        let mut req = ScanRequest {
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            start,
            end,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO,
            ..ScanRequest::default()
        };
        while req.start < end {
            let (filled, walk_end) =
                sys::pagemap_scan(self.pagemap.as_fd(), &req, &mut self.scan_out)
                    .map_err(|source| TrackError::Scan { start, end, source })?;
            for region in &self.scan_out[..filled] {
                written += region.end - region.start;
                let data = region.categories & PAGE_IS_SWAPPED != 0
                    || region.categories & (PAGE_IS_PRESENT | PAGE_IS_PFNZERO) == PAGE_IS_PRESENT;
                if data {
                    self.index.mark_written(region.start, region.end);
                } else {
                    self.index.remove(region.start, region.end);
                }
            }
            if walk_end <= req.start {
                break;
            }
            req.start = walk_end;
        }
        Ok(written)
    }

    fn drop_range(&mut self, start: u64, end: u64) {
        let _ = sys::uffd_unregister(self.uffd.as_fd(), start, end - start);
        self.ranges.retain(|&r| r != (start, end));
        self.index.remove(start, end);
    }

    /// Whether the index describes image `seq` with manifest `blake3`: then a new image
    /// may refer to it for every page not written since.
    pub fn describes(&self, seq: u64, blake3: &str) -> bool {
        self.epoch
            .as_ref()
            .is_some_and(|(s, h)| *s == seq && h == blake3)
    }

    /// The next image stores every tracked page itself.
    pub fn start_full(&mut self) {
        self.index.mark_all_pending();
    }

    /// The image being written was committed as `seq` with manifest hash `blake3`, and the
    /// index now describes it; pages outside `tracked` (the tracked regions that image
    /// lists) are forgotten.
    pub fn committed(&mut self, seq: u64, blake3: String, tracked: &[(u64, u64)]) {
        self.index.retain_within(tracked);
        self.index.committed_as(seq);
        self.epoch = Some((seq, blake3));
    }

    /// The image being written failed: what the index says of it is void, so the next
    /// image reads every tracked page again.
    pub fn abandoned(&mut self) {
        self.epoch = None;
        self.index.mark_all_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::format::{MemoryRegion, Prot};

    fn plan(len: u64, backing: Backing, write: bool) -> RegionPlan {
        RegionPlan {
            region: MemoryRegion {
                start: 1 << 30,
                end: (1 << 30) + len,
                prot: Prot {
                    read: true,
                    write,
                    exec: false,
                },
                shared: false,
                backing,
                name: String::new(),
                grows_down: false,
                advice: Vec::new(),
                runs: Vec::new(),
                shared_object: None,
                hashed: true,
            },
            store: StorePolicy::PrivateData,
            flags_known: true,
            page_hashes: Vec::new(),
        }
    }

    #[test]
    fn only_writable_private_anonymous_memory_that_is_mostly_resident_is_tracked() {
        let gib = 1 << 30;
        let hints = |p: &RegionPlan, resident: u64, huge: u64| {
            FlagHints::for_tests(p.region.start, p.region.end, resident, huge)
        };
        let small = plan(8 << 20, Backing::Anonymous, true);
        assert!(trackable(&small, &hints(&small, 0, 0)));
        let read_only = plan(8 << 20, Backing::Anonymous, false);
        assert!(!trackable(&read_only, &hints(&read_only, 0, 0)));
        let shared = plan(8 << 20, Backing::SharedAnonymous, true);
        assert!(!trackable(&shared, &hints(&shared, 0, 0)));
        let big = plan(gib, Backing::Anonymous, true);
        assert!(trackable(&big, &hints(&big, gib / 2, 0)));
        let sparse = plan(64 * gib, Backing::Anonymous, true);
        assert!(
            !trackable(&sparse, &hints(&sparse, gib, 0)),
            "a sparse reservation would cost page tables for every page"
        );
        assert!(
            !trackable(&big, &FlagHints::for_tests(0, 0, 0, 0)),
            "no hints"
        );
        assert!(
            !trackable(&big, &hints(&big, gib, 2 << 20)),
            "write protection would split its huge pages"
        );
        let mut advised = plan(8 << 20, Backing::Anonymous, true);
        advised.region.advice.push(Advice::HugePage);
        assert!(!trackable(&advised, &hints(&advised, 0, 0)));
    }
}
