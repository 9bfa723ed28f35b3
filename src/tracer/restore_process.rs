//! Restore of one process of the job: its fds and the stub's helpers (`FdPlan`), the
//! restorer stub's program and mapping (`StubArea`), the plan of its first moments
//! (`ChildPlan`), and driving it through the stub to the point where only its threads and
//! final registers are left. `restore` sits above it and handles the job as a tree.

use super::child::{ChildFailure, ChildPlan, Leadership, PlannedFile, PlannedPidfd, Step};
use super::ptrace::{self, SignalNumber, Stop};
use super::restore::{
    OpenObjects, PageSource, PageSources, RestoreError, RestoreOptions, SharedMemories, sys_err,
};
use super::rethread::Rethreader;
use super::stub::{self, Expect, Op};
use super::sys;
use crate::image::attributes::ProcessAttributes;
use crate::image::format::{
    Advice, Backing, Credentials, FdKind, FdState, FileIdentity, Inode, Manifest, MemoryRegion,
    PAGE_SIZE, PageRun, PendingSignal, ProcessState, ProcessView, SignalAction, ThreadState,
};
use crate::objects::ObjectKind;
use crate::objects::contents;
use crate::objects::epoll::EpollItem;
use nix::errno::Errno;
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// Pages of a private file mapping that the process never wrote are read back from the
/// file, so the file must be the one the checkpoint saw.
pub(super) fn check_mapped_file(id: &FileIdentity) -> Result<(), RestoreError> {
    let file_err = |source| RestoreError::File {
        path: id.path.clone(),
        source,
    };
    let meta = contents::open_recorded(&id.path, libc::O_PATH, 0)
        .and_then(|f| f.metadata())
        .map_err(file_err)?;
    let mtime = FileIdentity::mtime_ns_of(&meta);
    if meta.ino() != id.inode {
        return Err(RestoreError::FileChanged {
            path: id.path.clone(),
            what: format!("inode {} -> {}: it was replaced", id.inode, meta.ino()),
        });
    }
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
pub(super) struct VdsoMove {
    name: String,
    current: u64,
    target: u64,
    len: u64,
}

pub(super) fn plan_vdso(regions: &[MemoryRegion]) -> Result<Vec<VdsoMove>, RestoreError> {
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
pub(super) struct FdPlan {
    pub(super) files: Vec<PlannedFile>,
    pub(super) close_stdio: Vec<i32>,
    /// The first fd above the image's own: everything from here on is the stub's.
    pub(super) first_helper_fd: i32,
    /// The pages of this image and of each parent it takes pages from, by seq.
    pub(super) pages_fds: BTreeMap<u64, i32>,
    pub(super) exe_fd: i32,
    /// Fd of each distinct mapped file, by path.
    pub(super) mapped: Vec<(String, i32)>,
    /// Fd of each shared memory object the process maps, by id.
    pub(super) shared_memory: Vec<(u64, i32)>,
    /// Files that grew since the checkpoint, and the size to cut each back to.
    pub(super) cut_back: Vec<(String, u64)>,
    /// Pidfds the process opens itself, once its children exist.
    pub(super) pidfds: Vec<PlannedPidfd>,
    /// Epoll items the process adds once its fds are in place.
    pub(super) epoll_adds: Vec<EpollItem>,
}

pub(super) fn plan_fds(
    p: &ProcessView,
    m: &Manifest,
    pages: &PageSources,
    opts: &RestoreOptions,
    objects: &OpenObjects,
    memories: &SharedMemories,
    created: &BTreeMap<&str, Inode>,
) -> Result<FdPlan, RestoreError> {
    let mut files = Vec::new();
    let mut cut_back = Vec::new();
    let mut pidfds = Vec::new();
    let mut epoll_adds = Vec::new();
    let pid = p.process.pid;
    for fd in p.fds {
        let object = fd
            .object
            .and_then(|id| m.objects.iter().find(|o| o.id == id))
            .map(|o| &o.object);
        match object {
            Some(ObjectKind::Pidfd(target)) => {
                if opts.new_pid {
                    return Err(RestoreError::PidfdNewPid {
                        fd: fd.fd,
                        pid: target.pid,
                    });
                }
                pidfds.push(PlannedPidfd {
                    fd: fd.fd,
                    pid: target.pid,
                    flags: target.flags,
                    cloexec: fd.cloexec,
                });
                continue;
            }
            Some(ObjectKind::Epoll(epoll)) => epoll_adds.extend(epoll.items_of(pid, fd.fd)),
            _ => {}
        }
        // From format 4 on, `Manifest::files` puts written files back.
        if m.format < 4
            && fd.kind == FdKind::File
            && let Some(size) = grown_file(fd)?
            && !opts.keep_files
            && !cut_back.iter().any(|(path, _)| path == &fd.path)
        {
            cut_back.push((fd.path.clone(), size));
        }
        let dup_from = match fd.object {
            Some(id) => Some(object_fd(m, objects, id, pid, fd)?),
            // Images before format 3: stdio is left as the restore command has it.
            None if fd.kind == FdKind::Stdio => continue,
            None => None,
        };
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
            dup_from,
            recorded: true,
            inode: created.get(fd.path.as_str()).copied().or(fd.inode),
        });
    }
    let close_stdio = (0..=2)
        .filter(|n| !p.fds.iter().any(|f| f.fd == *n))
        .collect();
    let mut next = first_fd_above(p.fds);
    let first_helper_fd = next;
    // Paths of the image's files are the user's (may hold symlinks); those of the job's
    // files come from /proc (`recorded`).
    let mut helper = |path: &str,
                      flags: i32,
                      dup_from: Option<i32>,
                      recorded: bool|
     -> Result<i32, RestoreError> {
        let fd = next;
        next += 1;
        files.push(PlannedFile {
            fd,
            path: cstring(path)?,
            flags,
            offset: 0,
            cloexec: true,
            dup_from,
            recorded,
            inode: None,
        });
        Ok(fd)
    };
    let mut pages_fds = BTreeMap::new();
    for seq in std::iter::once(m.seq).chain(m.parents.iter().map(|p| p.seq)) {
        let fd = match pages.get(seq) {
            Some(PageSource::File(path)) => {
                helper(&path.to_string_lossy(), libc::O_RDONLY, None, false)?
            }
            Some(PageSource::Memory { fd, path }) => {
                let what = format!("{} (decompressed in memory)", path.display());
                helper(&what, libc::O_RDONLY, Some(fd.as_raw_fd()), false)?
            }
            None => {
                return Err(RestoreError::Inconsistent(format!(
                    "the pages of image {seq} were not prepared"
                )));
            }
        };
        pages_fds.insert(seq, fd);
    }
    let exe_fd = helper(&p.process.exe, libc::O_RDONLY, None, true)?;
    let mut mapped: Vec<(String, i32)> = Vec::new();
    let mut shared_memory: Vec<(u64, i32)> = Vec::new();
    for region in p.regions {
        match (&region.backing, region.shared_object) {
            (Backing::File(id), _) => {
                // One fd serves every mapping of the file: read-write if any needs it.
                let writes = |r: &MemoryRegion| match &r.backing {
                    Backing::File(other) if other.path == id.path => {
                        r.shared && (r.prot.write || other.may_write)
                    }
                    _ => false,
                };
                let flags = if p.regions.iter().any(writes) {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                if !mapped.iter().any(|(p, _)| p == &id.path) {
                    mapped.push((id.path.clone(), helper(&id.path, flags, None, true)?));
                }
            }
            (Backing::SharedAnonymous, Some(o)) if !shared_memory.iter().any(|s| s.0 == o.id) => {
                let from = memories.fd(o.id);
                shared_memory.push((o.id, helper("shared memory", libc::O_RDWR, from, false)?));
            }
            _ => {}
        }
    }
    Ok(FdPlan {
        files,
        close_stdio,
        first_helper_fd,
        pages_fds,
        exe_fd,
        mapped,
        shared_memory,
        cut_back,
        pidfds,
        epoll_adds,
    })
}

/// The restorer's fd for what `fd` refers to (object `id`).
pub(super) fn object_fd(
    m: &Manifest,
    objects: &OpenObjects,
    id: u64,
    pid: i32,
    fd: &FdState,
) -> Result<i32, RestoreError> {
    let object = m.objects.iter().find(|o| o.id == id);
    let slot = object.map(|o| o.slot(pid, fd));
    slot.and_then(|slot| objects.get(&id)?.get(slot)?.as_ref())
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .ok_or_else(|| {
            RestoreError::Inconsistent(format!(
                "fd {} ({}) refers to object {id}, which the image does not hold",
                fd.fd, fd.path
            ))
        })
}

pub(super) fn cstring(s: &str) -> Result<CString, RestoreError> {
    CString::new(s).map_err(|_| RestoreError::File {
        path: s.into(),
        source: std::io::Error::other("path contains a NUL byte"),
    })
}

/// A file open for writing must look as it did at the checkpoint: one that grew (the job
/// wrote on after the checkpoint, then died) is cut back to the size returned here (see
/// `cut_back`), one that shrank is an error.
pub(super) fn grown_file(fd: &FdState) -> Result<Option<u64>, RestoreError> {
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
pub(super) fn cut_back(files: &[(String, u64)]) -> Result<(), RestoreError> {
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
pub(super) struct StubArea {
    pub(super) base: u64,
    pub(super) len: u64,
    pub(super) stub: stub::Stub,
    pub(super) ops: Vec<Op>,
    pub(super) stack_top: u64,
    /// The data page: scratch for the last remote calls once the stub is done.
    pub(super) data: u64,
    pub(super) mapped_here: bool,
}

const STUB_STACK: u64 = 16 * 1024;
use crate::image::validate::TASK_TOP;

/// The first fd number above the image's own fds (and above stdio).
pub(super) fn first_fd_above(fds: &[FdState]) -> i32 {
    fds.iter()
        .map(|f| f.fd.saturating_add(1))
        .max()
        .unwrap_or(3)
        .max(3)
}

pub(super) fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl StubArea {
    pub(super) fn build(
        p: &ProcessView,
        seq: u64,
        fds: &FdPlan,
        vdso: &[VdsoMove],
    ) -> Result<StubArea, RestoreError> {
        // The op count does not depend on addresses, so size the table with a dry run.
        let dry = Layout::new(0, 0);
        let count = build_ops(p, seq, fds, vdso, &dry)?.len() as u64;
        let table_len = page_up(count * stub::OP_BYTES as u64);
        let scratch_len: u64 = vdso.iter().map(|v| v.len).sum();
        let len = PAGE_SIZE + table_len + PAGE_SIZE + STUB_STACK + scratch_len;
        let base = place(len, p.regions)?;
        let layout = Layout::new(base, table_len);
        let ops = build_ops(p, seq, fds, vdso, &layout.with_len(len))?;
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
        area.fill(&layout, p.process, fds.exe_fd)?;
        sys::make_executable(base as *mut u8, PAGE_SIZE as usize)
            .map_err(sys_err("make the restorer stub executable"))?;
        Ok(area)
    }

    /// Writes code, table and data into the mapping (inherited by the child at clone).
    fn fill(
        &self,
        layout: &Layout,
        process: &ProcessState,
        exe_fd: i32,
    ) -> Result<(), RestoreError> {
        let table = stub::encode_table(&self.ops);
        let data = stub_data(process, layout, exe_fd)?;
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
        Ok(())
    }

    pub(super) fn unmap_here(&mut self) {
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
pub(super) fn place(len: u64, regions: &[MemoryRegion]) -> Result<u64, RestoreError> {
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
    gaps.push((prev, TASK_TOP.max(prev)));
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
pub(super) struct Layout {
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

/// `struct prctl_mm_map` and auxv, as the stub's `PR_SET_MM_MAP` reads them: one page.
pub(super) fn stub_data(
    process: &ProcessState,
    layout: &Layout,
    exe_fd: i32,
) -> Result<Vec<u8>, RestoreError> {
    let mut data = vec![0u8; PAGE_SIZE as usize];
    let room = (data.len() - DATA_AUXV as usize) / 8;
    if process.auxv.len() > room {
        return Err(RestoreError::Inconsistent(format!(
            "process {} has an auxv of {} words, more than the {room} the restorer passes on",
            process.pid,
            process.auxv.len()
        )));
    }
    let mm = &process.mm;
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
    let auxv_bytes = (process.auxv.len() * 8) as u32;
    data[96..100].copy_from_slice(&auxv_bytes.to_le_bytes());
    data[100..104].copy_from_slice(&(exe_fd as u32).to_le_bytes());
    for (i, w) in process.auxv.iter().enumerate() {
        let at = DATA_AUXV as usize + i * 8;
        data[at..at + 8].copy_from_slice(&w.to_le_bytes());
    }
    Ok(data)
}

/// The stub's program.
pub(super) fn build_ops(
    p: &ProcessView,
    seq: u64,
    fds: &FdPlan,
    vdso: &[VdsoMove],
    l: &Layout,
) -> Result<Vec<Op>, RestoreError> {
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
    for region in p.regions.iter().filter(|r| r.backing != Backing::Vdso) {
        region_ops(region, seq, fds, &mut ops)?;
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
    Ok(ops)
}

pub(super) fn mm_map_op(l: &Layout) -> Op {
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

pub(super) fn region_ops(
    r: &MemoryRegion,
    own_seq: u64,
    fds: &FdPlan,
    ops: &mut Vec<Op>,
) -> Result<(), RestoreError> {
    if let Backing::SysvShm(attach) = &r.backing {
        // The restorer filled the segment; the process only attaches it.
        ops.extend(crate::objects::sysv_shm::attach_ops(r, attach));
        advice_ops(r, ops);
        return Ok(());
    }
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
        _ => match r.shared_object.and_then(|o| {
            let fd = fds.shared_memory.iter().find(|s| s.0 == o.id)?.1;
            Some((fd as u64, o.offset))
        }) {
            Some(object) => object,
            None => {
                flags |= libc::MAP_ANONYMOUS;
                (u64::MAX, 0)
            }
        },
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
    advice_ops(r, ops);
    if !matches!(r.backing, Backing::File(_)) {
        populate_ops(&r.runs, ops);
    }
    const MAX_READ: u64 = 1 << 30;
    for run in &r.runs {
        let source = run.image.unwrap_or(own_seq);
        let pages_fd = *fds.pages_fds.get(&source).ok_or_else(|| {
            RestoreError::Inconsistent(format!(
                "pages of {name} at {:#x} are in image {source}, which is not a parent of this one",
                run.addr
            ))
        })?;
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
    Ok(())
}

fn advice_ops(r: &MemoryRegion, ops: &mut Vec<Op>) {
    for advice in &r.advice {
        ops.push(Op::new(
            libc::SYS_madvise,
            &[r.start, r.len(), advice_code(*advice)],
            Expect::Anything,
            "madvise",
        ));
    }
}

/// Pre-faults the memory `runs` are read into, in bulk: one `MADV_POPULATE_WRITE` costs a
/// fraction of faulting page by page inside `pread` (a third, for 1 GiB here). Only pages
/// the image fills, so a sparse region stays sparse; small runs are not worth an op.
pub(super) fn populate_ops(runs: &[PageRun], ops: &mut Vec<Op>) {
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

pub(super) fn advice_code(a: Advice) -> u64 {
    (match a {
        Advice::HugePage => libc::MADV_HUGEPAGE,
        Advice::NoHugePage => libc::MADV_NOHUGEPAGE,
        Advice::DontFork => libc::MADV_DONTFORK,
        Advice::WipeOnFork => libc::MADV_WIPEONFORK,
        Advice::DontDump => libc::MADV_DONTDUMP,
    }) as u64
}

pub(super) fn child_plan(
    p: &ProcessView,
    fds: &FdPlan,
    area: &StubArea,
    report: *mut ChildFailure,
    object_floor: i32,
) -> Result<ChildPlan, RestoreError> {
    let signals = (1..=64)
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
        .map(|s| {
            let a = p.signals.iter().find(|a| a.signo == s);
            (
                s,
                a.map_or([0; 4], |a| [a.handler, a.flags, a.restorer, a.mask]),
            )
        })
        .collect();
    let links = p.process.tree;
    let pid = p.process.pid;
    let leadership = if links.sid == pid {
        Leadership::Session
    } else if links.pgid == pid {
        Leadership::Group
    } else {
        Leadership::None
    };
    Ok(ChildPlan {
        sync_fd: None,
        unregister_rseq: false,
        leadership,
        terminal: super::child::TerminalSteps::default(),
        child_subreaper: p.process.child_subreaper,
        parent_death_signal: p.process.parent_death_signal,
        spawn: Vec::new(),
        object_floor,
        report,
        close_stdio: fds.close_stdio.clone(),
        files: fds.files.clone(),
        pidfds: fds.pidfds.clone(),
        epoll_adds: fds.epoll_adds.clone(),
        cwd: cstring(&p.process.cwd)?,
        umask: p.process.umask,
        signals,
        rlimits: p
            .process
            .rlimits
            .iter()
            .map(|r| (r.resource, r.soft, r.hard))
            .collect(),
        stub_entry: area.stub.entry,
        stub_stack_top: area.stack_top,
    })
}

/// Lets a seized process under restore run the stub, then recreates its threads.
pub(super) fn drive_child<'a>(
    child: Pid,
    area: &StubArea,
    process_pending: &[PendingSignal],
    threads: &'a [ThreadState],
    credentials: Option<&Credentials>,
    last_steps: (&ProcessAttributes, &[SignalAction]),
) -> Result<Rethreader<'a>, RestoreError> {
    loop {
        let stop = ptrace::wait_stop(child, "restore")?;
        match stop {
            Stop::Signal(SignalNumber::SIGTRAP) => break,
            Stop::Interrupted | Stop::Event(_) | Stop::Syscall => ptrace::cont(child, None)?,
            Stop::Signal(sig) => return Err(crash_report(child, sig, area)),
            other => return Err(RestoreError::Unexpected(format!("{other:?}"))),
        }
    }
    let regs = ptrace::get_regs(child)?;
    if regs.rip == area.stub.fail_rip {
        let op = area
            .ops
            .get(usize::try_from(regs.r13).unwrap_or(usize::MAX))
            .ok_or_else(|| RestoreError::Unexpected(format!("stub failed at op {}", regs.r13)))?;
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
    let leader = threads.first().ok_or(RestoreError::NoThreads)?;
    let new_ids = child.as_raw() != leader.tid;
    let mut last = Rethreader::new(child, area.stub.syscall_gadget, area.data, threads, new_ids)?;
    let (attributes, signals) = last_steps;
    last.recreate_threads(credentials, attributes)?;
    last.requeue_signals(process_pending)?;
    super::attributes::restore_last(&mut last, attributes, signals)?;
    Ok(last)
}

/// Where a process under restore crashed, in terms of the stub's program if it was there.
pub(super) fn crash_report(child: Pid, sig: SignalNumber, area: &StubArea) -> RestoreError {
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

pub(super) fn describe_result(rax: u64, op: &Op) -> String {
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
pub(super) fn explain_child_exit(
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
        Step::OpenFile if file(failure.index).as_deref() == Some("/dev/tty") => {
            "reopening /dev/tty, the process's controlling terminal: it has none (restore from \
             a terminal)"
                .into()
        }
        Step::OpenFile | Step::MoveFile | Step::Seek | Step::SetCloexec | Step::DupObject => {
            format!("reopening {}", file(failure.index).unwrap_or_default())
        }
        Step::FileIdentity => format!(
            "reopening {}: it is not the file the job had (replaced since the checkpoint)",
            file(failure.index).unwrap_or_default()
        ),
        Step::Chdir => format!("entering {}", plan.cwd.to_string_lossy()),
        Step::Pidfd => {
            let p = plan.pidfds.get(failure.index as usize);
            p.map_or(String::new(), |p| {
                format!("opening fd {} as a pidfd of process {}", p.fd, p.pid)
            })
        }
        Step::EpollAdd => {
            let i = plan.epoll_adds.get(failure.index as usize);
            i.map_or(String::new(), |i| {
                format!("adding fd {} to the epoll at fd {}", i.fd, i.epfd)
            })
        }
        Step::ControllingTerminal => {
            "making the restored pty its session's controlling terminal".into()
        }
        Step::ForegroundGroup => {
            "putting its process group in the foreground of its terminal".into()
        }
        Step::Spawn | Step::ProcessGroup | Step::ReapWait => {
            let pid = plan.spawn.get(failure.index as usize).map_or(0, |s| s.pid);
            match step {
                Step::Spawn => format!("creating process {pid}"),
                Step::ProcessGroup => format!("putting process {pid} into its process group"),
                _ => format!("waiting for zombie {pid} to exit"),
            }
        }
        other => format!("{other:?}"),
    };
    RestoreError::Child {
        what,
        source: Errno::from_raw(failure.errno),
    }
}
