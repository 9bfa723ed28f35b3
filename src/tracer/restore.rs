//! Restore: a fresh process (same PID) becomes the image's process. The parent checks and
//! prepares everything, the child sets up files and signals (`child`), the restorer stub
//! rebuilds memory (`stub`), and ptrace sets the final registers.

use super::child::{ChildFailure, ChildPlan, PlannedFile, Step, child_main};
use super::memory::MemoryError;
use super::precopy;
use super::ptrace::{self, PtraceError, Stop};
use super::remote::RemoteError;
use super::rethread::Rethreader;
use super::stub::{self, Expect, Op};
use super::sys;
use super::tracker::WriteTracker;
use crate::image::Image;
use crate::image::format::{
    Advice, Backing, FdKind, FdState, FileIdentity, Manifest, MemoryRegion, PAGE_SIZE, PAGES_FILE,
    PageRun, PendingSignal, ThreadState,
};
use crate::image::verify::VerifyError;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "the image was taken on kernel {image}, this is kernel {here}: the vDSO cannot be \
         moved between kernels; restore on a node with kernel {image}"
    )]
    Kernel { image: String, here: String },
    #[error(
        "the image needs CPU state components {image:#x} (XCR0), this CPU/kernel has {here:#x}; \
         restore on a node with the same CPU type"
    )]
    Cpu { image: u64, here: u64 },
    #[error(
        "{path} changed since the checkpoint ({what}); the image relies on it. Restore the \
         original file or pass --keep-files to accept the change for open files"
    )]
    FileChanged { path: String, what: String },
    #[error("{path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("PID {pid} is in use by '{holder}'; stop that process or pass --new-pid")]
    PidTaken { pid: i32, holder: String },
    #[error("the image has no thread")]
    NoThreads,
    #[error("vDSO layout differs: {0}")]
    Vdso(String),
    #[error("no free address range for the restorer stub ({0} bytes)")]
    NoHole(u64),
    #[error("cannot assemble the restorer stub: {0}")]
    Assemble(String),
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("restore failed in the new process while {what}")]
    Child { what: String, source: Errno },
    #[error("restore failed in the restorer stub at '{what}': {result}")]
    StubOp { what: String, result: String },
    #[error("the process under restore stopped unexpectedly ({0})")]
    Unexpected(String),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

fn sys_err(what: &'static str) -> impl FnOnce(Errno) -> RestoreError {
    move |source| RestoreError::Sys { what, source }
}

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Let the kernel pick a PID when the original one is taken.
    pub new_pid: bool,
    /// Leave files that grew since the checkpoint as they are (default: truncate back).
    pub keep_files: bool,
    /// Start write tracking before the process runs (its supervisor goes on with it).
    pub track_writes: bool,
}

/// A restored process, running.
pub struct Restored {
    pub pid: Pid,
    /// Its write tracker (with `track_writes`, when the kernel allows tracking).
    pub tracker: Option<WriteTracker>,
}

/// Rebuilds the image's process as a child of the caller and lets it run.
/// `pages_verified` says whether the image's page contents are intact (the caller may be
/// checking them while they are read): it is asked before anything that cannot be undone,
/// cutting back files or letting the process run; on failure the process is killed.
pub fn restore(
    image: &Image,
    opts: &RestoreOptions,
    pages_verified: impl FnOnce() -> Result<(), VerifyError>,
) -> Result<Restored, RestoreError> {
    let m = &image.manifest;
    if m.threads.is_empty() {
        return Err(RestoreError::NoThreads);
    }
    preflight(m, opts)?;
    let vdso = plan_vdso(&m.regions)?;
    let fds = plan_fds(m, image, opts)?;
    let mut area = StubArea::build(m, &fds, &vdso)?;
    let report = sys::map_shared_page().map_err(sys_err("map report page"))?;
    let (sync_r, sync_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("create sync pipe"))?;
    let plan = child_plan(
        m,
        &fds,
        &area,
        report.cast(),
        std::os::fd::AsRawFd::as_raw_fd(&sync_r),
    )?;
    let wanted = (!opts.new_pid).then_some(m.process.pid);
    let child = match sys::clone3_fork(wanted) {
        Ok(0) => child_main(&plan),
        Ok(pid) => Pid::from_raw(pid),
        Err(Errno::EEXIST) => return Err(pid_taken(m.process.pid)),
        Err(e) => return Err(sys_err("clone3 with the image's PID")(e)),
    };
    drop(sync_r);
    area.unmap_here();
    let outcome = drive_child(child, sync_w, &area, &m.process.pending_signals, &m.threads)
        .and_then(|mut last| {
            // Before the wait for the page check, which it may overlap.
            let tracker = opts
                .track_writes
                .then(|| track_writes(image, &mut last, &area))
                .flatten();
            pages_verified()?;
            cut_back(&fds.cut_back)?;
            last.release(area.base, area.len)?;
            Ok(tracker)
        });
    if outcome.is_err() {
        let _ = kill(child, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child, None);
    }
    let outcome = outcome.map_err(|e| explain_child_exit(e, report.cast(), &plan));
    sys::unmap(report, 4096);
    outcome.map(|tracker| Restored {
        pid: child,
        tracker,
    })
}

/// Write tracking of the restored process, set up while none of its threads has run. None
/// if it cannot be had: its supervisor then tries again once the process runs, and the
/// first checkpoint after the restore is a full one.
fn track_writes(image: &Image, last: &mut Rethreader, area: &StubArea) -> Option<WriteTracker> {
    let blake3 = crate::image::verify::manifest_hash(&image.dir).ok()?;
    let stub = (area.base, area.base + area.len);
    precopy::track_restored(last.pid, &mut last.main, &image.manifest, blake3, stub).ok()
}

fn pid_taken(pid: i32) -> RestoreError {
    let holder = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    RestoreError::PidTaken { pid, holder }
}

fn preflight(m: &Manifest, opts: &RestoreOptions) -> Result<(), RestoreError> {
    let here = sys::kernel_release();
    if m.kernel != here {
        return Err(RestoreError::Kernel {
            image: m.kernel.clone(),
            here,
        });
    }
    let xcr0 = sys::xcr0();
    if m.cpu.xfeatures != xcr0 {
        return Err(RestoreError::Cpu {
            image: m.cpu.xfeatures,
            here: xcr0,
        });
    }
    if std::path::Path::new(&format!("/proc/{}", m.process.pid)).exists() && !opts.new_pid {
        return Err(pid_taken(m.process.pid));
    }
    for region in &m.regions {
        if let Backing::File(id) = &region.backing {
            check_mapped_file(id)?;
        }
    }
    Ok(())
}

/// Pages of a private file mapping that the process never wrote are read back from the
/// file, so the file must be the one the checkpoint saw.
fn check_mapped_file(id: &FileIdentity) -> Result<(), RestoreError> {
    let meta = std::fs::metadata(&id.path).map_err(|source| RestoreError::File {
        path: id.path.clone(),
        source,
    })?;
    let mtime = FileIdentity::mtime_ns_of(&meta);
    if meta.size() != id.size || mtime != id.mtime_ns {
        return Err(RestoreError::FileChanged {
            path: id.path.clone(),
            what: format!(
                "size {} -> {}, mtime changed: {}",
                id.size,
                meta.size(),
                mtime != id.mtime_ns
            ),
        });
    }
    Ok(())
}

/// A vDSO piece to move: where the restoring kernel put it, where the image had it.
#[derive(Debug, Clone)]
struct VdsoMove {
    name: String,
    current: u64,
    target: u64,
    len: u64,
}

fn plan_vdso(regions: &[MemoryRegion]) -> Result<Vec<VdsoMove>, RestoreError> {
    let own = super::inspect::read_regions(nix::unistd::getpid())
        .map_err(|e| RestoreError::Vdso(e.to_string()))?;
    let mut moves = Vec::new();
    for piece in own.iter().filter(|p| p.region.backing == Backing::Vdso) {
        let r = &piece.region;
        let Some(img) = regions
            .iter()
            .find(|i| i.backing == Backing::Vdso && i.name == r.name)
        else {
            continue;
        };
        if img.len() != r.len() {
            return Err(RestoreError::Vdso(format!(
                "{} is {} bytes here, {} in the image",
                r.name,
                r.len(),
                img.len()
            )));
        }
        moves.push(VdsoMove {
            name: r.name.clone(),
            current: r.start,
            target: img.start,
            len: r.len(),
        });
    }
    let wanted = regions
        .iter()
        .filter(|i| i.backing == Backing::Vdso)
        .count();
    if moves.len() != wanted {
        return Err(RestoreError::Vdso(
            "the image has vDSO pieces this kernel does not".into(),
        ));
    }
    Ok(moves)
}

/// Fd numbers for everything the child opens: the image's fds at their numbers, then the
/// stub's helpers above them.
struct FdPlan {
    files: Vec<PlannedFile>,
    close_stdio: Vec<i32>,
    /// The first fd above the image's own: everything from here on is the stub's.
    first_helper_fd: i32,
    /// `pages.bin` of this image and of each parent it takes pages from, by seq.
    pages_fds: BTreeMap<u64, i32>,
    exe_fd: i32,
    /// Fd of each distinct mapped file, by path.
    mapped: Vec<(String, i32)>,
    /// Files that grew since the checkpoint, and the size to cut each back to.
    cut_back: Vec<(String, u64)>,
}

fn plan_fds(m: &Manifest, image: &Image, opts: &RestoreOptions) -> Result<FdPlan, RestoreError> {
    let mut files = Vec::new();
    let mut cut_back = Vec::new();
    for fd in &m.fds {
        if fd.kind == FdKind::Stdio {
            continue;
        }
        if fd.kind == FdKind::File
            && let Some(size) = grown_file(fd)?
            && !opts.keep_files
        {
            cut_back.push((fd.path.clone(), size));
        }
        files.push(PlannedFile {
            fd: fd.fd,
            path: cstring(&fd.path)?,
            flags: fd.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY),
            offset: if fd.kind == FdKind::File {
                fd.offset
            } else {
                0
            },
            cloexec: fd.cloexec,
        });
    }
    let close_stdio = (0..=2)
        .filter(|n| !m.fds.iter().any(|f| f.fd == *n))
        .collect();
    let mut next = m.fds.iter().map(|f| f.fd + 1).max().unwrap_or(3).max(3);
    let first_helper_fd = next;
    let mut helper = |path: &str, flags: i32| -> Result<i32, RestoreError> {
        let fd = next;
        next += 1;
        files.push(PlannedFile {
            fd,
            path: cstring(path)?,
            flags,
            offset: 0,
            cloexec: true,
        });
        Ok(fd)
    };
    let mut pages_fds = BTreeMap::new();
    pages_fds.insert(
        m.seq,
        helper(&image.pages_path().to_string_lossy(), libc::O_RDONLY)?,
    );
    for parent in &m.parents {
        let path = image.parent_dir(parent.seq).join(PAGES_FILE);
        pages_fds.insert(parent.seq, helper(&path.to_string_lossy(), libc::O_RDONLY)?);
    }
    let exe_fd = helper(&m.process.exe, libc::O_RDONLY)?;
    let mut mapped: Vec<(String, i32)> = Vec::new();
    for region in &m.regions {
        if let Backing::File(id) = &region.backing {
            let flags = if region.shared && region.prot.write {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            if !mapped.iter().any(|(p, _)| p == &id.path) {
                mapped.push((id.path.clone(), helper(&id.path, flags)?));
            }
        }
    }
    Ok(FdPlan {
        files,
        close_stdio,
        first_helper_fd,
        pages_fds,
        exe_fd,
        mapped,
        cut_back,
    })
}

fn cstring(s: &str) -> Result<CString, RestoreError> {
    CString::new(s).map_err(|_| RestoreError::File {
        path: s.into(),
        source: std::io::Error::other("path contains a NUL byte"),
    })
}

/// A file open for writing must look as it did at the checkpoint: one that grew (the job
/// wrote on after the checkpoint, then died) is cut back to the size returned here (see
/// `cut_back`), one that shrank is an error.
fn grown_file(fd: &FdState) -> Result<Option<u64>, RestoreError> {
    let Some(size) = fd.size else { return Ok(None) };
    let now = std::fs::metadata(&fd.path)
        .map_err(|source| RestoreError::File {
            path: fd.path.clone(),
            source,
        })?
        .size();
    if now < size {
        return Err(RestoreError::FileChanged {
            path: fd.path.clone(),
            what: format!("it shrank from {size} to {now} bytes"),
        });
    }
    Ok((now > size).then_some(size))
}

/// Cuts files that grew since the checkpoint back to their size then: the one change a
/// restore makes outside the new process, made only once the image is known intact.
fn cut_back(files: &[(String, u64)]) -> Result<(), RestoreError> {
    for (path, size) in files {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(*size))
            .map_err(|source| RestoreError::File {
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The restorer stub's mapping: code, op table, data, stack, room for the vDSO in transit.
struct StubArea {
    base: u64,
    len: u64,
    stub: stub::Stub,
    ops: Vec<Op>,
    stack_top: u64,
    /// The data page: scratch for the last remote calls once the stub is done.
    data: u64,
    mapped_here: bool,
}

const STUB_STACK: u64 = 16 * 1024;
/// Top of the x86-64 user address space (47-bit).
const TASK_TOP: u64 = 0x7fff_ffff_f000;

fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl StubArea {
    fn build(m: &Manifest, fds: &FdPlan, vdso: &[VdsoMove]) -> Result<StubArea, RestoreError> {
        // The op count does not depend on addresses, so size the table with a dry run.
        let dry = Layout::new(0, 0);
        let count = build_ops(m, fds, vdso, &dry).len() as u64;
        let table_len = page_up(count * stub::OP_BYTES as u64);
        let scratch_len: u64 = vdso.iter().map(|v| v.len).sum();
        let len = PAGE_SIZE + table_len + PAGE_SIZE + STUB_STACK + scratch_len;
        let base = place(len, &m.regions)?;
        let layout = Layout::new(base, table_len);
        let ops = build_ops(m, fds, vdso, &layout.with_len(len));
        let stub = stub::assemble(base, layout.table, ops.len() as u64)
            .map_err(|e| RestoreError::Assemble(e.to_string()))?;
        let area = StubArea {
            base,
            len,
            stub,
            ops,
            stack_top: layout.stack_top,
            data: layout.data,
            mapped_here: true,
        };
        area.fill(&layout, m, fds.exe_fd);
        sys::make_executable(base as *mut u8, PAGE_SIZE as usize)
            .map_err(sys_err("make the restorer stub executable"))?;
        Ok(area)
    }

    /// Writes code, table and data into the mapping (inherited by the child at clone).
    fn fill(&self, layout: &Layout, m: &Manifest, exe_fd: i32) {
        let table = stub::encode_table(&self.ops);
        let data = stub_data(m, layout, exe_fd);
        let write = |addr: u64, bytes: &[u8]| {
            // SAFETY: [addr, addr+len) lies inside the area this StubArea mapped
            // read-write at `base` (checked by the layout), which nothing else references.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len());
            }
        };
        write(self.base, &self.stub.code);
        write(layout.table, &table);
        write(layout.data, &data);
    }

    fn unmap_here(&mut self) {
        if std::mem::take(&mut self.mapped_here) {
            sys::unmap(self.base as *mut u8, self.len as usize);
        }
    }
}

impl Drop for StubArea {
    fn drop(&mut self) {
        self.unmap_here();
    }
}

/// Finds a hole for the stub that no image region uses and maps it (in the restorer: the
/// child inherits it).
fn place(len: u64, regions: &[MemoryRegion]) -> Result<u64, RestoreError> {
    let mut taken: Vec<(u64, u64)> = regions.iter().map(|r| (r.start, r.end)).collect();
    taken.sort();
    let mut gaps = Vec::new();
    let mut prev = 1 << 32; // stay clear of low addresses (mmap_min_addr, brk growth)
    for &(s, e) in &taken {
        if s > prev {
            gaps.push((prev, s));
        }
        prev = prev.max(e);
    }
    gaps.push((prev, TASK_TOP));
    // Largest gaps first; try a few spots in each, since this process has its own maps.
    gaps.sort_by_key(|&(s, e)| std::cmp::Reverse(e - s));
    let margin = 1 << 20;
    for (s, e) in gaps {
        if e - s < len + 2 * margin {
            continue;
        }
        for k in 1..8u64 {
            let addr = (s + (e - s) * k / 8) & !0x1f_ffff;
            if addr < s + margin || addr + len + margin > e {
                continue;
            }
            if let Ok(p) = sys::map_fixed_noreplace(addr, len as usize, false) {
                return Ok(p as u64);
            }
        }
    }
    Err(RestoreError::NoHole(len))
}

/// Addresses inside the stub area.
#[derive(Debug, Clone, Copy)]
struct Layout {
    base: u64,
    table: u64,
    data: u64,
    stack_top: u64,
    scratch: u64,
    end: u64,
}

/// Offsets in the data page.
const DATA_MM_MAP: u64 = 0;
const DATA_AUXV: u64 = 128;
const PRCTL_MM_MAP_SIZE: u64 = 104;

impl Layout {
    fn new(base: u64, table_len: u64) -> Layout {
        let table = base + PAGE_SIZE;
        let data = table + table_len;
        let stack_top = data + PAGE_SIZE + STUB_STACK;
        Layout {
            base,
            table,
            data,
            stack_top,
            scratch: stack_top,
            end: stack_top,
        }
    }

    fn with_len(mut self, len: u64) -> Layout {
        self.end = self.base + len;
        self
    }
}

/// `struct prctl_mm_map` and auxv, as the stub's `PR_SET_MM_MAP` reads them.
fn stub_data(m: &Manifest, layout: &Layout, exe_fd: i32) -> Vec<u8> {
    let mut data = vec![0u8; PAGE_SIZE as usize];
    let mm = &m.process.mm;
    let words = [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        layout.data + DATA_AUXV,
    ];
    for (i, w) in words.iter().enumerate() {
        data[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    let auxv_bytes = (m.process.auxv.len() * 8) as u32;
    data[96..100].copy_from_slice(&auxv_bytes.to_le_bytes());
    data[100..104].copy_from_slice(&(exe_fd as u32).to_le_bytes());
    for (i, w) in m.process.auxv.iter().enumerate() {
        let at = DATA_AUXV as usize + i * 8;
        data[at..at + 8].copy_from_slice(&w.to_le_bytes());
    }
    data
}

/// The stub's program.
fn build_ops(m: &Manifest, fds: &FdPlan, vdso: &[VdsoMove], l: &Layout) -> Vec<Op> {
    let mut ops = Vec::new();
    let mremap = |from: u64, to: u64, len: u64, what: String| {
        Op::new(
            libc::SYS_mremap,
            &[
                from,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                to,
            ],
            Expect::Value(to),
            what,
        )
    };
    // The vDSO goes into the stub area first, so that unmapping the old world spares it.
    let mut scratch = l.scratch;
    for v in vdso {
        ops.push(mremap(
            v.current,
            scratch,
            v.len,
            format!("move {} aside", v.name),
        ));
        scratch += v.len;
    }
    ops.push(Op::new(
        libc::SYS_munmap,
        &[0, l.base],
        Expect::Success,
        "unmap below the stub",
    ));
    ops.push(Op::new(
        libc::SYS_munmap,
        &[l.end, TASK_TOP - l.end],
        Expect::Success,
        "unmap above the stub",
    ));
    let mut scratch = l.scratch;
    for v in vdso {
        ops.push(mremap(
            scratch,
            v.target,
            v.len,
            format!("move {} to {:#x}", v.name, v.target),
        ));
        scratch += v.len;
    }
    for region in m.regions.iter().filter(|r| r.backing != Backing::Vdso) {
        region_ops(region, m.seq, fds, &mut ops);
    }
    ops.push(mm_map_op(l));
    for f in fds.files.iter().filter(|f| f.fd >= fds.first_helper_fd) {
        ops.push(Op::new(
            libc::SYS_close,
            &[f.fd as u64],
            Expect::Success,
            "close helper fd",
        ));
    }
    ops
}

fn mm_map_op(l: &Layout) -> Op {
    Op::new(
        libc::SYS_prctl,
        &[
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            l.data + DATA_MM_MAP,
            PRCTL_MM_MAP_SIZE,
            0,
        ],
        Expect::Success,
        "prctl(PR_SET_MM_MAP): brk, stack, arguments, environment, auxv, exe",
    )
}

fn region_ops(r: &MemoryRegion, own_seq: u64, fds: &FdPlan, ops: &mut Vec<Op>) {
    let prot = r.prot.bits();
    let fill = !r.runs.is_empty();
    let initial = if fill { prot | libc::PROT_WRITE } else { prot };
    let mut flags = libc::MAP_FIXED
        | if r.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
    if r.grows_down {
        flags |= libc::MAP_GROWSDOWN;
    }
    let (fd, offset) = match &r.backing {
        Backing::File(id) => {
            let fd = fds
                .mapped
                .iter()
                .find(|(p, _)| p == &id.path)
                .map(|x| x.1)
                .unwrap_or(-1);
            (fd as u64, id.offset)
        }
        _ => {
            flags |= libc::MAP_ANONYMOUS;
            (u64::MAX, 0)
        }
    };
    let name = if r.name.is_empty() {
        "anonymous memory".to_string()
    } else {
        r.name.clone()
    };
    ops.push(Op::new(
        libc::SYS_mmap,
        &[r.start, r.len(), initial as u64, flags as u64, fd, offset],
        Expect::Value(r.start),
        format!("map {name} at {:#x}", r.start),
    ));
    // Advice first: with MADV_HUGEPAGE in force, the reads below fault in huge pages.
    for advice in &r.advice {
        ops.push(Op::new(
            libc::SYS_madvise,
            &[r.start, r.len(), advice_code(*advice)],
            Expect::Anything,
            "madvise",
        ));
    }
    if !matches!(r.backing, Backing::File(_)) {
        populate_ops(&r.runs, ops);
    }
    const MAX_READ: u64 = 1 << 30;
    for run in &r.runs {
        let source = run.image.unwrap_or(own_seq);
        let pages_fd = fds.pages_fds[&source];
        let mut done = 0;
        while done < run.len {
            let n = (run.len - done).min(MAX_READ);
            ops.push(Op::new(
                libc::SYS_pread64,
                &[pages_fd as u64, run.addr + done, n, run.offset + done],
                Expect::Value(n),
                format!("read {n} bytes of {name} from pages.bin of image {source}"),
            ));
            done += n;
        }
    }
    if initial != prot {
        ops.push(Op::new(
            libc::SYS_mprotect,
            &[r.start, r.len(), prot as u64],
            Expect::Success,
            format!("protect {name}"),
        ));
    }
}

/// Pre-faults the memory `runs` are read into, in bulk: one `MADV_POPULATE_WRITE` costs a
/// fraction of faulting page by page inside `pread` (a third, for 1 GiB here). Only pages
/// the image fills, so a sparse region stays sparse; small runs are not worth an op.
fn populate_ops(runs: &[PageRun], ops: &mut Vec<Op>) {
    const MADV_POPULATE_WRITE: u64 = 23;
    const MIN_BYTES: u64 = 256 << 10;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for run in runs {
        match ranges.last_mut() {
            Some((start, len)) if *start + *len == run.addr => *len += run.len,
            _ => ranges.push((run.addr, run.len)),
        }
    }
    for (start, len) in ranges.into_iter().filter(|r| r.1 >= MIN_BYTES) {
        ops.push(Op::new(
            libc::SYS_madvise,
            &[start, len, MADV_POPULATE_WRITE],
            Expect::Anything,
            "madvise(MADV_POPULATE_WRITE)",
        ));
    }
}

fn advice_code(a: Advice) -> u64 {
    (match a {
        Advice::HugePage => libc::MADV_HUGEPAGE,
        Advice::NoHugePage => libc::MADV_NOHUGEPAGE,
        Advice::DontFork => libc::MADV_DONTFORK,
        Advice::WipeOnFork => libc::MADV_WIPEONFORK,
        Advice::DontDump => libc::MADV_DONTDUMP,
    }) as u64
}

fn child_plan(
    m: &Manifest,
    fds: &FdPlan,
    area: &StubArea,
    report: *mut ChildFailure,
    sync_fd: i32,
) -> Result<ChildPlan, RestoreError> {
    let signals = (1..=64)
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
        .map(|s| {
            let a = m.signals.iter().find(|a| a.signo == s);
            (
                s,
                a.map_or([0; 4], |a| [a.handler, a.flags, a.restorer, a.mask]),
            )
        })
        .collect();
    Ok(ChildPlan {
        sync_fd,
        report,
        close_stdio: fds.close_stdio.clone(),
        files: fds.files.clone(),
        cwd: cstring(&m.process.cwd)?,
        umask: m.process.umask,
        signals,
        rlimits: m
            .process
            .rlimits
            .iter()
            .map(|r| (r.resource, r.soft, r.hard))
            .collect(),
        stub_entry: area.stub.entry,
        stub_stack_top: area.stack_top,
    })
}

/// Seizes the child, lets it run the stub, then gives it its final registers.
/// Builds the process up to the point where only letting it run is left.
fn drive_child<'a>(
    child: Pid,
    sync_w: std::os::fd::OwnedFd,
    area: &StubArea,
    process_pending: &[PendingSignal],
    threads: &'a [ThreadState],
) -> Result<Rethreader<'a>, RestoreError> {
    ptrace::seize(child, ptrace::restore_options())?;
    nix::unistd::write(&sync_w, &[1]).map_err(sys_err("release the new process"))?;
    drop(sync_w);
    loop {
        let stop = ptrace::wait_stop(child, "restore")?;
        match stop {
            Stop::Signal(Signal::SIGTRAP) => break,
            Stop::Interrupted | Stop::Event(_) | Stop::Syscall => ptrace::cont(child, None)?,
            Stop::Signal(sig) => return Err(crash_report(child, sig, area)),
            other => return Err(RestoreError::Unexpected(format!("{other:?}"))),
        }
    }
    let regs = ptrace::get_regs(child)?;
    if regs.rip == area.stub.fail_rip {
        let op = &area.ops[regs.r13 as usize];
        return Err(RestoreError::StubOp {
            what: op.what.clone(),
            result: describe_result(regs.rax, op),
        });
    }
    if regs.rip != area.stub.done_rip {
        return Err(RestoreError::Unexpected(format!(
            "SIGTRAP at {:#x}",
            regs.rip
        )));
    }
    // --new-pid: the kernel picked the PID, and picks the other TIDs too.
    let new_ids = child.as_raw() != threads[0].tid;
    let mut last = Rethreader::new(child, area.stub.syscall_gadget, area.data, threads, new_ids)?;
    last.recreate_threads()?;
    last.requeue_signals(process_pending)?;
    Ok(last)
}

/// Where a process under restore crashed, in terms of the stub's program if it was there.
fn crash_report(child: Pid, sig: Signal, area: &StubArea) -> RestoreError {
    let Ok(regs) = ptrace::get_regs(child) else {
        return RestoreError::Unexpected(format!("{sig}"));
    };
    let in_stub = (area.base..area.base + area.len).contains(&regs.rip);
    let op = in_stub
        .then(|| area.ops.get(regs.r13 as usize))
        .flatten()
        .map_or(String::new(), |op| {
            format!(" after op {} '{}'", regs.r13, op.what)
        });
    RestoreError::Unexpected(format!(
        "{sig} at rip {:#x} (stub {}){op}",
        regs.rip,
        if in_stub { "yes" } else { "no" }
    ))
}

fn describe_result(rax: u64, op: &Op) -> String {
    let ret = rax as i64;
    if (-4095..0).contains(&ret) {
        return Errno::from_raw(-ret as i32).desc().to_string();
    }
    match op.expect {
        Expect::Value(want) => format!("returned {ret:#x}, expected {want:#x}"),
        _ => format!("returned {ret}"),
    }
}

/// If the child ended on its own, its report says why.
fn explain_child_exit(
    err: RestoreError,
    report: *const ChildFailure,
    plan: &ChildPlan,
) -> RestoreError {
    // SAFETY: `report` is the shared page mapped in `restore`, still mapped here; the
    // child has been reaped or killed, so nothing writes to it concurrently.
    let failure = unsafe { report.read_volatile() };
    let Some(step) = Step::from_raw(failure.step) else {
        return err;
    };
    let file = |i: u32| {
        plan.files
            .get(i as usize)
            .map(|f| f.path.to_string_lossy().into_owned())
    };
    let what = match step {
        Step::OpenFile | Step::MoveFile | Step::Seek | Step::SetCloexec => {
            format!("reopening {}", file(failure.index).unwrap_or_default())
        }
        Step::Chdir => format!("entering {}", plan.cwd.to_string_lossy()),
        other => format!("{other:?}"),
    };
    RestoreError::Child {
        what,
        source: Errno::from_raw(failure.errno),
    }
}
