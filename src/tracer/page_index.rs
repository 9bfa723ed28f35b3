//! Which pages of write-tracked memory hold data, and where each one's contents are: in an
//! image already written, in the image being written, or still to be read from the target.
//! Kept as runs of pages, so its size follows how scattered the writes are, not how big
//! the target is.

use crate::image::format::PageRun;
use std::collections::{BTreeMap, BTreeSet};

/// Where a page's contents are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSource {
    /// Written (or never read) since it was last read: read it before the image is done.
    Pending,
    /// In `pages.bin` of image `image` (None: the image being written) at `offset`.
    Stored { image: Option<u64>, offset: u64 },
    /// Stored in the image being written at `offset`, and written since: read it again
    /// into the same place (an image holds each page once).
    Stale { offset: u64 },
}

impl PageSource {
    /// The source of the page `bytes` further on in the same run.
    fn advanced(self, bytes: u64) -> PageSource {
        match self {
            PageSource::Pending => PageSource::Pending,
            PageSource::Stored { image, offset } => PageSource::Stored {
                image,
                offset: offset + bytes,
            },
            PageSource::Stale { offset } => PageSource::Stale {
                offset: offset + bytes,
            },
        }
    }

    /// The source of a page of this run once it was written again.
    fn written(self) -> PageSource {
        match self {
            PageSource::Stored {
                image: None,
                offset,
            }
            | PageSource::Stale { offset } => PageSource::Stale { offset },
            PageSource::Pending | PageSource::Stored { .. } => PageSource::Pending,
        }
    }
}

/// A range to read (again) before the image is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRun {
    pub addr: u64,
    pub len: u64,
    /// Where the image being written holds an older copy, to be replaced.
    pub slot: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    len: u64,
    source: PageSource,
}

/// Runs keyed by their first page's address; runs never overlap.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PageIndex {
    runs: BTreeMap<u64, Run>,
}

impl PageIndex {
    /// Pages `[start, end)` hold no data any more (or are no longer tracked).
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.split_at(start);
        self.split_at(end);
        let inside: Vec<u64> = self.runs.range(start..end).map(|(&a, _)| a).collect();
        for addr in inside {
            self.runs.remove(&addr);
        }
    }

    /// Pages `[start, end)` hold data whose bytes are at `source` (advancing page by page).
    pub fn set(&mut self, start: u64, end: u64, source: PageSource) {
        if start >= end {
            return;
        }
        self.remove(start, end);
        self.runs.insert(
            start,
            Run {
                len: end - start,
                source,
            },
        );
        self.merge_with_next(start);
        if let Some((&prev, _)) = self.runs.range(..start).next_back() {
            self.merge_with_next(prev);
        }
    }

    /// Pages `[start, end)` were written and hold data: each must be read again, into its
    /// slot of the image being written if it has one there.
    pub fn mark_written(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.split_at(start);
        self.split_at(end);
        let mut pieces = Vec::new();
        let mut at = start;
        for (&addr, run) in self.runs.range(start..end) {
            if addr > at {
                pieces.push((at, addr, PageSource::Pending));
            }
            pieces.push((addr, addr + run.len, run.source.written()));
            at = addr + run.len;
        }
        if at < end {
            pieces.push((at, end, PageSource::Pending));
        }
        for (from, to, source) in pieces {
            self.set(from, to, source);
        }
    }

    /// Every page with data becomes pending: the next image stores all of them itself.
    pub fn mark_all_pending(&mut self) {
        let all: Vec<(u64, u64)> = self.runs.iter().map(|(&a, r)| (a, a + r.len)).collect();
        for (start, end) in all {
            self.set(start, end, PageSource::Pending);
        }
    }

    /// Keeps only pages inside `ranges` (sorted, disjoint).
    pub fn retain_within(&mut self, ranges: &[(u64, u64)]) {
        let mut gaps = Vec::new();
        let mut at = 0;
        for &(start, end) in ranges {
            gaps.push((at, start));
            at = end;
        }
        gaps.push((at, u64::MAX));
        for (start, end) in gaps {
            self.remove(start, end);
        }
    }

    /// Ranges still to be read, in address order.
    pub fn pending(&self) -> Vec<PendingRun> {
        self.runs
            .iter()
            .filter_map(|(&addr, r)| {
                let slot = match r.source {
                    PageSource::Pending => None,
                    PageSource::Stale { offset } => Some(offset),
                    PageSource::Stored { .. } => return None,
                };
                Some(PendingRun {
                    addr,
                    len: r.len,
                    slot,
                })
            })
            .collect()
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending().iter().map(|r| r.len).sum()
    }

    /// Bytes of every page with data.
    pub fn data_bytes(&self) -> u64 {
        self.runs.values().map(|r| r.len).sum()
    }

    /// The stored runs inside `[start, end)`, as an image lists them. None if a page there
    /// is still pending.
    pub fn image_runs(&self, start: u64, end: u64) -> Option<Vec<PageRun>> {
        let mut out = Vec::new();
        let first = self
            .runs
            .range(..start)
            .next_back()
            .filter(|(a, r)| *a + r.len > start)
            .map(|(&a, _)| a)
            .unwrap_or(start);
        for (&addr, run) in self.runs.range(first..end) {
            let from = addr.max(start);
            let to = (addr + run.len).min(end);
            match run.source.advanced(from - addr) {
                PageSource::Pending | PageSource::Stale { .. } => return None,
                PageSource::Stored { image, offset } => out.push(PageRun {
                    addr: from,
                    len: to - from,
                    offset,
                    image,
                }),
            }
        }
        Some(out)
    }

    /// Images other than the one being written that stored runs refer to.
    pub fn referenced_images(&self) -> BTreeSet<u64> {
        self.runs
            .values()
            .filter_map(|r| match r.source {
                PageSource::Stored { image, .. } => image,
                PageSource::Pending | PageSource::Stale { .. } => None,
            })
            .collect()
    }

    /// The image being written was committed as `seq`: its runs now refer to it by name.
    pub fn committed_as(&mut self, seq: u64) {
        for run in self.runs.values_mut() {
            if let PageSource::Stored { image, .. } = &mut run.source
                && image.is_none()
            {
                *image = Some(seq);
            }
        }
    }

    /// Splits the run containing `addr` (if any) so that a run starts at `addr`.
    fn split_at(&mut self, addr: u64) {
        let Some((&start, &run)) = self.runs.range(..addr).next_back() else {
            return;
        };
        if start + run.len <= addr {
            return;
        }
        let head = addr - start;
        self.runs.insert(
            start,
            Run {
                len: head,
                source: run.source,
            },
        );
        self.runs.insert(
            addr,
            Run {
                len: run.len - head,
                source: run.source.advanced(head),
            },
        );
    }

    /// Joins the run at `addr` with the one right after it when that one continues it in
    /// memory and in its source.
    fn merge_with_next(&mut self, addr: u64) {
        let Some(&run) = self.runs.get(&addr) else {
            return;
        };
        let next_addr = addr + run.len;
        let Some(&next) = self.runs.get(&next_addr) else {
            return;
        };
        if run.source.advanced(run.len) == next.source {
            self.runs.remove(&next_addr);
            self.runs.insert(
                addr,
                Run {
                    len: run.len + next.len,
                    source: run.source,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::format::PAGE_SIZE;

    const P: u64 = PAGE_SIZE;

    fn stored(image: Option<u64>, offset: u64) -> PageSource {
        PageSource::Stored { image, offset }
    }

    fn ranges(idx: &PageIndex) -> Vec<(u64, u64)> {
        idx.pending().iter().map(|r| (r.addr, r.len)).collect()
    }

    #[test]
    fn pages_written_again_keep_their_slot_in_the_image_being_written() {
        let mut idx = PageIndex::default();
        idx.set(0, 4 * P, stored(Some(1), 0));
        idx.set(4 * P, 8 * P, stored(None, 40 * P));
        idx.mark_written(2 * P, 10 * P);
        let view: Vec<(u64, u64, Option<u64>)> = idx
            .pending()
            .iter()
            .map(|r| (r.addr / P, r.len / P, r.slot.map(|s| s / P)))
            .collect();
        assert_eq!(
            view,
            vec![(2, 2, None), (4, 4, Some(40)), (8, 2, None)],
            "a parent's page is read anew, one of this image goes back to its slot"
        );
        idx.set(5 * P, 6 * P, stored(None, 41 * P));
        idx.mark_written(5 * P, 6 * P);
        assert_eq!(idx.pending()[1].slot, Some(40 * P), "still one slot run");
        assert_eq!(idx.pending_bytes(), 8 * P);
    }

    #[test]
    fn setting_a_middle_range_splits_and_advances_offsets() {
        let mut idx = PageIndex::default();
        idx.set(0, 10 * P, stored(Some(1), 0));
        idx.set(3 * P, 5 * P, PageSource::Pending);
        assert_eq!(ranges(&idx), vec![(3 * P, 2 * P)]);
        assert_eq!(
            idx.image_runs(0, 10 * P),
            None,
            "pending pages block the image"
        );
        idx.set(3 * P, 5 * P, stored(None, 0));
        let runs = idx.image_runs(0, 10 * P).unwrap();
        let view: Vec<(u64, u64, u64, Option<u64>)> = runs
            .iter()
            .map(|r| (r.addr / P, r.len / P, r.offset / P, r.image))
            .collect();
        assert_eq!(
            view,
            vec![(0, 3, 0, Some(1)), (3, 2, 0, None), (5, 5, 5, Some(1))]
        );
    }

    #[test]
    fn continuous_runs_merge_back() {
        let mut idx = PageIndex::default();
        idx.set(0, 4 * P, stored(None, 0));
        idx.set(4 * P, 8 * P, stored(None, 4 * P));
        idx.set(8 * P, 9 * P, stored(None, 0));
        assert_eq!(idx.runs.len(), 2);
        idx.remove(2 * P, 3 * P);
        idx.set(2 * P, 3 * P, stored(None, 2 * P));
        assert_eq!(
            idx.runs.len(),
            2,
            "the hole filled from the same source merges"
        );
        assert_eq!(idx.data_bytes(), 9 * P);
    }

    #[test]
    fn image_runs_clip_to_the_region_and_commit_names_the_image() {
        let mut idx = PageIndex::default();
        idx.set(0, 8 * P, stored(None, 16 * P));
        let runs = idx.image_runs(2 * P, 6 * P).unwrap();
        assert_eq!(
            (runs[0].addr, runs[0].len, runs[0].offset),
            (2 * P, 4 * P, 18 * P)
        );
        idx.committed_as(7);
        assert_eq!(idx.referenced_images(), BTreeSet::from([7]));
        idx.mark_all_pending();
        assert_eq!(ranges(&idx), vec![(0, 8 * P)]);
        assert!(idx.referenced_images().is_empty());
    }

    #[test]
    fn retain_within_drops_everything_outside() {
        let mut idx = PageIndex::default();
        idx.set(0, 100 * P, PageSource::Pending);
        idx.retain_within(&[(10 * P, 20 * P), (50 * P, 60 * P)]);
        assert_eq!(ranges(&idx), vec![(10 * P, 10 * P), (50 * P, 10 * P)]);
    }
}
