//! Reading and writing another process's memory, and asking the kernel which of its pages
//! hold data worth storing.

use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;

use super::sys;
use crate::image::format::PAGE_SIZE;

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {len} bytes at {addr:#x} of process {pid}")]
pub struct MemoryError {
    pub pid: i32,
    pub op: &'static str,
    pub addr: u64,
    pub len: usize,
    #[source]
    pub source: std::io::Error,
}

/// Another process's address space.
pub struct ProcessMemory {
    pid: Pid,
    /// `/proc/PID/mem` ignores page protection (FOLL_FORCE): the fallback for PROT_NONE or
    /// write-only pages, and the only way to write into read-only ones.
    mem: File,
    /// Read through `mem` only: see `open_shared`.
    mem_only: bool,
}

impl ProcessMemory {
    pub fn open(pid: Pid) -> Result<Self, MemoryError> {
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|source| MemoryError {
                pid: pid.as_raw(),
                op: "open memory of",
                addr: 0,
                len: 0,
                source,
            })?;
        Ok(ProcessMemory {
            pid,
            mem,
            mem_only: false,
        })
    }

    /// For a process whose pages are shared copy-on-write (a fork-snapshot):
    /// `process_vm_readv` pins the pages it reads, and pinning a shared anonymous page makes
    /// the kernel copy it first (13x slower here, and a copy of all memory); `/proc/PID/mem`
    /// takes plain references.
    pub fn open_shared(pid: Pid) -> Result<Self, MemoryError> {
        Ok(ProcessMemory {
            mem_only: true,
            ..ProcessMemory::open(pid)?
        })
    }

    fn err(&self, op: &'static str, addr: u64, len: usize, source: std::io::Error) -> MemoryError {
        MemoryError {
            pid: self.pid.as_raw(),
            op,
            addr,
            len,
            source,
        }
    }

    /// Fills `buf` from the ranges `(addr, len)` laid end to end; `buf` is exactly their
    /// total size.
    pub fn read_ranges(&self, ranges: &[(u64, usize)], buf: &mut [u8]) -> Result<(), MemoryError> {
        let mut done = 0;
        for chunk in ranges.chunks(sys::UIO_MAXIOV) {
            let total: usize = chunk.iter().map(|r| r.1).sum();
            let dst = &mut buf[done..done + total];
            if self.mem_only || self.vm_read(chunk, dst) != Some(total) {
                self.read_via_mem(chunk, dst)?;
            }
            done += total;
        }
        Ok(())
    }

    /// One `process_vm_readv`; None if it failed or fell short (protection, races).
    fn vm_read(&self, ranges: &[(u64, usize)], dst: &mut [u8]) -> Option<usize> {
        let remote: Vec<RemoteIoVec> = ranges
            .iter()
            .map(|&(base, len)| RemoteIoVec {
                base: usize::try_from(base).ok().unwrap_or(0),
                len,
            })
            .collect();
        let mut local = [IoSliceMut::new(dst)];
        process_vm_readv(self.pid, &mut local, &remote).ok()
    }

    fn read_via_mem(&self, ranges: &[(u64, usize)], dst: &mut [u8]) -> Result<(), MemoryError> {
        let mut at = 0;
        for &(addr, len) in ranges {
            self.mem
                .read_exact_at(&mut dst[at..at + len], addr)
                .map_err(|e| self.err("read", addr, len, e))?;
            at += len;
        }
        Ok(())
    }

    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, MemoryError> {
        let mut buf = vec![0u8; len];
        self.read_ranges(&[(addr, len)], &mut buf)?;
        Ok(buf)
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.mem
            .write_all_at(data, addr)
            .map_err(|e| self.err("write", addr, data.len(), e))
    }
}

/// What `/proc/PID/pagemap` says about one page (Documentation/admin-guide/mm/pagemap.rst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFlags(u64);

impl PageFlags {
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }
    /// The page is the file's own page-cache page (or shared anonymous memory), not a
    /// private copy.
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    /// Holds data that only the process has: a private page that was written (or is
    /// anonymous) and is in memory or swap.
    pub fn private_data(self) -> bool {
        self.swapped() || (self.present() && !self.file_or_shared())
    }
}

/// `/proc/PID/pagemap`, read in bulk.
pub struct PageMap {
    pid: Pid,
    file: File,
}

/// Pages asked of the kernel per read (512 KiB of pagemap covers 256 MiB of memory).
const PAGEMAP_BATCH: u64 = 64 * 1024;

impl PageMap {
    pub fn open(pid: Pid) -> Result<Self, MemoryError> {
        let file = File::open(format!("/proc/{pid}/pagemap")).map_err(|source| MemoryError {
            pid: pid.as_raw(),
            op: "open pagemap of",
            addr: 0,
            len: 0,
            source,
        })?;
        Ok(PageMap { pid, file })
    }

    /// Calls `visit(page_address, flags)` for every page of `[start, end)`, in order.
    pub fn scan(
        &self,
        start: u64,
        end: u64,
        mut visit: impl FnMut(u64, PageFlags),
    ) -> Result<(), MemoryError> {
        let mut page = start / PAGE_SIZE;
        let last = end / PAGE_SIZE;
        let mut raw = vec![0u8; (PAGEMAP_BATCH * 8) as usize];
        while page < last {
            let count = (last - page).min(PAGEMAP_BATCH);
            let bytes = &mut raw[..(count * 8) as usize];
            self.file
                .read_exact_at(bytes, page * 8)
                .map_err(|source| MemoryError {
                    pid: self.pid.as_raw(),
                    op: "read pagemap for",
                    addr: page * PAGE_SIZE,
                    len: bytes.len(),
                    source,
                })?;
            for (i, entry) in bytes.chunks_exact(8).enumerate() {
                let word = u64::from_le_bytes(entry.try_into().expect("8-byte chunk"));
                visit((page + i as u64) * PAGE_SIZE, PageFlags(word));
            }
            page += count;
        }
        Ok(())
    }
}
