//! Page data in memory, aligned for direct I/O: `pages.bin` is written with `O_DIRECT`,
//! which needs the buffer, the length and the file offset aligned to the device's block.

use super::format::PAGE_SIZE;

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

impl PageBuf {
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
}
