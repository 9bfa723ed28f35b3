//! Keeping the target's transparent huge pages through a fork-snapshot checkpoint.
//!
//! While a snapshot child shares the target's memory, the target's first write to a huge
//! page copies it and splits the mapping into 4 KiB pages (the kernel does not copy a huge
//! page whole), and khugepaged merges them back only slowly (16 MiB per 10 s by default):
//! a job checkpointed every few minutes would run mostly without huge pages. So the ranges
//! mapped by huge pages are noted before the freeze, and once the snapshot is gone the
//! supervisor collapses them again (`process_madvise(MADV_COLLAPSE)`, Linux 6.1), while the
//! target runs. Only those ranges: collapsing others would fill their holes with memory.

use super::sys::{self, PageRegion, ScanRequest};
use nix::unistd::Pid;
use std::fs::File;
use std::os::fd::AsFd;

const PAGE_IS_HUGE: u64 = 1 << 6;
const MADV_COLLAPSE: i32 = 25;

/// Ranges of `regions` mapped by huge pages now (sorted, merged). Best effort: empty if the
/// kernel cannot tell.
pub fn mapped_huge(pid: Pid, regions: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let Ok(pagemap) = File::open(format!("/proc/{pid}/pagemap")) else {
        return Vec::new();
    };
    let mut out = vec![PageRegion::default(); 256];
    let mut found: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in regions {
        let mut req = ScanRequest {
            start,
            end,
            category_mask: PAGE_IS_HUGE,
            return_mask: PAGE_IS_HUGE,
            ..ScanRequest::default()
        };
        while req.start < end {
            let Ok((filled, walk_end)) = sys::pagemap_scan(pagemap.as_fd(), &req, &mut out) else {
                break;
            };
            for r in &out[..filled] {
                match found.last_mut() {
                    Some(last) if last.1 == r.start => last.1 = r.end,
                    _ => found.push((r.start, r.end)),
                }
            }
            if walk_end <= req.start {
                break;
            }
            req.start = walk_end;
        }
    }
    found
}

/// Collapses `ranges` of `pid` back into huge pages. Best effort: a range that cannot be
/// collapsed stays as it is (and khugepaged may still merge it later).
pub fn collapse(pid: Pid, ranges: &[(u64, u64)]) {
    let Ok(pidfd) = sys::pidfd_open(pid) else {
        return;
    };
    let lens: Vec<(u64, u64)> = ranges.iter().map(|&(s, e)| (s, e - s)).collect();
    for chunk in lens.chunks(sys::UIO_MAXIOV) {
        let _ = sys::process_madvise(pidfd.as_fd(), chunk, MADV_COLLAPSE);
    }
}
