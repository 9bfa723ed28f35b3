//! Restore of a job: fresh processes (same PIDs, same tree) become the image's processes.
//! This level checks the whole image, creates the objects the processes share (pipes,
//! sockets, shared files and memory), plans each process (`restore_process`), creates the
//! root, which forks the others (`child`), lets each run its restorer stub (`stub`) and
//! gives them their threads and final registers (`rethread`), then lets them all go.

use super::child::{ChildFailure, ChildPlan, Spawn, Spawned, child_main};
use super::memory::MemoryError;
use super::precopy;
use super::ptrace::{self, PtraceError};
use super::remote::RemoteError;
use super::restore_process::{
    FdPlan, StubArea, check_mapped_file, child_plan, cut_back, drive_child, explain_child_exit,
    first_fd_above, plan_fds, plan_vdso,
};
use super::rethread::Rethreader;
use super::sys;
use super::tracker::WriteTracker;
use crate::image::Image;
use crate::image::compress::UnpackedPages;
use crate::image::format::{Backing, Credentials, Inode, Manifest, ProcessView};
use crate::image::verify::VerifyError;
use crate::objects::contents::PutBack;
use crate::objects::sysv_shm::Recreated as SysvSegments;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

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
        "the image holds {image} bytes of register state (xstate) per thread, this CPU/kernel \
         takes at most {here}; restore on a node with the same CPU type"
    )]
    Xstate { image: u32, here: u32 },
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
    #[error(
        "the image holds {0} processes; --new-pid restores a single process only (the          others' PIDs are kept in their parents' memory). Free the PIDs instead"
    )]
    TreeNewPid(usize),
    #[error(
        "the image was authenticated by uid {signer}'s key but would run process {pid} {what}: \
         a user's key can only make processes of that user. Refused"
    )]
    Untrusted { signer: u32, pid: i32, what: String },
    #[error("the image is inconsistent: {0}")]
    Inconsistent(String),
    #[error(
        "fd {fd} is a pidfd of the process itself, which --new-pid would give another PID; \
         free PID {pid} and restore without --new-pid"
    )]
    PidfdNewPid { fd: i32, pid: i32 },
    #[error(transparent)]
    Objects(#[from] crate::objects::ObjectError),
    #[error(transparent)]
    Attributes(#[from] super::attributes::AttributeError),
    #[error(transparent)]
    Files(#[from] crate::objects::contents::FileError),
    #[error(transparent)]
    Sysv(#[from] crate::objects::sysv_shm::SysvError),
    #[error(transparent)]
    Locks(#[from] crate::objects::locks::LockError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Invalid(#[from] crate::image::validate::InvalidManifest),
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

pub(super) fn sys_err(what: &'static str) -> impl FnOnce(Errno) -> RestoreError {
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
    /// What does not come back as it was (a pty's name, a terminal the restore lacks).
    pub warnings: Vec<String>,
    /// Its write tracker (with `track_writes`, when the kernel allows tracking).
    pub tracker: Option<WriteTracker>,
}

/// Rebuilds the image's processes (the job's root as a child of the caller, the others
/// under it as they were) and lets them run.
/// `unpacked` holds the pages of the image and parents that are stored compressed,
/// decompressed and verified (`PageCheck::unpack_compressed`): they are read from there,
/// every other image's from its `pages.bin`.
/// `pages_verified` says whether the image's page contents are intact (the caller may be
/// checking them while they are read): it is asked before anything that cannot be undone,
/// cutting back files or letting the processes run; on failure they are killed. A restore
/// that fails before it asked asks anyway: damaged pages (of the image or a parent) are
/// then the error, so that `restore --auto` passes over the image instead of stopping.
pub fn restore(
    image: &Image,
    unpacked: &UnpackedPages,
    opts: &RestoreOptions,
    pages_verified: impl FnOnce() -> Result<(), VerifyError>,
) -> Result<Restored, RestoreError> {
    let mut check = Some(pages_verified);
    let mut verified = || check.take().map_or(Ok(()), |verify| verify());
    let result = rebuild(image, unpacked, opts, &mut verified);
    match (result, verified()) {
        (Err(_), Err(damage)) => Err(RestoreError::Verify(damage)),
        (result, _) => result,
    }
}

fn rebuild(
    image: &Image,
    unpacked: &UnpackedPages,
    opts: &RestoreOptions,
    pages_verified: &mut dyn FnMut() -> Result<(), VerifyError>,
) -> Result<Restored, RestoreError> {
    let m = &image.manifest;
    // The reader validated it; an image built by other means is checked here all the same.
    crate::image::validate::validate(m)?;
    let procs = m.processes();
    if procs.iter().any(|p| p.threads.is_empty()) {
        return Err(RestoreError::NoThreads);
    }
    if opts.new_pid && m.process_count() > 1 {
        return Err(RestoreError::TreeNewPid(m.process_count()));
    }
    preflight(m, &procs, opts)?;
    check_trust(image, &procs)?;
    let sysv_leftovers = SysvSegments::leftovers(m)?;
    let put_back = m
        .files
        .iter()
        .map(|f| f.check(opts.keep_files))
        .collect::<Result<Vec<_>, _>>()?;
    let created: BTreeMap<&str, Inode> = put_back
        .iter()
        .filter_map(|p| Some((p.path(), p.created?)))
        .collect();
    let floor = object_floor(m, &procs);
    sys::raise_fd_limit(floor + 4 * (m.objects.len() as i32 + 16))
        .map_err(sys_err("raise the open file limit"))?;
    let pages = |seq: Option<u64>| {
        let seq = seq.unwrap_or(m.seq);
        match unpacked.get(seq) {
            Some(memory) => memory.try_clone_to_owned().map(std::fs::File::from),
            None => std::fs::File::open(pages_path(image, seq)),
        }
    };
    let mut warnings = Vec::new();
    let (objects, mapped_files) = open_objects(m, floor, &pages, &mut warnings)?;
    let terminals = crate::objects::tty::Handover::prepare(&m.objects, &mut warnings);
    let memories = SharedMemories::create(&procs, floor, mapped_files)?;
    let page_sources = PageSources::new(image, unpacked, floor)?;
    let mut fd_plans = Vec::with_capacity(procs.len());
    let mut areas = Vec::with_capacity(procs.len());
    for p in &procs {
        let fds = plan_fds(p, m, &page_sources, opts, &objects, &memories, &created)?;
        let vdso = plan_vdso(p.regions)?;
        areas.push(StubArea::build(p, m.seq, &fds, &vdso)?);
        fd_plans.push(fds);
    }
    if !sysv_leftovers.is_empty() {
        // Removing them cannot be undone: only for an image known to be intact.
        pages_verified()?;
    }
    let pages = |seq: Option<u64>| open_pages(image, unpacked, seq);
    let segments = SysvSegments::create(m, &procs, &sysv_leftovers, &pages)?;
    let reports = Reports::map(procs.len())?;
    let (sync_r, sync_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("create sync pipe"))?;
    let plans = child_plans(
        m,
        &procs,
        &fd_plans,
        &areas,
        &reports,
        std::os::fd::AsRawFd::as_raw_fd(&sync_r),
        floor,
    )?;
    let mut plans = plans;
    for (plan, p) in plans.iter_mut().zip(&procs) {
        let sid = p.process.tree.sid;
        let own_session = procs.iter().any(|q| q.process.pid == sid);
        let fd_of = |id: u64, slot: usize| {
            let fd = objects.get(&id)?.get(slot)?.as_ref()?;
            Some(fd.as_raw_fd())
        };
        plan.terminal = terminals.steps(&m.objects, p.process.pid, own_session, fd_of);
    }
    let wanted = (!opts.new_pid).then_some(m.process.pid);
    let child = match sys::clone3_fork(wanted) {
        Ok(0) => child_main(&plans, 0),
        Ok(pid) => Pid::from_raw(pid),
        Err(Errno::EEXIST) => return Err(pid_taken(m.process.pid)),
        Err(e) => return Err(sys_err("clone3 with the image's PID")(e)),
    };
    // The root holds them now, and hands them to the processes it forks.
    drop((sync_r, objects, memories, page_sources));
    for area in &mut areas {
        area.unmap_here();
    }
    let pids: Vec<Pid> = std::iter::once(child)
        .chain(procs[1..].iter().map(|p| Pid::from_raw(p.process.pid)))
        .collect();
    let outcome =
        drive_all(&pids, sync_w, &areas, &procs, &reports, &plans).and_then(|mut rebuilt| {
            // Their fds are in place, none of their threads has run.
            for (last, p) in rebuilt.iter_mut().zip(&procs) {
                let pid = p.process.pid;
                crate::objects::locks::retake(
                    &mut last.main,
                    &last.mem,
                    last.scratch,
                    pid,
                    &m.locks,
                )?;
            }
            // Before the wait for the page check, which it may overlap.
            let tracker = opts
                .track_writes
                .then(|| track_writes(image, &mut rebuilt[0], &areas[0]))
                .flatten();
            pages_verified()?;
            for fds in &fd_plans {
                cut_back(&fds.cut_back)?;
            }
            if !opts.keep_files {
                for file in &put_back {
                    file.apply(&pages)?;
                }
            }
            segments.attached()?;
            terminals.apply()?;
            // Children first: no process of the job runs before all are complete.
            for ((last, area), p) in rebuilt.into_iter().zip(&areas).zip(&procs).rev() {
                last.release(area.base, area.len, p.process.tree.stopped)?;
            }
            terminals.announce_size();
            Ok(tracker)
        });
    if outcome.is_err() {
        put_back.iter().for_each(PutBack::undo);
        for &pid in pids.iter().rev() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = nix::sys::wait::waitpid(child, None);
    }
    outcome.map(|tracker| Restored {
        pid: child,
        warnings,
        tracker,
    })
}

/// The page data of image `seq` (None: the image itself), decompressed if it is stored
/// compressed.
fn open_pages(
    image: &Image,
    unpacked: &UnpackedPages,
    seq: Option<u64>,
) -> std::io::Result<std::fs::File> {
    let seq = seq.unwrap_or(image.manifest.seq);
    match unpacked.get(seq) {
        Some(memory) => memory.try_clone_to_owned().map(std::fs::File::from),
        None => std::fs::File::open(pages_path(image, seq)),
    }
}

/// `pages.bin` of image `seq`: the image itself, or one of its parents beside it.
fn pages_path(image: &Image, seq: u64) -> PathBuf {
    if seq == image.manifest.seq {
        image.pages_path()
    } else {
        image.parent_dir(seq).join(crate::image::format::PAGES_FILE)
    }
}

/// Where each process's restorer stub reads the pages of the image and of each parent:
/// `pages.bin` by path, opened by the process itself; or, for pages stored compressed,
/// the memory file they were decompressed into, which the restorer holds at `floor` or
/// above, so that every process of the job inherits it (the process duplicates it into
/// place; a path like `/proc/self/fd/N` would name the process's own fd table, not ours).
pub(super) struct PageSources {
    by_seq: BTreeMap<u64, PageSource>,
}

pub(super) enum PageSource {
    File(PathBuf),
    /// Decompressed pages; the path names them in messages.
    Memory {
        fd: OwnedFd,
        path: PathBuf,
    },
}

impl PageSources {
    fn new(image: &Image, unpacked: &UnpackedPages, floor: i32) -> Result<Self, RestoreError> {
        let m = &image.manifest;
        let mut by_seq = BTreeMap::new();
        for seq in std::iter::once(m.seq).chain(m.parents.iter().map(|p| p.seq)) {
            let path = pages_path(image, seq);
            let source = match unpacked.get(seq) {
                None => PageSource::File(path),
                Some(memory) => PageSource::Memory {
                    fd: sys::dup_at_least(memory.as_raw_fd(), floor)
                        .map_err(sys_err("duplicate decompressed pages above the job's fds"))?,
                    path: path.with_file_name(crate::image::format::PAGES_ZSTD_FILE),
                },
            };
            by_seq.insert(seq, source);
        }
        Ok(PageSources { by_seq })
    }

    /// The pages of image `seq` (this image or a parent).
    pub(super) fn get(&self, seq: u64) -> Option<&PageSource> {
        self.by_seq.get(&seq)
    }
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

/// Whether `pid` is free. A zombie handed to init (the job's processes, orphaned when it
/// was killed) is waited for a little: init reaps it, but not always at once.
fn pid_free(pid: i32) -> bool {
    const ZOMBIE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let began = std::time::Instant::now();
    loop {
        match super::tree::stat(pid) {
            None => return true,
            Some(s) if s.state == 'Z' && s.links.ppid == 1 && began.elapsed() < ZOMBIE_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Some(_) => return false,
        }
    }
}

fn preflight(
    m: &Manifest,
    procs: &[ProcessView],
    opts: &RestoreOptions,
) -> Result<(), RestoreError> {
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
    let xstate_here = sys::xstate_size();
    if xstate_here > 0 && m.cpu.xstate_size > xstate_here {
        return Err(RestoreError::Xstate {
            image: m.cpu.xstate_size,
            here: xstate_here,
        });
    }
    let pids = procs
        .iter()
        .map(|p| p.process.pid)
        .chain(m.zombies.iter().map(|z| z.pid));
    for pid in pids {
        if !opts.new_pid && !pid_free(pid) {
            return Err(pid_taken(pid));
        }
    }
    // A file the job writes (a shared-writable mapping: a /dev/shm object, say) is the
    // concern of `Manifest::files`, which puts it back, or creates it again if it is gone.
    let written: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    for region in procs.iter().flat_map(|p| p.regions) {
        if let Backing::File(id) = &region.backing
            && !written.contains(&id.path.as_str())
        {
            check_mapped_file(id)?;
        }
    }
    // The files the job's fds reopen must be the ones it had (a file written since is the
    // concern of `Manifest::files`; one replaced, or a symlink put in its way, is refused).
    for fd in procs.iter().flat_map(|p| p.fds) {
        let Some(inode) = fd.inode else { continue };
        if written.contains(&fd.path.as_str()) {
            continue;
        }
        let dir = fd.kind == crate::image::format::FdKind::Directory;
        crate::objects::contents::open_checked(&fd.path, libc::O_PATH, inode, dir)?;
    }
    Ok(())
}

/// An image authenticated by root's key may make any process; one authenticated by user
/// U's key only processes of U: U's uids, U's groups, no capability (else whoever can
/// write U's key or images would get root's processes from root's restore).
fn check_trust(image: &Image, procs: &[ProcessView]) -> Result<(), RestoreError> {
    let signer = image.signer.unwrap_or(u32::MAX);
    if signer == 0 {
        return Ok(());
    }
    let groups = groups_of(signer);
    for p in procs {
        if let Some(what) = beyond_signer(signer, &groups, p.process.credentials.as_ref()) {
            return Err(RestoreError::Untrusted {
                signer,
                pid: p.process.pid,
                what,
            });
        }
    }
    Ok(())
}

/// What credentials `creds` have that user `signer` (in `groups`) does not.
fn beyond_signer(signer: u32, groups: &[u32], creds: Option<&Credentials>) -> Option<String> {
    let Some(c) = creds else {
        return Some("with unrecorded credentials".into());
    };
    if let Some(u) = c.uids.iter().find(|&&u| u != signer) {
        return Some(format!("as uid {u}"));
    }
    if !c.unprivileged() {
        return Some("with capabilities".into());
    }
    let g = c
        .gids
        .iter()
        .chain(&c.groups)
        .find(|g| !groups.contains(g))?;
    Some(format!("in group {g}, which uid {signer} is not in"))
}

/// The groups user `uid` is in (primary and supplementary), from the user database.
fn groups_of(uid: u32) -> Vec<u32> {
    use nix::unistd::{User, getgrouplist};
    let Ok(Some(user)) = User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return vec![user.gid.as_raw()];
    };
    getgrouplist(&name, user.gid)
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()])
}

/// The lowest fd number no process of the job uses, its helpers for the stub included:
/// the objects the restorer creates for the job sit at and above it, so that each process
/// can put them at their numbers without clobbering one it still needs.
fn object_floor(m: &Manifest, procs: &[ProcessView]) -> i32 {
    procs
        .iter()
        .map(|p| {
            let top = first_fd_above(p.fds);
            let mut files: Vec<&str> = Vec::new();
            let mut shm: Vec<u64> = Vec::new();
            for r in p.regions {
                match (&r.backing, r.shared_object) {
                    (Backing::File(id), _) if !files.contains(&id.path.as_str()) => {
                        files.push(&id.path);
                    }
                    (Backing::SharedAnonymous, Some(o)) if !shm.contains(&o.id) => shm.push(o.id),
                    _ => {}
                }
            }
            let helpers = 2 + m.parents.len() + files.len() + shm.len();
            top.saturating_add(i32::try_from(helpers).unwrap_or(i32::MAX))
        })
        .max()
        .unwrap_or(3)
}

/// The job's shared objects, created in the restorer at `floor` and above, by id: the
/// fds to duplicate, by slot.
pub(super) type OpenObjects = BTreeMap<u64, Vec<Option<OwnedFd>>>;

/// Unlinked files (memfds, deleted files) to map, by inode and mapped name.
type MappedFiles = BTreeMap<(u64, String), OwnedFd>;

/// Opens the objects; also returns the fds through which unlinked files are mapped.
fn open_objects(
    m: &Manifest,
    floor: i32,
    pages: &crate::objects::PagesOpener<'_>,
    warnings: &mut Vec<String>,
) -> Result<(OpenObjects, MappedFiles), RestoreError> {
    let mut open = BTreeMap::new();
    let mut mapped = BTreeMap::new();
    for object in &m.objects {
        let opened = object.open(pages, warnings)?;
        let raised = opened
            .slots
            .into_iter()
            .map(|slot| {
                slot.map(|fd| crate::objects::raise_fd(fd, floor))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        open.insert(object.id, raised);
        if let (Some(fd), crate::objects::ObjectKind::Unlinked(u)) =
            (opened.mapping, &object.object)
        {
            mapped.insert(
                (u.inode, u.map_name()),
                crate::objects::raise_fd(fd, floor)?,
            );
        }
    }
    Ok((open, mapped))
}

/// Shared memory objects (shared anonymous memory, deleted shared files), one per object
/// of the image, as fds at `floor` and above: every process's stub maps them from there.
pub(super) struct SharedMemories {
    by_id: BTreeMap<u64, OwnedFd>,
}

impl SharedMemories {
    /// `files`: unlinked files of the image: their mappings map them (one object for fds
    /// and mappings), the others get new shared memory.
    fn create(
        procs: &[ProcessView],
        floor: i32,
        mut files: MappedFiles,
    ) -> Result<SharedMemories, RestoreError> {
        let mut sizes: BTreeMap<u64, (u64, &str)> = BTreeMap::new();
        for r in procs.iter().flat_map(|p| p.regions) {
            if let (Backing::SharedAnonymous, Some(o)) = (&r.backing, r.shared_object) {
                let (end, _) = sizes.entry(o.id).or_insert((0, &r.name));
                *end = (*end).max(o.offset.saturating_add(r.len()));
            }
        }
        let mut by_id = BTreeMap::new();
        for (id, (size, name)) in sizes {
            let fd = match files.remove(&(id, name.to_string())) {
                Some(fd) => fd,
                None => {
                    let fd = shmem_object(size).map_err(sys_err("create shared memory"))?;
                    crate::objects::raise_fd(fd, floor)?
                }
            };
            by_id.insert(id, fd);
        }
        Ok(SharedMemories { by_id })
    }

    pub(super) fn fd(&self, id: u64) -> Option<i32> {
        self.by_id.get(&id).map(std::os::fd::AsRawFd::as_raw_fd)
    }
}

/// A new shared anonymous memory object of `size` bytes, as an fd: mapped once, opened
/// through `/proc/self/map_files` (so mappings of it read as `/dev/zero (deleted)`, like
/// the original's), unmapped again.
fn shmem_object(size: u64) -> Result<OwnedFd, Errno> {
    let len = usize::try_from(size).map_err(|_| Errno::ENOMEM)?;
    let at = sys::map_shared_anonymous(len)?;
    let path = format!(
        "/proc/self/map_files/{:x}-{:x}",
        at as u64,
        at as u64 + size
    );
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)));
    sys::unmap(at, len);
    opened.map(OwnedFd::from)
}

/// The plan of every process of the job, in `procs` order (the root first).
fn child_plans(
    m: &Manifest,
    procs: &[ProcessView],
    fds: &[FdPlan],
    areas: &[StubArea],
    reports: &Reports,
    sync_fd: i32,
    object_floor: i32,
) -> Result<Vec<ChildPlan>, RestoreError> {
    let index_of: BTreeMap<i32, usize> = procs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.process.pid, i))
        .collect();
    let mut spawns: Vec<Vec<Spawn>> = vec![Vec::new(); procs.len()];
    let parent_index = |pid: i32, ppid: i32| {
        index_of.get(&ppid).copied().ok_or_else(|| {
            RestoreError::Inconsistent(format!(
                "process {pid} has parent {ppid}, which is not in the image"
            ))
        })
    };
    for (i, p) in procs.iter().enumerate().skip(1) {
        let links = p.process.tree;
        let pid = p.process.pid;
        let parent = parent_index(pid, links.ppid)?;
        // Parents come before their children in a well-formed image: anything else (a
        // cycle, a process under a later one) would leave a process nobody creates.
        if parent >= i {
            return Err(RestoreError::Inconsistent(format!(
                "process {pid} is listed before its parent {}",
                links.ppid
            )));
        }
        // The parent sets the group, as a shell does: a sibling may join the group before
        // its leader has run at all. A session leader makes its own (`setsid` fails in a
        // group leader).
        let group = if links.sid == pid {
            None
        } else if links.pgid == pid || links.pgid != procs[parent].process.tree.pgid {
            Some(links.pgid)
        } else {
            None
        };
        spawns[parent].push(Spawn {
            pid,
            exit_signal: links.exit_signal,
            group,
            what: Spawned::Process(i),
        });
    }
    for z in &m.zombies {
        spawns[parent_index(z.pid, z.tree.ppid)?].push(Spawn {
            pid: z.pid,
            exit_signal: z.tree.exit_signal,
            group: None,
            what: Spawned::Zombie(z.wait_status),
        });
    }
    let mut plans = Vec::with_capacity(procs.len());
    for (i, (p, mut spawn)) in procs.iter().zip(spawns).enumerate() {
        // Group leaders before the processes that join their groups.
        spawn.sort_by_key(|s| match s.group {
            None => 0,
            Some(g) if g == s.pid => 1,
            Some(_) => 2,
        });
        let mut plan = child_plan(p, &fds[i], &areas[i], reports.slot(i), object_floor)?;
        plan.spawn = spawn;
        if i == 0 {
            plan.sync_fd = Some(sync_fd);
            plan.unregister_rseq = true;
        }
        plans.push(plan);
    }
    Ok(plans)
}

/// One shared page per process, where its restore child reports why it failed.
struct Reports {
    pages: Vec<*mut u8>,
}

impl Reports {
    fn map(count: usize) -> Result<Reports, RestoreError> {
        let mut reports = Reports { pages: Vec::new() };
        for _ in 0..count {
            let page = sys::map_shared_page().map_err(sys_err("map report page"))?;
            reports.pages.push(page);
        }
        Ok(reports)
    }

    fn slot(&self, i: usize) -> *mut ChildFailure {
        self.pages[i].cast()
    }
}

impl Drop for Reports {
    fn drop(&mut self) {
        for &page in &self.pages {
            sys::unmap(page, 4096);
        }
    }
}

/// Seizes the root, then lets each process run its stub in turn (the root forks the others,
/// which start stopped, attached to us) and recreates its threads. Returns every process
/// built up to the point where only letting it run is left, in `pids` order.
fn drive_all<'a>(
    pids: &[Pid],
    sync_w: OwnedFd,
    areas: &[StubArea],
    procs: &[ProcessView<'a>],
    reports: &Reports,
    plans: &[ChildPlan],
) -> Result<Vec<Rethreader<'a>>, RestoreError> {
    ptrace::seize(pids[0], ptrace::restore_options())?;
    nix::unistd::write(&sync_w, &[1]).map_err(sys_err("release the new process"))?;
    drop(sync_w);
    let mut rebuilt = Vec::with_capacity(pids.len());
    for (i, &pid) in pids.iter().enumerate() {
        let p = &procs[i];
        let creds = p.process.credentials.as_ref();
        let last_steps = (&p.process.attributes, p.signals);
        let last = drive_child(
            pid,
            &areas[i],
            &p.process.pending_signals,
            p.threads,
            creds,
            last_steps,
        )
        .map_err(|e| explain_child_exit(e, reports.slot(i), &plans[i]))?;
        rebuilt.push(last);
    }
    Ok(rebuilt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32) -> Credentials {
        Credentials {
            uids: [uid; 4],
            gids: [gid; 4],
            groups: vec![gid],
            ..Credentials::default()
        }
    }

    #[test]
    fn a_users_key_makes_only_that_users_processes() {
        let groups = [1000, 27];
        assert_eq!(beyond_signer(1000, &groups, Some(&user(1000, 1000))), None);
        let as_root = beyond_signer(1000, &groups, Some(&user(0, 0))).unwrap();
        assert!(as_root.contains("uid 0"), "{as_root}");
        let mut setuid = user(1000, 1000);
        setuid.uids[2] = 0;
        assert!(beyond_signer(1000, &groups, Some(&setuid)).is_some());
        let mut capable = user(1000, 1000);
        capable.cap_effective = 1 << 21;
        let caps = beyond_signer(1000, &groups, Some(&capable)).unwrap();
        assert!(caps.contains("capabilities"), "{caps}");
        let mut other_group = user(1000, 1000);
        other_group.groups.push(0);
        let group = beyond_signer(1000, &groups, Some(&other_group)).unwrap();
        assert!(group.contains("group 0"), "{group}");
        assert!(beyond_signer(1000, &groups, None).is_some());
    }
}
