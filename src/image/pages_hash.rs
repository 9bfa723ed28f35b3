//! The blake3 of `pages.bin` while it is written, when pages written early may be written
//! again in place later.
//!
//! A pre-copy reads pages while the job runs; a page the job writes again afterwards is read
//! once more and put where its first copy went, so that no page is stored twice in one
//! image. The file's hash (the one CHECKSUMS lists and `verify` recomputes by streaming the
//! file) must then describe the final bytes. blake3 is a tree over 1 KiB chunks: the hash of
//! any aligned power-of-two range of chunks (a subtree) can be computed on its own and
//! merged. Pages that may be rewritten are kept as one subtree each (a page is 4 chunks),
//! so a rewrite rehashes only that page; everything else is kept as the largest subtrees
//! its offsets allow, hashed at full speed. The root is merged at commit (~20 ms per GiB
//! of single pages, far less for large subtrees).

use super::format::PAGE_SIZE;
use super::writer::PARALLEL_HASH_BYTES;
use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use rayon::prelude::*;

#[allow(clippy::cast_possible_truncation)] // 4096 fits every usize
const PAGE: usize = PAGE_SIZE as usize;

/// A piece of the file: `len` bytes at `offset`, and the chaining values that stand for it.
#[derive(Debug, Clone)]
struct Leaf {
    offset: u64,
    len: u64,
    cvs: LeafCvs,
}

#[derive(Debug, Clone)]
enum LeafCvs {
    /// One subtree: `len` is a power of two no larger than the alignment of `offset` (but
    /// for the first page).
    Subtree(ChainingValue),
    /// Pages that may be rewritten, one subtree each (32 bytes per page: a GiB read while
    /// the job runs keeps 8 MiB of them).
    Pages(Vec<ChainingValue>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RewriteError {
    #[error("page data of {len} bytes is not a whole number of pages")]
    NotPages { len: usize },
    #[error("{offset:#x}+{len:#x} was not written as revisable pages")]
    NotRevisable { offset: u64, len: usize },
}

/// The hash of a file made of page-sized appends and page rewrites.
#[derive(Default)]
pub struct PagesHash {
    /// In offset order, covering `[0, len)` without gaps.
    leaves: Vec<Leaf>,
    len: u64,
    /// The first page's bytes: a file of one page has no interior node to merge, its hash
    /// is that page's root hash.
    first_page: Option<Box<[u8]>>,
}

impl PagesHash {
    /// Appends `data` (whole pages). With `revisable`, each page stays its own subtree and
    /// may be rewritten later.
    pub fn append(&mut self, data: &[u8], revisable: bool) -> Result<(), RewriteError> {
        if !data.len().is_multiple_of(PAGE) {
            return Err(RewriteError::NotPages { len: data.len() });
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.len == 0
            && let Some(first) = data.get(..PAGE)
        {
            self.first_page = Some(first.into());
        }
        let offset = self.len;
        if revisable {
            let cvs = hash_pieces(offset, data, &pages_of(offset, data.len()));
            self.leaves.push(Leaf {
                offset,
                len: data.len() as u64,
                cvs: LeafCvs::Pages(cvs),
            });
        } else {
            let pieces = subtrees_of(offset, data.len());
            let cvs = hash_pieces(offset, data, &pieces);
            self.leaves
                .extend(pieces.iter().zip(cvs).map(|(&(offset, len), cv)| Leaf {
                    offset,
                    len,
                    cvs: LeafCvs::Subtree(cv),
                }));
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Replaces the pages at `offset` with `data`; they must have been appended revisable.
    pub fn rewrite(&mut self, offset: u64, data: &[u8]) -> Result<(), RewriteError> {
        let not_revisable = RewriteError::NotRevisable {
            offset,
            len: data.len(),
        };
        if !data.len().is_multiple_of(PAGE) || !offset.is_multiple_of(PAGE_SIZE) {
            return Err(not_revisable);
        }
        let pages = pages_of(offset, data.len());
        // Where each page's value lives; nothing changes unless every page has one.
        let slots: Option<Vec<(usize, usize)>> =
            pages.iter().map(|&(at, _)| self.page_slot(at)).collect();
        let slots = slots.ok_or(not_revisable)?;
        let cvs = hash_pieces(offset, data, &pages);
        for ((leaf, page), cv) in slots.into_iter().zip(cvs) {
            if let LeafCvs::Pages(values) = &mut self.leaves[leaf].cvs {
                values[page] = cv;
            }
        }
        if offset == 0
            && let Some(page) = data.get(..PAGE)
        {
            self.first_page = Some(page.into());
        }
        Ok(())
    }

    /// The leaf and index of the revisable page at `offset`.
    fn page_slot(&self, offset: u64) -> Option<(usize, usize)> {
        let i = self
            .leaves
            .partition_point(|l| l.offset <= offset)
            .checked_sub(1)?;
        let leaf = &self.leaves[i];
        match &leaf.cvs {
            LeafCvs::Pages(_) if offset < leaf.offset + leaf.len => {
                #[allow(clippy::cast_possible_truncation)] // a page index within a leaf
                let page = ((offset - leaf.offset) / PAGE_SIZE) as usize;
                Some((i, page))
            }
            _ => None,
        }
    }

    /// The blake3 of the file as it is now.
    pub fn finalize(&self) -> blake3::Hash {
        match (self.len, &self.first_page) {
            (0, _) => blake3::hash(&[]),
            (len, Some(page)) if len == PAGE_SIZE => blake3::hash(page),
            _ => {
                let left = left_subtree_len(self.len);
                merge_subtrees_root(
                    &self.node(0, left),
                    &self.node(left, self.len - left),
                    Mode::Hash,
                )
            }
        }
    }

    /// The chaining value of the tree node covering `[offset, offset+len)`.
    fn node(&self, offset: u64, len: u64) -> ChainingValue {
        let i = self.leaves.partition_point(|l| l.offset <= offset) - 1;
        let leaf = &self.leaves[i];
        match &leaf.cvs {
            LeafCvs::Subtree(cv) if leaf.offset == offset && leaf.len == len => return *cv,
            LeafCvs::Pages(cvs) if len == PAGE_SIZE => {
                #[allow(clippy::cast_possible_truncation)] // a page index within a leaf
                return cvs[((offset - leaf.offset) / PAGE_SIZE) as usize];
            }
            _ => {}
        }
        let left = left_subtree_len(len);
        let (lcv, rcv) = if len > PARALLEL_NODE_BYTES {
            rayon::join(
                || self.node(offset, left),
                || self.node(offset + left, len - left),
            )
        } else {
            (
                self.node(offset, left),
                self.node(offset + left, len - left),
            )
        };
        merge_subtrees_non_root(&lcv, &rcv, Mode::Hash)
    }
}

/// Nodes over more than this are merged on all cores.
const PARALLEL_NODE_BYTES: u64 = 64 << 20;

/// `(offset, len)` of each page of `len` bytes at `offset`.
fn pages_of(offset: u64, len: usize) -> Vec<(u64, u64)> {
    (0..len / PAGE)
        .map(|i| (offset + (i * PAGE) as u64, PAGE_SIZE))
        .collect()
}

/// The largest subtrees covering `len` bytes at `offset`, in order. The first page of the
/// file is a subtree of its own: the file may end up being a single larger subtree, whose
/// root could not be merged from its own chaining value.
fn subtrees_of(mut offset: u64, len: usize) -> Vec<(u64, u64)> {
    let end = offset + len as u64;
    let mut out = Vec::new();
    while offset < end {
        let room = end - offset;
        let size = match offset {
            0 => PAGE_SIZE,
            _ => {
                let aligned = 1u64 << offset.trailing_zeros();
                aligned.min(1u64 << (63 - room.leading_zeros()))
            }
        };
        out.push((offset, size));
        offset += size;
    }
    out
}

/// Chaining values of `pieces` (ranges of the file, within `data`, which starts at `base`).
fn hash_pieces(base: u64, data: &[u8], pieces: &[(u64, u64)]) -> Vec<ChainingValue> {
    let hash_one = |&(offset, len): &(u64, u64)| {
        #[allow(clippy::cast_possible_truncation)] // within `data`
        let (at, len_in_data) = ((offset - base) as usize, len as usize);
        let bytes = &data[at..at + len_in_data];
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(offset);
        if bytes.len() >= PARALLEL_HASH_BYTES {
            hasher.update_rayon(bytes);
        } else {
            hasher.update(bytes);
        }
        hasher.finalize_non_root()
    };
    if data.len() >= PARALLEL_HASH_BYTES && pieces.len() > 1 {
        pieces.par_iter().map(hash_one).collect()
    } else {
        pieces.iter().map(hash_one).collect()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data wraps on purpose
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page_data(pages: usize, seed: u8) -> Vec<u8> {
        (0..pages * PAGE)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i / PAGE) as u8)
            .collect()
    }

    #[test]
    fn empty_and_single_page_files() {
        assert_eq!(PagesHash::default().finalize(), blake3::hash(&[]));
        let page = page_data(1, 7);
        let mut h = PagesHash::default();
        h.append(&page, false).unwrap();
        assert_eq!(h.finalize(), blake3::hash(&page));
        let other = page_data(1, 9);
        let mut h = PagesHash::default();
        h.append(&page, true).unwrap();
        h.rewrite(0, &other).unwrap();
        assert_eq!(h.finalize(), blake3::hash(&other));
    }

    #[test]
    fn only_revisable_pages_can_be_rewritten() {
        let mut h = PagesHash::default();
        h.append(&page_data(8, 1), false).unwrap();
        h.append(&page_data(2, 2), true).unwrap();
        assert!(h.rewrite(4 * PAGE_SIZE, &page_data(1, 3)).is_err());
        assert!(
            h.rewrite(9 * PAGE_SIZE, &page_data(2, 3)).is_err(),
            "past the end"
        );
        assert!(h.rewrite(8 * PAGE_SIZE, &page_data(2, 3)).is_ok());
        assert_eq!(
            h.append(&[0; 100], false),
            Err(RewriteError::NotPages { len: 100 })
        );
    }

    #[test]
    fn a_large_file_hashes_as_blake3_does() {
        let mut file = Vec::new();
        let mut h = PagesHash::default();
        for (pages, revisable) in [(3, false), (700, true), (1, false), (300, false)] {
            let data = page_data(pages, pages as u8);
            h.append(&data, revisable).unwrap();
            file.extend_from_slice(&data);
        }
        let new = page_data(5, 0xAA);
        h.rewrite(10 * PAGE_SIZE, &new).unwrap();
        file[10 * PAGE..15 * PAGE].copy_from_slice(&new);
        assert_eq!(h.finalize(), blake3::hash(&file));
    }

    proptest! {
        /// Any sequence of appends and rewrites of revisable pages gives the file's blake3.
        #[test]
        fn appends_and_rewrites_match_blake3(
            steps in prop::collection::vec((1usize..40, any::<bool>(), any::<u8>()), 1..12),
            rewrites in prop::collection::vec((any::<prop::sample::Index>(), 1usize..4, any::<u8>()), 0..10),
        ) {
            let mut file = Vec::new();
            let mut revisable = Vec::new();
            let mut h = PagesHash::default();
            for (pages, rev, seed) in steps {
                let data = page_data(pages, seed);
                h.append(&data, rev).unwrap();
                let first = file.len() / PAGE;
                revisable.extend((first..first + pages).map(|_| rev));
                file.extend_from_slice(&data);
            }
            for (at, pages, seed) in rewrites {
                let first = at.index(revisable.len());
                let last = (first + pages).min(revisable.len());
                let data = page_data(last - first, seed);
                let result = h.rewrite((first * PAGE) as u64, &data);
                // Pages appended in one piece may be single-page subtrees too (at offsets
                // aligned to a page only): rewriting those is as valid.
                if revisable[first..last].iter().all(|&r| r) {
                    prop_assert!(result.is_ok());
                }
                if result.is_ok() {
                    file[first * PAGE..last * PAGE].copy_from_slice(&data);
                }
            }
            prop_assert_eq!(h.finalize(), blake3::hash(&file));
        }
    }
}
