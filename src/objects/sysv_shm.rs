//! System V shared memory segments (`shmget`/`shmat`) the job's processes attach.
//!
//! Checkpoint: an attach shows in the memory map as `/SYSV<key> (deleted)` with the
//! segment's id as inode. Its pages are stored like shared anonymous memory (every page,
//! while frozen); the segment itself (key, id, size, permissions, owner, `IPC_RMID` mark,
//! `SHM_LOCK`) is recorded once in `Manifest::sysv_shm`, from `/proc/sysvipc/shm`, and
//! each attach as a region with `Backing::SysvShm` (read-only or not, executable or not).
//! A segment the job created but does not attach at checkpoint time is invisible from the
//! processes (nothing links it to them but a key in their memory): it is not in the image.
//!
//! Restore: each segment is created again with its id (`/proc/sys/kernel/shm_next_id`
//! before `shmget(key, size, IPC_CREAT | IPC_EXCL | mode)`), given its owner and mode,
//! filled by the restorer from the image, then attached by each process's restorer stub at
//! its address (`shmat`), so that processes sharing a segment share one segment again. A
//! segment that was marked for removal is marked again once every process has attached it.
//!
//! A segment with the same id or key that exists at restore time is never mixed with the
//! image: one nobody attaches, of the same key, id and owner (the job's own, left behind
//! when the job was killed on this node) is removed and created afresh with the
//! checkpoint's contents, once the image is known intact; any other (attached by some
//! process, or someone else's) makes the restore fail, naming it.

// Syscall arguments are registers (an int goes in as its 64-bit value); segment offsets and
// sizes are checked to fit the address space before they are used as such.
#![allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]

use crate::image::format::{Backing, Manifest, MemoryRegion, PAGE_SIZE, ProcessView};
use crate::tracer::stub::{Expect, Op};
use nix::errno::Errno;
use procfs::process::{MMPermissions, MemoryMap, VmFlags};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;

/// Largest segment an image may describe (the kernel's default `shmmax` is far above any
/// memory, so this is a sanity bound: 64 TiB).
pub const MAX_SEGMENT_BYTES: u64 = 1 << 46;
/// `SHM_DEST`: marked for removal (`IPC_RMID`) while still attached.
const SHM_DEST: u32 = 0o1000;
/// `SHM_LOCKED`: locked in memory (`SHM_LOCK`).
const SHM_LOCKED: u32 = 0o2000;
const SHM_NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";
const SYSVIPC_SHM: &str = "/proc/sysvipc/shm";

/// One attach of a segment (`Backing::SysvShm`); the region's `shared_object.offset` is
/// its offset in the segment.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SysvAttach {
    pub shmid: i32,
    /// Attached with `SHM_RDONLY` (the mapping may never be made writable).
    pub read_only: bool,
    /// Executable: attached with `SHM_EXEC`. (Any attach may be made executable later:
    /// VmFlags show `me` for every attach, the shm mount being executable.)
    pub exec: bool,
}

/// A segment as the checkpoint saw it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SysvSegment {
    pub shmid: i32,
    /// `IPC_PRIVATE` (0) for a private segment, and for one marked for removal.
    pub key: i32,
    pub size: u64,
    /// Permission bits with `SHM_DEST` and `SHM_LOCKED`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl SysvSegment {
    fn removed(&self) -> bool {
        self.mode & SHM_DEST != 0
    }

    fn locked(&self) -> bool {
        self.mode & SHM_LOCKED != 0
    }

    /// Bytes an attach maps.
    fn mapped_len(&self) -> u64 {
        self.size.div_ceil(PAGE_SIZE) * PAGE_SIZE
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SysvError {
    #[error("cannot read {SYSVIPC_SHM}: {0}")]
    Table(#[source] std::io::Error),
    #[error("{SYSVIPC_SHM} has an unexpected line: {0}")]
    Parse(String),
    #[error(
        "{} System V shared memory attach(es) of the job cannot be checkpointed:{}",
        .0.len(), .0.iter().map(|p| format!("\n  - {p}")).collect::<String>()
    )]
    Unsupported(Vec<String>),
    #[error("{}", .0.join("; "))]
    Conflict(Vec<String>),
    #[error("cannot recreate System V segment {shmid} while {what}")]
    Recreate {
        shmid: i32,
        what: String,
        #[source]
        source: Errno,
    },
    #[error("cannot read the pages of System V segment {shmid} from the image")]
    Pages {
        shmid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// How a `/SYSV...` mapping is stored: every page (the segment may outlive the job's
/// processes' own pages). Huge-page segments (`SHM_HUGETLB`) are refused.
pub fn backing(pid: i32, map: &MemoryMap, flags: Option<VmFlags>) -> Result<Backing, SysvError> {
    let Ok(shmid) = i32::try_from(map.inode) else {
        return Err(SysvError::Parse(format!("segment id {}", map.inode)));
    };
    if flags.is_some_and(|f| f.contains(VmFlags::HT)) {
        return Err(SysvError::Unsupported(vec![format!(
            "process {pid} attaches segment {shmid} at {:#x}: a huge-page segment \
             (SHM_HUGETLB) is not supported; detach it before the checkpoint",
            map.address.0
        )]));
    }
    // Flags unknown (the map changed since smaps was read): what it allows now.
    let may = |flag: VmFlags, now: MMPermissions| {
        flags.map_or(map.perms.contains(now), |f| f.contains(flag))
    };
    Ok(Backing::SysvShm(SysvAttach {
        shmid,
        read_only: !may(VmFlags::MW, MMPermissions::WRITE),
        exec: map.perms.contains(MMPermissions::EXECUTE),
    }))
}

/// A line of `/proc/sysvipc/shm`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    segment: SysvSegment,
    nattch: u64,
    lpid: i32,
}

fn parse_table(text: &str) -> Result<Vec<Listed>, SysvError> {
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || SysvError::Parse(line.to_string());
        if f.len() < 9 {
            return Err(bad());
        }
        let num = |i: usize| f[i].parse::<i64>().map_err(|_| bad());
        let mode = u32::from_str_radix(f[2], 8).map_err(|_| bad())?;
        out.push(Listed {
            segment: SysvSegment {
                key: i32::try_from(num(0)?).map_err(|_| bad())?,
                shmid: i32::try_from(num(1)?).map_err(|_| bad())?,
                mode,
                size: u64::try_from(num(3)?).map_err(|_| bad())?,
                uid: u32::try_from(num(7)?).map_err(|_| bad())?,
                gid: u32::try_from(num(8)?).map_err(|_| bad())?,
            },
            lpid: i32::try_from(num(5)?).map_err(|_| bad())?,
            nattch: u64::try_from(num(6)?).map_err(|_| bad())?,
        });
    }
    Ok(out)
}

fn read_table() -> Result<Vec<Listed>, SysvError> {
    parse_table(&std::fs::read_to_string(SYSVIPC_SHM).map_err(SysvError::Table)?)
}

/// The segments the job's processes (`(pid, regions)`) attach, once each. Fails listing
/// every attach a restore could not make again: part of it unmapped, or a segment that
/// is gone from the table.
pub fn capture(processes: &[(i32, Vec<&MemoryRegion>)]) -> Result<Vec<SysvSegment>, SysvError> {
    let used: BTreeSet<i32> = processes
        .iter()
        .flat_map(|(_, rs)| rs.iter())
        .filter_map(|r| attach_of(r))
        .map(|a| a.shmid)
        .collect();
    if used.is_empty() {
        return Ok(Vec::new());
    }
    let table = read_table()?;
    let mut segments = Vec::new();
    let mut problems = Vec::new();
    for shmid in used {
        match table.iter().find(|l| l.segment.shmid == shmid) {
            Some(l) => segments.push(l.segment.clone()),
            None => problems.push(format!("segment {shmid} is not in {SYSVIPC_SHM}")),
        }
    }
    for (pid, regions) in processes {
        problems.extend(whole_attaches(*pid, regions, &segments));
    }
    if problems.is_empty() {
        Ok(segments)
    } else {
        Err(SysvError::Unsupported(problems))
    }
}

fn attach_of(r: &MemoryRegion) -> Option<&SysvAttach> {
    match &r.backing {
        Backing::SysvShm(a) => Some(a),
        _ => None,
    }
}

/// Offset in the segment of a region of it.
fn offset_of(r: &MemoryRegion) -> u64 {
    r.shared_object.map_or(0, |o| o.offset)
}

/// Problems with the attaches of one process: each must be whole (a restore attaches the
/// whole segment at once): pieces that follow each other from offset 0 to its end, with
/// one attach mode.
fn whole_attaches(pid: i32, regions: &[&MemoryRegion], segments: &[SysvSegment]) -> Vec<String> {
    let cut = |seg: &SysvSegment, base: u64, mapped: u64| {
        format!(
            "process {pid} attaches segment {} at {base:#x} but part of it was unmapped \
             (only {mapped:#x} of {:#x} bytes are mapped); restore cannot attach part of a \
             segment: keep the whole attach or detach it",
            seg.shmid,
            seg.mapped_len()
        )
    };
    let mut problems = Vec::new();
    // The attach being followed: its segment, its base address, where the next piece starts.
    let mut open: Option<(&SysvAttach, &SysvSegment, u64, u64)> = None;
    for &r in regions {
        let attach = attach_of(r);
        if let Some((a, seg, base, next)) = open.take() {
            let continues = attach == Some(a) && r.start == next && offset_of(r) == next - base;
            if continues {
                open = (r.end - base < seg.mapped_len()).then_some((a, seg, base, r.end));
                continue;
            }
            problems.push(cut(seg, base, next - base));
        }
        let Some(a) = attach else { continue };
        let Some(seg) = segments.iter().find(|s| s.shmid == a.shmid) else {
            continue;
        };
        if offset_of(r) != 0 {
            problems.push(format!(
                "process {pid} maps segment {} from offset {:#x} at {:#x}: the start of the \
                 attach was unmapped; restore cannot attach part of a segment",
                a.shmid,
                offset_of(r),
                r.start
            ));
            continue;
        }
        if r.len() < seg.mapped_len() {
            open = Some((a, seg, r.start, r.end));
        }
    }
    if let Some((_, seg, base, next)) = open {
        problems.push(cut(seg, base, next - base));
    }
    problems
}

/// What is wrong with the image's segments and attaches (field, problem), for the
/// manifest validator.
pub fn problems(m: &Manifest) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, s) in m.sysv_shm.iter().enumerate() {
        let at = format!("sysv_shm[{i}]");
        if s.shmid < 0 || !ids.insert(s.shmid) {
            out.push((
                format!("{at}.shmid"),
                format!("{} is negative or listed twice", s.shmid),
            ));
        }
        if s.size == 0 || s.size > MAX_SEGMENT_BYTES {
            out.push((
                format!("{at}.size"),
                format!(
                    "{} bytes is not a segment size (1..={MAX_SEGMENT_BYTES})",
                    s.size
                ),
            ));
        }
        if s.mode > 0o7777 {
            out.push((
                format!("{at}.mode"),
                format!("{:#o} is not a segment mode", s.mode),
            ));
        }
    }
    let procs = m.processes();
    for (i, s) in m.sysv_shm.iter().enumerate() {
        // A restore fills the segment from its first whole attach: it must hold it all.
        let stored: u64 = first_attach(s, &procs)
            .flat_map(|r| r.runs.iter())
            .map(|run| run.len)
            .sum();
        if stored != s.mapped_len() {
            out.push((
                format!("sysv_shm[{i}]"),
                format!(
                    "the image stores {stored:#x} of its {:#x} bytes (through the attaches of \
                     its processes)",
                    s.mapped_len()
                ),
            ));
        }
    }
    for (p, view) in m.processes().iter().enumerate() {
        let prefix = if p == 0 {
            String::new()
        } else {
            format!("members[{}].", p - 1)
        };
        for (i, r) in view.regions.iter().enumerate() {
            let Some(a) = attach_of(r) else { continue };
            let at = format!("{prefix}regions[{i}]");
            match m.sysv_shm.iter().find(|s| s.shmid == a.shmid) {
                None => out.push((
                    format!("{at}.backing.shmid"),
                    format!("{} is not a segment of the image", a.shmid),
                )),
                Some(s) => {
                    let end = offset_of(r).checked_add(r.len());
                    if r.shared_object.is_none()
                        || end.is_none_or(|e| e > s.mapped_len())
                        || !r.shared
                    {
                        out.push((
                            format!("{at}.shared_object"),
                            "a shared mapping inside its segment is expected".into(),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The stub's ops for a region of an attach: the first piece attaches the whole segment
/// at its address (exactly there: an occupied address is an error, never a silent move);
/// every piece gets its own protection (a piece may have been `mprotect`-ed).
pub fn attach_ops(r: &MemoryRegion, a: &SysvAttach) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut flags = 0;
    let mut attached = libc::PROT_READ;
    if a.read_only {
        flags |= libc::SHM_RDONLY;
    } else {
        attached |= libc::PROT_WRITE;
    }
    if a.exec {
        flags |= libc::SHM_EXEC;
        attached |= libc::PROT_EXEC;
    }
    if offset_of(r) == 0 {
        ops.push(Op::new(
            libc::SYS_shmat,
            &[a.shmid as u64, r.start, flags as u64],
            Expect::Value(r.start),
            format!("attach System V segment {} at {:#x}", a.shmid, r.start),
        ));
    }
    if r.prot.bits() != attached || offset_of(r) != 0 {
        ops.push(Op::new(
            libc::SYS_mprotect,
            &[r.start, r.len(), r.prot.bits() as u64],
            Expect::Success,
            format!("protect System V segment {} at {:#x}", a.shmid, r.start),
        ));
    }
    ops
}

/// The segments of an image, created again: removed again if the restore fails.
pub struct Recreated {
    made: Vec<SysvSegment>,
    kept: bool,
}

/// A segment of the machine in the way of one of the image, and whether it can be
/// replaced (the job's own, attached by nobody).
fn in_the_way(want: &SysvSegment, listed: &[Listed]) -> Result<Option<i32>, String> {
    let clash = listed
        .iter()
        .find(|l| l.segment.shmid == want.shmid || (want.key != 0 && l.segment.key == want.key));
    let Some(l) = clash else { return Ok(None) };
    let have = &l.segment;
    let what = format!(
        "System V segment {} (key {:#x}) of the image: the machine has segment {} \
         (key {:#x}, owner uid {}, {} bytes)",
        want.shmid, want.key, have.shmid, have.key, have.uid, have.size
    );
    if l.nattch > 0 {
        return Err(format!(
            "{what} attached by {} process(es) (last PID {}): it is in use, and replacing it \
             would pull it from under them; stop them or remove it (ipcrm -m {})",
            l.nattch, l.lpid, have.shmid
        ));
    }
    if have.shmid != want.shmid || have.key != want.key || have.uid != want.uid {
        return Err(format!(
            "{what}, which is not the job's; remove it (ipcrm -m {}) if it is not needed",
            have.shmid
        ));
    }
    Ok(Some(have.shmid))
}

impl Recreated {
    /// Checks what is in the way of the image's segments (before anything is created):
    /// the leftovers to replace, or every conflict at once.
    pub fn leftovers(m: &Manifest) -> Result<Vec<i32>, SysvError> {
        if m.sysv_shm.is_empty() {
            return Ok(Vec::new());
        }
        let listed = read_table()?;
        let mut leftovers = Vec::new();
        let mut conflicts = Vec::new();
        for want in &m.sysv_shm {
            match in_the_way(want, &listed) {
                Ok(Some(id)) => leftovers.push(id),
                Ok(None) => {}
                Err(why) => conflicts.push(why),
            }
        }
        if conflicts.is_empty() {
            Ok(leftovers)
        } else {
            Err(SysvError::Conflict(conflicts))
        }
    }

    /// Removes `leftovers` (see `leftovers`; call once the image is known intact), then
    /// creates every segment of the image with its id, owner and mode and fills it from the
    /// regions that attach it. `pages(seq)` opens `pages.bin` of image `seq` (None: this
    /// image).
    pub fn create(
        m: &Manifest,
        procs: &[ProcessView],
        leftovers: &[i32],
        pages: &dyn Fn(Option<u64>) -> std::io::Result<std::fs::File>,
    ) -> Result<Recreated, SysvError> {
        for &id in leftovers {
            remove(id).map_err(|source| SysvError::Recreate {
                shmid: id,
                what: "removing the job's leftover segment".into(),
                source,
            })?;
        }
        let mut made = Recreated {
            made: Vec::new(),
            kept: false,
        };
        for seg in &m.sysv_shm {
            create_one(seg)?;
            made.made.push(seg.clone());
            fill(seg, procs, pages)?;
        }
        Ok(made)
    }

    /// Every process has attached its segments: those marked for removal at checkpoint
    /// time are marked again (they go when the last process detaches), the rest stay.
    pub fn attached(mut self) -> Result<(), SysvError> {
        self.kept = true;
        for seg in self.made.iter().filter(|s| s.removed()) {
            remove(seg.shmid).map_err(|source| SysvError::Recreate {
                shmid: seg.shmid,
                what: "marking it for removal (IPC_RMID) again".into(),
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for Recreated {
    fn drop(&mut self) {
        if !self.kept {
            for seg in &self.made {
                let _ = remove(seg.shmid);
            }
        }
    }
}

fn create_one(seg: &SysvSegment) -> Result<(), SysvError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |source| SysvError::Recreate {
            shmid: seg.shmid,
            what,
            source,
        }
    };
    let io_errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    std::fs::write(SHM_NEXT_ID, seg.shmid.to_string())
        .map_err(io_errno)
        .map_err(err("asking for its id (shm_next_id)"))?;
    let size = usize::try_from(seg.size).map_err(|_| Errno::EFBIG);
    let got = size.and_then(|size| shm_get(seg.key, size, seg.mode & 0o777));
    if got.is_err() {
        // Not consumed: the next segment anyone creates would get the id.
        let _ = std::fs::write(SHM_NEXT_ID, "-1");
    }
    let got = got.map_err(err("creating it (shmget)"))?;
    if got != seg.shmid {
        let _ = remove(got);
        return Err(SysvError::Recreate {
            shmid: seg.shmid,
            what: format!("creating it: the kernel gave id {got} (another process took it)"),
            source: Errno::EEXIST,
        });
    }
    let owned = shm_set_owner(seg.shmid, seg.uid, seg.gid, seg.mode & 0o777)
        .map_err(err("giving it its owner and mode (IPC_SET)"));
    let locked = if seg.locked() {
        shm_lock(seg.shmid).map_err(err("locking it (SHM_LOCK)"))
    } else {
        Ok(())
    };
    if let Err(e) = owned.and(locked) {
        let _ = remove(seg.shmid);
        return Err(e);
    }
    Ok(())
}

/// Every attach is whole and holds every page: the pieces of attaches of `seg` that follow
/// each other from offset 0 (those of the first attach, in address order) hold it once.
fn first_attach<'a>(
    seg: &'a SysvSegment,
    procs: &'a [ProcessView<'a>],
) -> impl Iterator<Item = &'a MemoryRegion> + 'a {
    let mut covered = 0;
    procs
        .iter()
        .flat_map(|p| p.regions.iter())
        .filter(move |r| {
            let next = covered < seg.mapped_len()
                && attach_of(r).is_some_and(|a| a.shmid == seg.shmid)
                && offset_of(r) == covered;
            if next {
                covered += r.len();
            }
            next
        })
}

/// Writes the segment's pages, read from its first attach (see `first_attach`).
fn fill(
    seg: &SysvSegment,
    procs: &[ProcessView],
    pages: &dyn Fn(Option<u64>) -> std::io::Result<std::fs::File>,
) -> Result<(), SysvError> {
    let len = usize::try_from(seg.mapped_len()).map_err(|_| SysvError::Recreate {
        shmid: seg.shmid,
        what: "mapping it".into(),
        source: Errno::EFBIG,
    })?;
    let mut attach = Attached::new(seg.shmid, len).map_err(|source| SysvError::Recreate {
        shmid: seg.shmid,
        what: "attaching it to fill it".into(),
        source,
    })?;
    // Every page of an attach is stored: fault them all in at once, cheaper than page by
    // page inside the reads (as the restorer stub does for the memory it fills).
    attach.populate();
    let mut files: BTreeMap<Option<u64>, std::fs::File> = BTreeMap::new();
    let pages_err = |source| SysvError::Pages {
        shmid: seg.shmid,
        source,
    };
    for r in first_attach(seg, procs) {
        for run in &r.runs {
            let file = match files.entry(run.image) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(pages(run.image).map_err(pages_err)?)
                }
            };
            let at = offset_of(r) + (run.addr - r.start);
            let target = attach.slice(at as usize, run.len as usize).ok_or_else(|| {
                pages_err(std::io::Error::other("a run lies outside the segment"))
            })?;
            file.read_exact_at(target, run.offset).map_err(pages_err)?;
        }
    }
    Ok(())
}

/// The segment attached in the restorer (detached on drop).
struct Attached {
    at: *mut u8,
    len: usize,
}

impl Attached {
    fn new(shmid: i32, len: usize) -> Result<Attached, Errno> {
        // SAFETY: shmat with a null address lets the kernel pick a free range; the pointer
        // is only used within `len` (the segment's mapped size) until `Drop` detaches it.
        let at = unsafe { libc::shmat(shmid, std::ptr::null(), 0) };
        if at as isize == -1 {
            return Err(Errno::last());
        }
        Ok(Attached { at: at.cast(), len })
    }

    /// Allocates every page in one call (best effort: the reads fault in what is left).
    fn populate(&mut self) {
        const MADV_POPULATE_WRITE: i32 = 23;
        // SAFETY: the range is exactly the attach, mapped read-write and owned by `self`;
        // the advice only allocates its pages, it changes no contents.
        unsafe {
            libc::madvise(self.at.cast(), self.len, MADV_POPULATE_WRITE);
        }
    }

    /// Bytes `[offset, offset+len)` of the segment, if inside it.
    fn slice(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        if offset.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: the range lies inside the attach (checked above), which stays mapped
        // read-write until drop; only this restorer thread touches it, one slice at a time.
        Some(unsafe { std::slice::from_raw_parts_mut(self.at.add(offset), len) })
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: `at` is the address shmat returned; no slice of it outlives `self`.
        unsafe {
            libc::shmdt(self.at.cast());
        }
    }
}

fn shm_get(key: i32, size: usize, mode: u32) -> Result<i32, Errno> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32;
    // SAFETY: shmget takes plain values and touches no memory of ours.
    let id = unsafe { libc::shmget(key, size, flags) };
    Errno::result(id)
}

fn shm_ctl(shmid: i32, cmd: i32, buf: Option<&mut libc::shmid_ds>) -> Result<(), Errno> {
    let ptr = buf.map_or(std::ptr::null_mut(), std::ptr::from_mut);
    // SAFETY: `ptr` is null (RMID, LOCK) or a valid, exclusive shmid_ds for the call.
    Errno::result(unsafe { libc::shmctl(shmid, cmd, ptr) }).map(drop)
}

fn remove(shmid: i32) -> Result<(), Errno> {
    shm_ctl(shmid, libc::IPC_RMID, None)
}

fn shm_lock(shmid: i32) -> Result<(), Errno> {
    shm_ctl(shmid, libc::SHM_LOCK, None)
}

fn shm_set_owner(shmid: i32, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
    // SAFETY: shmid_ds is plain data: all zeros is a valid value, IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    shm_ctl(shmid, libc::IPC_STAT, Some(&mut ds))?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (mode & 0o777) as u16;
    shm_ctl(shmid, libc::IPC_SET, Some(&mut ds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::format::{Prot, SharedMemoryRef};

    const TABLE: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
     4660          7   600                 8192   100   101      2     0     0     0     0 1764684000          0 1764684000                  8192                     0
        0          9  1600                 4096   100   100      1  1000  1000     0     0 1764684000          0 1764684000                  4096                     0
";

    #[test]
    fn table_lines_parse() {
        let t = parse_table(TABLE).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0].segment,
            SysvSegment {
                shmid: 7,
                key: 0x1234,
                size: 8192,
                mode: 0o600,
                uid: 0,
                gid: 0
            }
        );
        assert_eq!((t[0].nattch, t[0].lpid), (2, 101));
        assert!(t[1].segment.removed() && !t[0].segment.removed());
        assert!(parse_table("h\n1 2\n").is_err());
    }

    fn attach(start: u64, end: u64, offset: u64) -> MemoryRegion {
        MemoryRegion {
            start,
            end,
            prot: Prot {
                read: true,
                write: true,
                exec: false,
            },
            shared: true,
            backing: Backing::SysvShm(SysvAttach {
                shmid: 7,
                read_only: false,
                exec: false,
            }),
            name: "SYSV00001234".into(),
            grows_down: false,
            advice: Vec::new(),
            runs: Vec::new(),
            hashed: true,
            shared_object: Some(SharedMemoryRef { id: 7, offset }),
        }
    }

    #[test]
    fn attaches_must_be_whole() {
        let seg = parse_table(TABLE).unwrap()[0].segment.clone();
        let segs = [seg];
        let check = |regions: &[MemoryRegion]| {
            let refs: Vec<&MemoryRegion> = regions.iter().collect();
            whole_attaches(1, &refs, &segs).len()
        };
        assert_eq!(check(&[attach(0x10000, 0x12000, 0)]), 0);
        let split = [
            attach(0x10000, 0x11000, 0),
            attach(0x11000, 0x12000, 0x1000),
        ];
        assert_eq!(check(&split), 0);
        assert_eq!(check(&[attach(0x10000, 0x11000, 0)]), 1, "head only");
        assert_eq!(check(&[attach(0x11000, 0x12000, 0x1000)]), 1, "tail only");
        let two = [attach(0x10000, 0x12000, 0), attach(0x20000, 0x22000, 0)];
        assert_eq!(check(&two), 0);
    }

    #[test]
    fn attach_ops_attach_once_and_protect_pieces() {
        let mut ro = attach(0x10000, 0x11000, 0);
        ro.prot.write = false;
        let ops = attach_ops(
            &ro,
            &SysvAttach {
                shmid: 7,
                read_only: false,
                exec: false,
            },
        );
        assert_eq!(ops.len(), 2, "attach then mprotect to read-only");
        assert_eq!(ops[0].args[..3], [7, 0x10000, 0]);
        let tail = attach(0x11000, 0x12000, 0x1000);
        let ops = attach_ops(
            &tail,
            &SysvAttach {
                shmid: 7,
                read_only: false,
                exec: false,
            },
        );
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].nr, libc::SYS_mprotect);
    }

    #[test]
    fn a_segment_in_use_or_not_the_jobs_is_refused() {
        let listed = parse_table(TABLE).unwrap();
        let mut want = listed[0].segment.clone();
        assert!(in_the_way(&want, &listed).unwrap_err().contains("in use"));
        want.shmid = 8;
        assert!(in_the_way(&want, &listed).is_err(), "same key, other id");
        let free = SysvSegment {
            shmid: 9,
            key: 0,
            size: 4096,
            mode: 0o600,
            uid: 1000,
            gid: 1000,
        };
        let mut idle = listed.clone();
        idle[1].nattch = 0;
        assert_eq!(in_the_way(&free, &idle), Ok(Some(9)));
        let other_owner = SysvSegment { uid: 0, ..free };
        assert!(in_the_way(&other_owner, &idle).is_err());
        let elsewhere = SysvSegment {
            shmid: 11,
            key: 0,
            ..other_owner
        };
        assert_eq!(in_the_way(&elsewhere, &idle), Ok(None));
    }
}
