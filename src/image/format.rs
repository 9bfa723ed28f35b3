//! The image manifest: every piece of process state a restore needs, except page contents,
//! which live in `pages.bin`. `docs/image-format.md` documents each field.

use serde::{Deserialize, Serialize};

/// Version of the on-disk layout, independent of the program version. A format change must
/// bump it; readers refuse versions they do not know.
/// 2: regions may carry `hashed: false` (no page hashes; their changes are write-tracked).
/// 3: process trees: `members`, `zombies` and `objects`; process tree links; fds may refer
/// to shared objects; shared memory regions name their object.
/// 4: `files` (contents of the files the job writes) and fds' `inode`.
/// 5: `sysv_shm` (System V segments), `locks` (file locks), regions backed by `sysv_shm`,
/// file backings' `may_write`.
pub const FORMAT_VERSION: u32 = 5;
/// The oldest format this version still reads (format 1 is format 2 with every region
/// hashed).
pub const OLDEST_READABLE_FORMAT: u32 = 1;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const PAGES_FILE: &str = "pages.bin";
/// `pages.bin` compressed (a copy on the partner or global tier, `[image] compress`): a
/// zstd stream whose decompressed bytes are exactly `pages.bin`. CHECKSUMS still lists
/// `pages.bin`, whose blake3 a reader computes while it decompresses.
pub const PAGES_ZSTD_FILE: &str = "pages.bin.zst";
pub const CHECKSUMS_FILE: &str = "CHECKSUMS";
/// A 16-byte blake3 per page of every `hashed` region, in `runs` order: how the next
/// checkpoint tells by content which pages of a region it cannot write-track changed.
pub const PAGE_HASHES_FILE: &str = "pagehashes.bin";
/// Bytes of a page hash: enough to tell changed pages apart, half the size of a full hash.
pub const PAGE_HASH_BYTES: usize = 16;

pub const PAGE_SIZE: u64 = 4096;

/// Storage level an image was written to.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TierKind {
    Local,
    Partner,
    Global,
}

impl TierKind {
    pub const ALL: [TierKind; 3] = [TierKind::Local, TierKind::Partner, TierKind::Global];

    pub fn name(self) -> &'static str {
        match self {
            TierKind::Local => "local",
            TierKind::Partner => "partner",
            TierKind::Global => "global",
        }
    }
}

impl std::fmt::Display for TierKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TierKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(TierKind::Local),
            "partner" => Ok(TierKind::Partner),
            "global" => Ok(TierKind::Global),
            other => Err(format!(
                "unknown tier '{other}' (expected local, partner or global)"
            )),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub mlckpt_version: String,
    pub job: String,
    pub rank: u32,
    pub seq: u64,
    /// Wall-clock time of the freeze, milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    pub tier: TierKind,
    /// `uname -r` of the machine that took the image: the vDSO is only movable between
    /// identical kernels.
    pub kernel: String,
    pub cpu: CpuFeatures,
    pub process: ProcessState,
    pub threads: Vec<ThreadState>,
    pub regions: Vec<MemoryRegion>,
    pub fds: Vec<FdState>,
    pub signals: Vec<SignalAction>,
    /// Size of `pages.bin`; a shorter file is an incomplete image.
    pub pages_bytes: u64,
    /// Images (siblings in the same directory) holding pages this one refers to instead of
    /// storing them: an incremental image. Empty for a full image.
    #[serde(default)]
    pub parents: Vec<ParentRef>,
    /// Incremental images since the last full one (0 for a full image).
    #[serde(default)]
    pub chain_depth: u32,
    /// The job's other live processes: every descendant of the process above (the job's
    /// root), parents before their children. Their pages are stored in full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberProcess>,
    /// Descendants that had exited but were not yet waited for: recreated as zombies, so
    /// their parent's `wait()` still collects their status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zombies: Vec<ZombieProcess>,
    /// Kernel objects fds refer to by id (`FdState::object`): pipes, open file descriptions
    /// shared by several fds, the job's standard streams.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<crate::objects::SharedObject>,
    /// The files the job writes (open for writing or mapped shared-writable), and how a
    /// restore puts each back as the checkpoint saw it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::objects::contents::WrittenFile>,
    /// System V shared memory segments the job's processes attach (each attach is a
    /// region with `Backing::SysvShm`): recreated with their ids before the processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysv_shm: Vec<crate::objects::sysv_shm::SysvSegment>,
    /// File locks and leases the job's processes hold: taken again by each at restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<crate::objects::locks::HeldLock>,
}

impl Manifest {
    /// Processes in the image, zombies included.
    pub fn process_count(&self) -> usize {
        1 + self.members.len() + self.zombies.len()
    }
}

/// One process of an image, the root or a member, as a restore reads it.
#[derive(Debug, Clone, Copy)]
pub struct ProcessView<'a> {
    pub process: &'a ProcessState,
    pub threads: &'a [ThreadState],
    pub regions: &'a [MemoryRegion],
    pub fds: &'a [FdState],
    pub signals: &'a [SignalAction],
}

impl Manifest {
    /// The root, then every member (parents before their children).
    pub fn processes(&self) -> Vec<ProcessView<'_>> {
        let root = ProcessView {
            process: &self.process,
            threads: &self.threads,
            regions: &self.regions,
            fds: &self.fds,
            signals: &self.signals,
        };
        std::iter::once(root)
            .chain(self.members.iter().map(|m| ProcessView {
                process: &m.process,
                threads: &m.threads,
                regions: &m.regions,
                fds: &m.fds,
                signals: &m.signals,
            }))
            .collect()
    }
}

/// A process of the job other than its root: the same state the manifest holds for the root.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct MemberProcess {
    pub process: ProcessState,
    pub threads: Vec<ThreadState>,
    pub regions: Vec<MemoryRegion>,
    pub fds: Vec<FdState>,
    pub signals: Vec<SignalAction>,
}

/// A child that exited and was not yet reaped by its parent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ZombieProcess {
    pub pid: i32,
    pub tree: TreeLinks,
    /// The status its parent's `wait()` reports, as `waitpid` encodes it.
    pub wait_status: i32,
}

/// Where a process sits in the job: parent, process group, session, and the signal its
/// parent gets when it exits.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct TreeLinks {
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub exit_signal: i32,
    /// Stopped by a signal (SIGSTOP, SIGTSTP ...) at checkpoint time: stopped again after
    /// the restore.
    #[serde(default)]
    pub stopped: bool,
}

/// An image this one depends on, pinned by the hash of its manifest: a different image that
/// took its name is refused.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ParentRef {
    pub seq: u64,
    pub manifest_blake3: String,
}

/// The xsave features of the CPU that took the image.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CpuFeatures {
    /// XCR0: the state components the kernel saves for every thread.
    pub xfeatures: u64,
    /// Bytes of the kernel's xstate buffer (`NT_X86_XSTATE`).
    pub xstate_size: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ProcessState {
    pub pid: i32,
    pub exe: String,
    pub cmdline: Vec<String>,
    pub cwd: String,
    pub umask: u32,
    pub rlimits: Vec<Rlimit>,
    pub mm: MmFields,
    /// The auxiliary vector as the kernel keeps it (`/proc/PID/auxv`), in 64-bit words.
    pub auxv: Vec<u64>,
    /// Signals queued for the whole process and not yet delivered (blocked), in order.
    pub pending_signals: Vec<PendingSignal>,
    /// Parent, group and session (format 3; older images hold one process).
    #[serde(default)]
    pub tree: TreeLinks,
    /// `PR_SET_PDEATHSIG`: the signal the process gets when its parent dies (0: none).
    #[serde(default)]
    pub parent_death_signal: i32,
    /// `PR_SET_CHILD_SUBREAPER`: orphaned descendants are handed to it.
    #[serde(default)]
    pub child_subreaper: bool,
    /// Who the process runs as: a restore gives it these credentials, not the restorer's
    /// (format 4; older images: none recorded, the restorer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// Timers, scheduling and prctl attributes (see `image::attributes`).
    #[serde(
        default,
        skip_serializing_if = "crate::image::attributes::ProcessAttributes::is_empty"
    )]
    pub attributes: crate::image::attributes::ProcessAttributes,
}

/// User and group ids (real, effective, saved, file system), supplementary groups and
/// capability sets of a process, as `/proc/PID/status` shows them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Real, effective, saved, file-system user id.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
}

impl Credentials {
    /// Those of the calling process.
    pub fn own() -> Option<Credentials> {
        let status = procfs::process::Process::myself().ok()?.status().ok()?;
        Some(Credentials::from_status(&status))
    }

    pub fn from_status(s: &procfs::process::Status) -> Credentials {
        Credentials {
            uids: [s.ruid, s.euid, s.suid, s.fuid],
            gids: [s.rgid, s.egid, s.sgid, s.fgid],
            groups: s.groups.clone(),
            cap_inheritable: s.capinh,
            cap_permitted: s.capprm,
            cap_effective: s.capeff,
            cap_bounding: s.capbnd.unwrap_or(0),
            cap_ambient: s.capamb.unwrap_or(0),
        }
    }

    /// Holds no capability at all (an ordinary user's process).
    pub fn unprivileged(&self) -> bool {
        self.cap_inheritable | self.cap_permitted | self.cap_effective | self.cap_ambient == 0
    }
}

/// A queued signal with its full `siginfo_t` (128 bytes, base64), re-queued on restore.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PendingSignal {
    pub signo: i32,
    #[serde(with = "base64_bytes")]
    pub siginfo: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The `mm_struct` fields `prctl(PR_SET_MM_MAP)` restores.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// x86-64 `user_regs_struct`, field for field.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Registers {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ThreadState {
    pub tid: i32,
    /// The thread's name (`comm`, at most 15 bytes), as `ps` and `pgrep` see it.
    pub name: String,
    /// CPUs the thread may run on, as 64-bit mask words (CPU N = bit N%64 of word N/64).
    pub affinity: Vec<u64>,
    /// Registers the thread resumes with; a syscall it was blocked in is already rewound
    /// (see `syscall`).
    pub regs: Registers,
    /// The kernel's `NT_X86_XSTATE` buffer (x87, SSE, AVX, AVX-512 ...), base64.
    #[serde(with = "base64_bytes")]
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    /// Signals queued for this thread only and not yet delivered.
    pub pending_signals: Vec<PendingSignal>,
    pub rseq: Option<RseqState>,
    pub robust_list: Option<RobustList>,
    /// `set_tid_address` value: cleared and futex-woken at thread exit (`pthread_join`).
    pub clear_child_tid: u64,
    pub sigaltstack: Option<AltStack>,
    /// The syscall the thread was blocked in at freeze time, and how it resumes.
    pub syscall: Option<InterruptedSyscall>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RseqState {
    pub addr: u64,
    pub len: u32,
    pub signature: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RobustList {
    pub head: u64,
    pub len: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InterruptedSyscall {
    pub nr: u64,
    pub resume: SyscallResume,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyscallResume {
    /// `rip` points back at the `syscall` instruction: it runs again after restore.
    Restart,
    /// The kernel's restart block is not restorable: the call returns `-EINTR`.
    Eintr,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Prot {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl Prot {
    pub fn bits(self) -> i32 {
        let mut p = 0;
        if self.read {
            p |= libc::PROT_READ;
        }
        if self.write {
            p |= libc::PROT_WRITE;
        }
        if self.exec {
            p |= libc::PROT_EXEC;
        }
        p
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemoryRegion {
    pub start: u64,
    pub end: u64,
    pub prot: Prot,
    pub shared: bool,
    pub backing: Backing,
    /// Name shown in `/proc/PID/maps` (path, `[heap]`, `[stack]` ...), for people.
    pub name: String,
    /// `MAP_GROWSDOWN` (the main stack).
    #[serde(default)]
    pub grows_down: bool,
    /// `MADV_HUGEPAGE` / `MADV_NOHUGEPAGE` / `MADV_DONTFORK` / `MADV_WIPEONFORK` / `MADV_DONTDUMP`
    /// advice in force, re-applied on restore.
    #[serde(default)]
    pub advice: Vec<Advice>,
    /// Pages whose contents are stored in `pages.bin`; every other page is either the
    /// backing file's own or was never touched (zero).
    pub runs: Vec<PageRun>,
    /// Whether `pagehashes.bin` holds a hash of each page in `runs`. Regions whose writes
    /// the supervisor tracks (userfaultfd write protection) need none.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub hashed: bool,
    /// For shared anonymous memory (and deleted shared files): the object mapped, so that
    /// regions of several processes mapping one object share it again after restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_object: Option<SharedMemoryRef>,
}

/// Which shared memory object a region maps, and from where in it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SharedMemoryRef {
    /// The object's inode at checkpoint time: equal ids are one object.
    pub id: u64,
    /// Byte offset of the region's first page in the object.
    pub offset: u64,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_yes(b: &bool) -> bool {
    *b
}

impl MemoryRegion {
    /// Bytes it spans (0 for a reversed range, which the validator refuses).
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Advice {
    HugePage,
    NoHugePage,
    DontFork,
    WipeOnFork,
    DontDump,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backing {
    /// Private anonymous memory, including `[heap]` and `[stack]`.
    Anonymous,
    /// `MAP_SHARED | MAP_ANONYMOUS`: all of it is stored.
    SharedAnonymous,
    /// A file mapping. Private mappings store only the pages the process changed; shared
    /// mappings store none (the file holds them).
    File(FileIdentity),
    /// `[vdso]`, `[vvar]`, `[vvar_vclock]`: not stored, the restoring kernel's own are moved
    /// to this address.
    Vdso,
    /// An attach of a System V shared memory segment (`Manifest::sysv_shm`); all of it is
    /// stored, and the restore attaches the recreated segment here.
    SysvShm(crate::objects::sysv_shm::SysvAttach),
}

/// A file as it was at checkpoint time: a restore refuses a file that changed under a
/// mapping, because unmodified pages are read back from it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileIdentity {
    pub path: String,
    /// Offset in the file of the region's first byte.
    pub offset: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    /// A shared mapping the process may make writable (`VM_MAYWRITE`, VmFlags `mw`: its
    /// file was open read-write when it was mapped), even if it is read-only now: the
    /// restore opens the file read-write, or `mprotect` back to writable would fail.
    #[serde(default, skip_serializing_if = "is_false")]
    pub may_write: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

impl FileIdentity {
    /// The modification time as recorded here: nanoseconds since the epoch.
    pub fn mtime_ns_of(meta: &std::fs::Metadata) -> i64 {
        use std::os::unix::fs::MetadataExt;
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
    }
}

/// Pages `[addr, addr+len)` are stored at `[offset, offset+len)` of `pages.bin` of this
/// image, or of image `image` (a parent) when set.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PageRun {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FdState {
    pub fd: i32,
    pub kind: FdKind,
    /// What `/proc/PID/fd/N` points at.
    pub path: String,
    /// Open flags from `fdinfo` (`O_APPEND`, `O_RDWR`, ...), without `O_CLOEXEC`.
    pub flags: i32,
    pub cloexec: bool,
    pub offset: u64,
    /// Size of a regular file open for writing: restore truncates a file that grew after
    /// the checkpoint back to it, and refuses one that shrank.
    pub size: Option<u64>,
    /// The shared object (`Manifest::objects`) this fd refers to, if any: restore creates
    /// the object once and every fd that names it gets a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<u64>,
    /// The file a regular file or directory fd was open on: a restore refuses a path that
    /// leads to another file now (replaced, or a symlink swapped in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<Inode>,
}

/// A file as inode number and owner.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Inode {
    pub ino: u64,
    pub uid: u32,
}

impl Inode {
    pub fn of(meta: &std::fs::Metadata) -> Inode {
        use std::os::unix::fs::MetadataExt;
        Inode {
            ino: meta.ino(),
            uid: meta.uid(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// Regular file, reopened by path at its offset.
    File,
    /// Directory, reopened by path.
    Directory,
    /// A character device such as `/dev/null` or `/dev/urandom`, reopened by path.
    CharDevice,
    /// One of the job's standard streams (a terminal, or a pipe or socket to outside the
    /// job): the restore command's own stdio takes its place.
    Stdio,
    /// A pipe or FIFO end (its object holds the pipe).
    Pipe,
    /// A unix socket (its object holds the pair, or all the job's named, listening and
    /// other unix sockets).
    UnixSocket,
    /// A TCP or UDP socket, IPv4 or IPv6 (its object: `TcpSocket`, `TcpPair`, `TcpReset`
    /// or `Udp`).
    InetSocket,
    /// The kinds below are restored from their object (`objects::*`): an eventfd,
    EventFd,
    /// a timerfd,
    TimerFd,
    /// a signalfd,
    SignalFd,
    /// an epoll instance,
    Epoll,
    /// an inotify instance,
    Inotify,
    /// a pidfd of a process of the job,
    Pidfd,
    /// a memfd or a regular file deleted while open (its contents are in the image),
    Unlinked,
    /// the master of a pty pair (`objects::tty`),
    PtyMaster,
    /// the slave of a pty pair whose master the job holds.
    PtySlave,
    /// a netlink socket.
    Netlink,
}

/// `struct sigaction` as the kernel keeps it (`rt_sigaction`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignalAction {
    pub signo: i32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

pub(crate) mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xstate_round_trips_as_base64() {
        let t = ThreadState {
            tid: 7,
            name: "t".into(),
            affinity: vec![3],
            regs: Registers::default(),
            xstate: vec![0, 1, 2, 255],
            sigmask: 0,
            pending_signals: Vec::new(),
            rseq: None,
            robust_list: None,
            clear_child_tid: 0,
            sigaltstack: None,
            syscall: None,
        };
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"AAEC/w==\""), "{json}");
        let back: ThreadState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn backing_is_tagged() {
        let b = Backing::File(FileIdentity {
            path: "/lib/x.so".into(),
            offset: 4096,
            size: 10,
            mtime_ns: 1,
            inode: 2,
            may_write: false,
        });
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.starts_with("{\"kind\":\"file\""), "{json}");
    }
}
