//! Reading a frozen process's state from `/proc`: memory map, files, mm fields, limits.

use super::sys;
use crate::image::format::{
    Advice, Backing, FileIdentity, MemoryRegion, MmFields, ProcessState, Prot, Rlimit,
    SharedMemoryRef,
};
use nix::unistd::Pid;
use procfs::process::{MMPermissions, MMapPath, Process, VmFlags};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read {what} of process {pid}: {message}")]
    Proc {
        pid: i32,
        what: &'static str,
        message: String,
    },
    #[error("process {pid} maps {what} at {start:#x}: mlckpt cannot checkpoint it yet")]
    UnsupportedMapping { pid: i32, what: String, start: u64 },
    #[error(
        "process {pid} maps {path} shared at {start:#x}, with leave to make it writable, but \
         the file cannot be opened read-write ({message}): a restore could not map it so"
    )]
    MappedFileNotWritable {
        pid: i32,
        path: String,
        start: u64,
        message: String,
    },
    #[error(transparent)]
    Sysv(#[from] crate::objects::sysv_shm::SysvError),
}

fn proc_err(pid: Pid, what: &'static str) -> impl FnOnce(String) -> InspectError {
    move |message| InspectError::Proc {
        pid: pid.as_raw(),
        what,
        message,
    }
}

/// Which pages of a region the dump stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorePolicy {
    /// Private memory: only pages holding data of the process's own (written or anonymous).
    PrivateData,
    /// Every page (shared anonymous memory, mappings of deleted files).
    Everything,
    /// Nothing: a shared file mapping (the file holds it) or the vDSO.
    Nothing,
}

/// A region of the map and how to store it.
#[derive(Debug, Clone)]
pub struct RegionPlan {
    pub region: MemoryRegion,
    pub store: StorePolicy,
    /// Whether the region's VmFlags (advice) are known; see `read_regions_with`.
    pub flags_known: bool,
    /// The dump's 16-byte hash of each stored page, in run order.
    pub page_hashes: Vec<u8>,
}

/// What `smaps` said of a region.
#[derive(Debug, Clone, Copy)]
struct Hint {
    flags: VmFlags,
    /// Resident and swapped bytes.
    resident: u64,
    /// Bytes mapped by transparent huge pages.
    huge: u64,
}

/// VmFlags and memory use per address range, read from `smaps` before the freeze: `smaps`
/// walks the page tables (tens of ms for GiBs), the plain map does not.
pub struct FlagHints(HashMap<(u64, u64), Hint>);

impl FlagHints {
    /// Resident (incl. swapped) bytes of the region `range` when the hints were read.
    pub fn resident(&self, range: (u64, u64)) -> Option<u64> {
        self.0.get(&range).map(|h| h.resident)
    }

    /// Hints for one region, for tests elsewhere.
    #[cfg(test)]
    pub fn for_tests(start: u64, end: u64, resident: u64, huge: u64) -> FlagHints {
        let hint = Hint {
            flags: VmFlags::NONE,
            resident,
            huge,
        };
        FlagHints([((start, end), hint)].into_iter().collect())
    }

    /// Regions with memory mapped by transparent huge pages, sorted.
    pub fn huge_regions(&self) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = self
            .0
            .iter()
            .filter(|(_, h)| h.huge > 0)
            .map(|(&range, _)| range)
            .collect();
        ranges.sort_unstable();
        ranges
    }

    /// Bytes of the region `range` mapped by transparent huge pages.
    pub fn huge(&self, range: (u64, u64)) -> Option<u64> {
        self.0.get(&range).map(|h| h.huge)
    }
}

pub fn flag_hints(pid: Pid) -> Result<FlagHints, InspectError> {
    let process = Process::new(pid.as_raw()).map_err(|e| proc_err(pid, "smaps")(e.to_string()))?;
    let maps = process
        .smaps()
        .map_err(|e| proc_err(pid, "smaps")(e.to_string()))?;
    let bytes =
        |m: &procfs::process::MemoryMap, key: &str| m.extension.map.get(key).copied().unwrap_or(0);
    Ok(FlagHints(
        maps.iter()
            .map(|m| {
                let hint = Hint {
                    flags: m.extension.vm_flags,
                    resident: bytes(m, "Rss") + bytes(m, "Swap"),
                    huge: bytes(m, "AnonHugePages"),
                };
                (m.address, hint)
            })
            .collect(),
    ))
}

/// Every mapping of process `pid` a checkpoint cannot take, as messages: checked from the
/// plain map (VmFlags from `hints` where it has them) together with the fds, so that one
/// refusal names them all.
pub fn mapping_refusals(pid: Pid, hints: Option<&FlagHints>) -> Vec<String> {
    let Ok(maps) = Process::new(pid.as_raw()).and_then(|p| p.maps()) else {
        return Vec::new();
    };
    maps.iter()
        .filter_map(|map| {
            let flags = hints.and_then(|h| h.0.get(&map.address)).map(|h| h.flags);
            match classify(pid, &map.pathname, map, map.address.0, flags) {
                Err(
                    e @ (InspectError::UnsupportedMapping { .. }
                    | InspectError::MappedFileNotWritable { .. }),
                ) => Some(e.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// Shared mappings of the `files` (inode, mapped name: memfds, deleted files whose
/// contents the image holds as objects) store no pages: a restore maps the restored file.
pub fn leave_to_files(plans: &mut [RegionPlan], files: &std::collections::BTreeSet<(u64, String)>) {
    for plan in plans {
        let r = &plan.region;
        if r.backing == Backing::SharedAnonymous
            && r.shared_object
                .is_some_and(|o| files.contains(&(o.id, r.name.clone())))
        {
            plan.store = StorePolicy::Nothing;
        }
    }
}

/// The memory map, classified. `[vsyscall]` is left out: every process has the same one.
pub fn read_regions(pid: Pid) -> Result<Vec<RegionPlan>, InspectError> {
    let hints = flag_hints(pid)?;
    read_regions_with(pid, &hints)
}

/// The memory map from the cheap `/proc/PID/maps`, with VmFlags from `hints`. A region
/// whose range is not in `hints` changed after they were read: its flags are unknown, and
/// it is handled conservatively (see `RegionPlan::flags_known`).
pub fn read_regions_with(pid: Pid, hints: &FlagHints) -> Result<Vec<RegionPlan>, InspectError> {
    let process = Process::new(pid.as_raw()).map_err(|e| proc_err(pid, "maps")(e.to_string()))?;
    let maps = process
        .maps()
        .map_err(|e| proc_err(pid, "maps")(e.to_string()))?;
    let mut plans = Vec::new();
    for map in maps {
        let (start, end) = map.address;
        let hint = hints.0.get(&map.address).map(|h| h.flags);
        let Some((backing, store)) = classify(pid, &map.pathname, &map, start, hint)? else {
            continue;
        };
        let shared_object = match &backing {
            Backing::SharedAnonymous | Backing::SysvShm(_) => Some(SharedMemoryRef {
                id: map.inode,
                offset: map.offset,
            }),
            _ => None,
        };
        let flags = hint.unwrap_or(VmFlags::NONE);
        plans.push(RegionPlan {
            region: MemoryRegion {
                start,
                end,
                prot: Prot {
                    read: map.perms.contains(MMPermissions::READ),
                    write: map.perms.contains(MMPermissions::WRITE),
                    exec: map.perms.contains(MMPermissions::EXECUTE),
                },
                shared: map.perms.contains(MMPermissions::SHARED),
                backing,
                grows_down: flags.contains(VmFlags::GD) || map.pathname == MMapPath::Stack,
                name: display_name(&map.pathname),
                advice: advice_of(flags),
                runs: Vec::new(),
                hashed: true,
                shared_object,
            },
            store,
            flags_known: hint.is_some(),
            page_hashes: Vec::new(),
        });
    }
    Ok(plans)
}

fn advice_of(flags: VmFlags) -> Vec<Advice> {
    [
        (VmFlags::HG, Advice::HugePage),
        (VmFlags::NH, Advice::NoHugePage),
        (VmFlags::DC, Advice::DontFork),
        (VmFlags::WF, Advice::WipeOnFork),
        (VmFlags::DD, Advice::DontDump),
    ]
    .into_iter()
    .filter(|(f, _)| flags.contains(*f))
    .map(|(_, a)| a)
    .collect()
}

fn display_name(path: &MMapPath) -> String {
    match path {
        MMapPath::Path(p) => p.to_string_lossy().into_owned(),
        MMapPath::Heap => "[heap]".into(),
        MMapPath::Stack => "[stack]".into(),
        MMapPath::TStack(t) => format!("[stack:{t}]"),
        MMapPath::Vdso => "[vdso]".into(),
        MMapPath::Vvar => "[vvar]".into(),
        MMapPath::Vsyscall => "[vsyscall]".into(),
        MMapPath::Anonymous => String::new(),
        MMapPath::Vsys(key) => format!("SYSV{key:08x}"),
        MMapPath::Other(s) => format!("[{s}]"),
        _ => "?".into(),
    }
}

type Classified = Option<(Backing, StorePolicy)>;

fn classify(
    pid: Pid,
    path: &MMapPath,
    map: &procfs::process::MemoryMap,
    start: u64,
    flags: Option<VmFlags>,
) -> Result<Classified, InspectError> {
    let shared = map.perms.contains(MMPermissions::SHARED);
    let anon = if shared {
        (Backing::SharedAnonymous, StorePolicy::Everything)
    } else {
        (Backing::Anonymous, StorePolicy::PrivateData)
    };
    Ok(Some(match path {
        MMapPath::Vsyscall => return Ok(None),
        MMapPath::Vdso | MMapPath::Vvar => (Backing::Vdso, StorePolicy::Nothing),
        MMapPath::Other(s) if s.starts_with("vvar") || s == "vdso" => {
            (Backing::Vdso, StorePolicy::Nothing)
        }
        MMapPath::Other(s) if s.starts_with("anon:") || s.starts_with("anon_shmem:") => anon,
        MMapPath::Heap | MMapPath::Stack | MMapPath::TStack(_) | MMapPath::Anonymous => anon,
        MMapPath::Path(p) => classify_file(pid, p, map, shared, flags)?,
        MMapPath::Vsys(_) => (
            crate::objects::sysv_shm::backing(pid.as_raw(), map, flags)?,
            StorePolicy::Everything,
        ),
        other => {
            return Err(InspectError::UnsupportedMapping {
                pid: pid.as_raw(),
                what: display_name(other),
                start,
            });
        }
    }))
}

const DELETED: &str = " (deleted)";

/// A file mapping whose file is still where maps says keeps the file as backing; one whose
/// file is gone or replaced (deleted, memfd, `/dev/zero` shared memory) is stored in full.
/// A shared mapping whose file was opened read-write is reopened so at restore (see
/// `FileIdentity::may_write`): the checkpoint fails now if that cannot be done.
fn classify_file(
    pid: Pid,
    path: &Path,
    map: &procfs::process::MemoryMap,
    shared: bool,
    flags: Option<VmFlags>,
) -> Result<(Backing, StorePolicy), InspectError> {
    let whole = if shared {
        (Backing::SharedAnonymous, StorePolicy::Everything)
    } else {
        (Backing::Anonymous, StorePolicy::Everything)
    };
    let text = path.to_string_lossy();
    if text.ends_with(DELETED) {
        return Ok(whole);
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(whole);
    };
    if meta.ino() != map.inode || !meta.is_file() {
        return Ok(whole);
    }
    // Flags unknown (the region changed since smaps was read): what it allows now.
    let may_write = shared
        && flags.map_or(map.perms.contains(MMPermissions::WRITE), |f| {
            f.contains(VmFlags::MW)
        });
    if may_write && let Err(e) = crate::objects::contents::open_recorded(&text, libc::O_RDWR, 0) {
        return Err(InspectError::MappedFileNotWritable {
            pid: pid.as_raw(),
            path: text.into_owned(),
            start: map.address.0,
            message: e.to_string(),
        });
    }
    let identity = FileIdentity {
        path: text.into_owned(),
        offset: map.offset,
        size: meta.size(),
        mtime_ns: FileIdentity::mtime_ns_of(&meta),
        inode: meta.ino(),
        may_write,
    };
    let store = if shared {
        StorePolicy::Nothing
    } else {
        StorePolicy::PrivateData
    };
    Ok((Backing::File(identity), store))
}

/// Everything about the process but its threads and memory contents. `mm.brk`, the
/// pending signals and the prctl flags are left empty: only the frozen process itself can
/// tell them.
pub fn read_process(pid: Pid) -> Result<ProcessState, InspectError> {
    let process = Process::new(pid.as_raw()).map_err(|e| proc_err(pid, "status")(e.to_string()))?;
    let io = |what: &'static str| move |e: procfs::ProcError| proc_err(pid, what)(e.to_string());
    let stat = process.stat().map_err(io("stat"))?;
    let status = process.status().map_err(io("status"))?;
    let link = |name: &'static str| {
        std::fs::read_link(format!("/proc/{pid}/{name}"))
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| proc_err(pid, name)(e.to_string()))
    };
    let mm = MmFields {
        start_code: stat.startcode,
        end_code: stat.endcode,
        start_data: stat.start_data.unwrap_or(0),
        end_data: stat.end_data.unwrap_or(0),
        start_brk: stat.start_brk.unwrap_or(0),
        brk: 0,
        start_stack: stat.startstack,
        arg_start: stat.arg_start.unwrap_or(0),
        arg_end: stat.arg_end.unwrap_or(0),
        env_start: stat.env_start.unwrap_or(0),
        env_end: stat.env_end.unwrap_or(0),
    };
    Ok(ProcessState {
        pid: pid.as_raw(),
        exe: link("exe")?,
        cmdline: process.cmdline().map_err(io("cmdline"))?,
        cwd: link("cwd")?,
        umask: status.umask.unwrap_or(0o022),
        rlimits: read_rlimits(pid)?,
        mm,
        auxv: read_auxv(pid)?,
        pending_signals: Vec::new(),
        tree: super::tree::stat(pid.as_raw())
            .map(|s| s.links)
            .unwrap_or_default(),
        parent_death_signal: 0,
        child_subreaper: false,
        credentials: Some(crate::image::format::Credentials::from_status(&status)),
        attributes: Default::default(),
    })
}

fn read_rlimits(pid: Pid) -> Result<Vec<Rlimit>, InspectError> {
    let asked: Result<Vec<Rlimit>, _> = (0..sys::RLIMIT_COUNT)
        .map(|r| sys::get_rlimit(pid, r))
        .collect();
    match asked {
        // prlimit on another user's process needs CAP_SYS_RESOURCE, which a container's
        // root may lack; /proc/PID/limits shows the same to everyone.
        Err(nix::errno::Errno::EPERM) => {
            let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))
                .map_err(|e| proc_err(pid, "limits")(e.to_string()))?;
            parse_limits(&text)
                .ok_or_else(|| proc_err(pid, "limits")(format!("unexpected: {text}")))
        }
        Err(e) => Err(proc_err(pid, "rlimits")(e.to_string())),
        Ok(limits) => Ok(limits),
    }
}

/// The limits of `/proc/PID/limits`: one line per resource, in `RLIMIT_*` order, after a
/// header; columns start where the header's "Soft Limit" and "Hard Limit" do.
fn parse_limits(text: &str) -> Option<Vec<Rlimit>> {
    let mut lines = text.lines();
    let header = lines.next()?;
    let (soft_at, hard_at) = (header.find("Soft Limit")?, header.find("Hard Limit")?);
    let value = |line: &str, at: usize| -> Option<u64> {
        match line.get(at..)?.split_whitespace().next()? {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    let limits: Vec<Rlimit> = lines
        .zip(0..sys::RLIMIT_COUNT)
        .map(|(line, resource)| {
            Some(Rlimit {
                resource,
                soft: value(line, soft_at)?,
                hard: value(line, hard_at)?,
            })
        })
        .collect::<Option<_>>()?;
    (limits.len() == sys::RLIMIT_COUNT as usize).then_some(limits)
}

pub fn read_auxv(pid: Pid) -> Result<Vec<u64>, InspectError> {
    let raw = std::fs::read(format!("/proc/{pid}/auxv"))
        .map_err(|e| proc_err(pid, "auxv")(e.to_string()))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_limits_match_prlimit() {
        let me = nix::unistd::getpid();
        let text = std::fs::read_to_string("/proc/self/limits").unwrap();
        let parsed = parse_limits(&text).unwrap();
        let asked: Vec<Rlimit> = (0..sys::RLIMIT_COUNT)
            .map(|r| sys::get_rlimit(me, r).unwrap())
            .collect();
        assert_eq!(parsed, asked);
    }

    #[test]
    fn own_process_map_has_heap_stack_and_vdso() {
        let plans = read_regions(nix::unistd::getpid()).unwrap();
        assert!(
            plans
                .iter()
                .any(|p| p.region.name == "[stack]" && p.region.grows_down)
        );
        assert!(plans.iter().any(|p| p.region.backing == Backing::Vdso));
        assert!(
            plans
                .iter()
                .any(|p| matches!(p.region.backing, Backing::File(_)))
        );
        assert!(!plans.iter().any(|p| p.region.name == "[vsyscall]"));
    }
}
