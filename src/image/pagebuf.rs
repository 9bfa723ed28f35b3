//! Page data in memory, aligned for direct I/O: `pages.bin` is written with `O_DIRECT`,
//! which needs the buffer, the length and the file offset aligned to the device's block.

use super::format::PAGE_SIZE;
use std::sync::Mutex;

#[allow(clippy::cast_possible_truncation)] // 4096 fits every usize
const PAGE: usize = PAGE_SIZE as usize;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; PAGE]);

/// A whole number of pages, page-aligned.
#[derive(Default)]
pub struct PageBuf {
    blocks: Vec<Block>,
}

/// Buffers of images already written, kept for the next ones: their memory is mapped, so
/// the next image does not fault it in again (12 MiB took ~8 ms on a VM here, a tenth of
/// an increment), least of all while its target is frozen.
static POOL: Mutex<Vec<PageBuf>> = Mutex::new(Vec::new());

/// The pool keeps at most this much: what one checkpoint has in use at its peak.
const POOL_BYTES: usize = 48 << 20;

fn pool() -> std::sync::MutexGuard<'static, Vec<PageBuf>> {
    POOL.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PageBuf {
    /// An empty buffer with room for `bytes` whose memory is mapped already: the smallest
    /// such one from the pool, or a new one faulted in now.
    pub fn mapped(bytes: usize) -> PageBuf {
        let reused = {
            let mut pool = pool();
            let fitting = (0..pool.len())
                .filter(|&i| pool[i].capacity() >= bytes)
                .min_by_key(|&i| pool[i].capacity());
            fitting.map(|i| pool.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_default();
        if buf.capacity() < bytes {
            buf.resize(bytes);
        }
        buf.resize(0);
        buf
    }

    /// Gives the buffer's memory to the pool for later images (or frees it, if the pool
    /// is full).
    pub fn recycle(mut self) {
        self.resize(0);
        let mut pool = pool();
        let held: usize = pool.iter().map(PageBuf::capacity).sum();
        if self.capacity() > 0 && held + self.capacity() <= POOL_BYTES {
            pool.push(self);
        }
    }

    /// Bytes it can hold without allocating.
    pub fn capacity(&self) -> usize {
        self.blocks.capacity() * PAGE
    }

    /// Makes the buffer `len` bytes long (a multiple of the page size); new bytes are zero,
    /// kept bytes keep their contents.
    pub fn resize(&mut self, len: usize) {
        assert_eq!(len % PAGE, 0, "page buffers hold whole pages");
        self.blocks.resize(len / PAGE, Block([0; PAGE]));
    }

    pub fn len(&self) -> usize {
        self.blocks.len() * PAGE
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Appends the pages of `other`.
    pub fn append(&mut self, other: &PageBuf) {
        self.blocks.extend_from_slice(&other.blocks);
    }

    /// Appends one page.
    pub fn push_page(&mut self, page: &[u8]) {
        let mut block = Block([0; PAGE]);
        block.0.copy_from_slice(page);
        self.blocks.push(block);
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Block` is a `repr(C)` byte array without padding, so the vector's
        // initialised elements are `len()` contiguous, initialised bytes.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len()) }
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: as in `as_bytes`; the exclusive borrow of `self` makes the slice unique,
        // and any byte pattern is a valid `Block`.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_and_keep_contents_across_growth() {
        let mut buf = PageBuf::default();
        buf.resize(2 * PAGE);
        buf.as_bytes_mut()[PAGE] = 7;
        buf.resize(8 * PAGE);
        assert_eq!(buf.as_bytes().as_ptr() as usize % PAGE, 0);
        assert_eq!(buf.as_bytes()[PAGE], 7);
        assert_eq!(buf.len(), 8 * PAGE);
        buf.push_page(&[1; PAGE]);
        assert_eq!(buf.as_bytes()[8 * PAGE..], [1; PAGE]);
    }

    #[test]
    fn recycled_buffers_are_handed_out_again_empty() {
        // An odd size no other test uses: the pool is shared by the tests running at once.
        let mut buf = PageBuf::mapped(37 * PAGE);
        buf.resize(3 * PAGE);
        buf.as_bytes_mut()[0] = 9;
        let memory = buf.as_bytes().as_ptr() as usize;
        buf.recycle();
        let mut again = PageBuf::mapped(37 * PAGE);
        assert!(again.is_empty());
        assert_eq!(
            again.as_bytes().as_ptr() as usize,
            memory,
            "the same memory"
        );
        again.resize(PAGE);
        assert_eq!(again.len(), PAGE);
    }
}
