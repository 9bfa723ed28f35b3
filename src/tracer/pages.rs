//! Streaming page contents into an image. With a parent image, a page whose contents are
//! the same as at the parent's checkpoint is referenced, not stored: change is detected by
//! content (a 16-byte blake3 per page), as the kernel here keeps no soft-dirty bits.

use super::dump::DumpError;
use super::memory::ProcessMemory;
use crate::image::format::{PAGE_HASH_BYTES, PAGE_HASHES_FILE, PAGE_SIZE, PageRun};
use crate::image::pagebuf::PageBuf;
use crate::image::writer::{ImageWriter, PARALLEL_HASH_BYTES};
use crate::image::{Image, store, verify};
use crate::objects::contents::ParentFiles;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Memory is read in batches of this size: the supervisor's memory stays small whatever
/// the target's size.
const BATCH_BYTES: u64 = 8 << 20;

type PageHash = [u8; PAGE_HASH_BYTES];

fn page_hash(page: &[u8]) -> PageHash {
    let full = blake3::hash(page);
    full.as_bytes()[..PAGE_HASH_BYTES]
        .try_into()
        .expect("hash prefix")
}

/// Where a page's bytes are, and what they hash to.
#[derive(Debug, Clone, Copy)]
struct PageRef {
    hash: PageHash,
    image: u64,
    offset: u64,
}

/// The page table of the image a new incremental image is made against.
pub struct ParentPages {
    pub seq: u64,
    /// The parent and every image it references: the new image may need any of them.
    images: BTreeMap<u64, String>,
    depth: u32,
    /// Pages of the parent's hashed regions.
    pages: HashMap<u64, PageRef>,
    /// Chunks of the files the parent copied.
    pub files: ParentFiles,
}

/// Which image of the directory a new one may build on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParentChoice {
    /// The newest: the last one written.
    #[default]
    Newest,
    /// Image `seq`: the one the process was restored from. Newer images in the directory
    /// may be ones the restore passed over as damaged.
    Restored(u64),
    /// None: the next image is a full one.
    Full,
}

impl ParentPages {
    /// The image of `rank_dir` that `choice` names, if the next image may be an increment
    /// of it: the chain stays shorter than `full_every`, and the parent's page table is
    /// intact.
    pub fn choose(rank_dir: &Path, choice: ParentChoice, full_every: u32) -> Option<ParentPages> {
        let mut images = store::list_images(rank_dir).ok()?;
        let (seq, dir) = match choice {
            ParentChoice::Newest => images.pop()?,
            ParentChoice::Restored(seq) => images.into_iter().find(|(s, _)| *s == seq)?,
            ParentChoice::Full => return None,
        };
        let image = Image::open(&dir).ok()?;
        if full_every <= 1 || image.manifest.chain_depth + 1 >= full_every {
            return None;
        }
        let table = match verify::listed_hash(&dir, PAGE_HASHES_FILE) {
            Ok(listed) => {
                let table = std::fs::read(dir.join(PAGE_HASHES_FILE)).ok()?;
                (blake3::hash(&table).to_hex().as_str() == listed).then_some(table)?
            }
            // No region was hashed (all write-tracked): nothing to compare by content.
            Err(verify::VerifyError::NotListed { .. }) => Vec::new(),
            Err(_) => return None,
        };
        let mut images: BTreeMap<u64, String> = image
            .manifest
            .parents
            .iter()
            .map(|p| (p.seq, p.manifest_blake3.clone()))
            .collect();
        images.insert(seq, verify::manifest_hash(&dir).ok()?);
        let pages = page_table(&image, seq, &table)?;
        let mut files = ParentFiles::of(&image.manifest.files, seq);
        crate::objects::unlinked::add_to_parent(&mut files, &image.manifest.objects, seq);
        Some(ParentPages {
            seq,
            images,
            depth: image.manifest.chain_depth,
            pages,
            files,
        })
    }

    pub fn chain_depth(&self) -> u32 {
        self.depth + 1
    }

    /// The manifest hash of image `seq` if the parent is it or references it.
    pub fn image_hash(&self, seq: u64) -> Option<&str> {
        self.images.get(&seq).map(String::as_str)
    }
}

/// Page address -> where its bytes are, from a manifest's runs and its page hashes.
fn page_table(image: &Image, seq: u64, table: &[u8]) -> Option<HashMap<u64, PageRef>> {
    let mut hashes = table.chunks_exact(PAGE_HASH_BYTES);
    let mut pages = HashMap::new();
    let hashed = image.manifest.regions.iter().filter(|r| r.hashed);
    for run in hashed.flat_map(|r| &r.runs) {
        for i in 0..run.len / PAGE_SIZE {
            let hash = hashes.next()?.try_into().ok()?;
            let page = PageRef {
                hash,
                image: run.image.unwrap_or(seq),
                offset: run.offset + i * PAGE_SIZE,
            };
            pages.insert(run.addr + i * PAGE_SIZE, page);
        }
    }
    hashes.next().is_none().then_some(pages)
}

/// Receives a region's page runs at a time and turns them into the image's runs.
pub struct PageSink<'a> {
    parent: Option<&'a ParentPages>,
    /// Whether to hash pages at all: only when increments are configured.
    hash_pages: bool,
    /// Parent images actually referenced.
    used: BTreeMap<u64, String>,
    /// With a parent, read batches are not handed to the writer (only changed pages are):
    /// one buffer serves every read.
    read_buf: PageBuf,
    /// Pages are stored so that they can be written again in place (see `revisable`).
    revisable: bool,
}

impl<'a> PageSink<'a> {
    pub fn new(parent: Option<&'a ParentPages>, hash_pages: bool) -> Self {
        PageSink {
            parent,
            hash_pages,
            used: BTreeMap::new(),
            read_buf: PageBuf::default(),
            revisable: false,
        }
    }

    /// Stores pages read while the target runs: a page written again before the freeze is
    /// read once more into the same place of the image ([`ImageWriter::rewrite`]).
    pub fn revisable(mut self) -> Self {
        self.revisable = true;
        self
    }

    /// Reads `[addr, addr+len)` ranges from `mem`; returns the image runs and page hashes
    /// (in run order) for them.
    pub fn store(
        &mut self,
        writer: &mut ImageWriter,
        mem: &ProcessMemory,
        ranges: &[(u64, u64)],
    ) -> Result<(Vec<PageRun>, Vec<u8>), DumpError> {
        let mut runs = Vec::new();
        let mut hashes = Vec::new();
        for batch in batches(ranges) {
            self.store_batch(writer, mem, &batch, &mut runs, &mut hashes)?;
        }
        Ok((runs, hashes))
    }

    /// Reads one batch (at most BATCH_BYTES) and appends its runs and page hashes. Nothing
    /// is appended or written when the read fails.
    pub fn store_batch(
        &mut self,
        writer: &mut ImageWriter,
        mem: &ProcessMemory,
        batch: &[(u64, usize)],
        runs: &mut Vec<PageRun>,
        hashes: &mut Vec<u8>,
    ) -> Result<(), DumpError> {
        let total: usize = batch.iter().map(|r| r.1).sum();
        let mut buf = match self.parent {
            Some(_) => std::mem::take(&mut self.read_buf),
            None => writer.take_buffer(total),
        };
        buf.resize(total);
        if let Err(e) = mem.read_ranges(batch, buf.as_bytes_mut()) {
            self.read_buf = buf;
            return Err(e.into());
        }
        crate::progress::advance(total as u64);
        let page_hashes: Vec<PageHash> = match (self.hash_pages, total >= PARALLEL_HASH_BYTES) {
            (false, _) => Vec::new(),
            (true, true) => buf
                .as_bytes()
                .par_chunks(PAGE_SIZE as usize)
                .map(page_hash)
                .collect(),
            (true, false) => buf
                .as_bytes()
                .chunks(PAGE_SIZE as usize)
                .map(page_hash)
                .collect(),
        };
        hashes.extend(page_hashes.iter().flatten());
        match self.parent {
            Some(parent) => {
                self.store_changed(writer, parent, batch, buf.as_bytes(), &page_hashes, runs)?;
                self.read_buf = buf;
            }
            None => {
                let offset = match self.revisable {
                    true => writer.submit_revisable(buf)?,
                    false => writer.submit(buf)?,
                };
                own_runs(batch, offset, runs);
            }
        }
        Ok(())
    }

    /// Stores pages whose hash differs from the parent's; references the others.
    fn store_changed(
        &mut self,
        writer: &mut ImageWriter,
        parent: &ParentPages,
        batch: &[(u64, usize)],
        buf: &[u8],
        hashes: &[PageHash],
        runs: &mut Vec<PageRun>,
    ) -> Result<(), DumpError> {
        let base = writer.pages_written();
        let mut changed = writer.take_buffer(0);
        let pages = batch
            .iter()
            .flat_map(|&(addr, len)| (addr..addr + len as u64).step_by(PAGE_SIZE as usize));
        for ((addr, bytes), hash) in pages.zip(buf.chunks(PAGE_SIZE as usize)).zip(hashes) {
            let run = match parent.pages.get(&addr) {
                Some(old) if old.hash == *hash => {
                    self.used
                        .entry(old.image)
                        .or_insert_with(|| parent.images[&old.image].clone());
                    PageRun {
                        addr,
                        len: PAGE_SIZE,
                        offset: old.offset,
                        image: Some(old.image),
                    }
                }
                _ => {
                    let offset = base + changed.len() as u64;
                    changed.push_page(bytes);
                    PageRun {
                        addr,
                        len: PAGE_SIZE,
                        offset,
                        image: None,
                    }
                }
            };
            push_run(runs, run);
        }
        if !changed.is_empty() {
            writer.submit(changed)?;
        }
        Ok(())
    }

    /// The parents the image depends on for the pages stored through this sink: seq ->
    /// manifest blake3.
    pub fn parents(&self) -> &BTreeMap<u64, String> {
        &self.used
    }
}

/// Appends a run, merging it into the last one when it continues it in memory and on disk.
fn push_run(runs: &mut Vec<PageRun>, run: PageRun) {
    if let Some(last) = runs.last_mut()
        && last.image == run.image
        && last.addr + last.len == run.addr
        && last.offset + last.len == run.offset
    {
        last.len += run.len;
        return;
    }
    runs.push(run);
}

fn own_runs(batch: &[(u64, usize)], mut offset: u64, runs: &mut Vec<PageRun>) {
    for &(addr, len) in batch {
        push_run(
            runs,
            PageRun {
                addr,
                len: len as u64,
                offset,
                image: None,
            },
        );
        offset += len as u64;
    }
}

/// Splits ranges into batches of at most BATCH_BYTES (a range may be split).
pub fn batches(ranges: &[(u64, u64)]) -> Vec<Vec<(u64, usize)>> {
    let mut out: Vec<Vec<(u64, usize)>> = vec![Vec::new()];
    let mut room = BATCH_BYTES;
    for &(mut addr, mut len) in ranges {
        while len > 0 {
            if room == 0 {
                out.push(Vec::new());
                room = BATCH_BYTES;
            }
            let take = len.min(room);
            out.last_mut()
                .expect("one batch")
                .push((addr, take as usize));
            addr += take;
            len -= take;
            room -= take;
        }
    }
    out.retain(|b| !b.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_only_when_contiguous_in_memory_and_on_disk() {
        let mut runs = Vec::new();
        let run = |addr, offset, image| PageRun {
            addr,
            len: PAGE_SIZE,
            offset,
            image,
        };
        push_run(&mut runs, run(0x1000, 0, None));
        push_run(&mut runs, run(0x2000, 4096, None));
        push_run(&mut runs, run(0x3000, 0, Some(3)));
        push_run(&mut runs, run(0x4000, 4096, Some(3)));
        push_run(&mut runs, run(0x5000, 8192, None));
        let lens: Vec<u64> = runs.iter().map(|r| r.len).collect();
        assert_eq!(lens, vec![8192, 8192, 4096]);
    }

    #[test]
    fn batches_are_bounded_and_cover_everything() {
        let ranges = [(0, BATCH_BYTES + 4096), (1 << 40, 8192)];
        let b = batches(&ranges);
        assert_eq!(b.len(), 2);
        let total: usize = b.iter().flatten().map(|r| r.1).sum();
        assert_eq!(total as u64, BATCH_BYTES + 4096 + 8192);
        assert!(
            b.iter()
                .all(|x| x.iter().map(|r| r.1 as u64).sum::<u64>() <= BATCH_BYTES)
        );
    }
}
