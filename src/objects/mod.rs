//! The kernel objects a job's fds refer to. Each kind has one module holding its manifest
//! type, how it is captured and how it is opened again at restore: `stdio` (the job's
//! standard streams), `pipe` (pipes between the job's processes, or to outside), `file`
//! (an open file description shared by several fds), `unix` (socket pairs),
//! `unix_named` (listening, named and other unix sockets), `netlink`, `inet` with `tcp` and
//! `udp` (TCP and UDP sockets, IPv4 and IPv6), and the
//! objects without a path: `eventfd`, `timerfd`, `signalfd`, `epoll`, `inotify`, `pidfd`,
//! `unlinked` (memfds and deleted files); `tty` (the job's terminal, pty pairs it holds). Adding a kind is a module, a variant of
//! [`ObjectKind`] and of [`FdKind`], and a line in [`capture_described`].
//!
//! This module walks the fd tables of every process of the job once, decides the kind of
//! each fd, and gathers every fd it cannot checkpoint into one error: a checkpoint fails
//! naming all of them, never the first one only.

pub mod contents;
pub mod epoll;
pub mod eventfd;
pub mod file;
pub mod inet;
pub mod inotify;
pub mod locks;
pub mod multicast;
pub mod netlink;
pub mod pidfd;
pub mod pipe;
pub mod signalfd;
pub mod stdio;
pub mod sysv_shm;
pub mod tcp;
pub mod timerfd;
pub mod tty;
pub mod udp;
pub mod unix;
pub mod unix_named;
pub mod unlinked;

use crate::image::format::{FdKind, FdState, Inode};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// An object several fds (of one or several processes) may refer to.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SharedObject {
    pub id: u64,
    pub object: ObjectKind,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObjectKind {
    Stdio(stdio::StdioStream),
    Pipe(pipe::PipeState),
    File(file::SharedFile),
    UnixPair(unix::UnixPair),
    UnixSockets(unix_named::UnixSockets),
    Netlink(netlink::NetlinkState),
    EventFd(eventfd::EventFdState),
    TimerFd(timerfd::TimerFdState),
    SignalFd(signalfd::SignalFdState),
    Epoll(epoll::EpollState),
    Inotify(inotify::InotifyState),
    Pidfd(pidfd::PidfdState),
    Unlinked(unlinked::UnlinkedFile),
    PtyPair(tty::PtyPair),
    TcpSocket(tcp::TcpSocket),
    TcpPair(Box<tcp::TcpPair>),
    TcpReset(tcp::TcpReset),
    TcpPending(tcp::TcpPending),
    Udp(udp::UdpSocket),
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("cannot read {what} of process {pid}: {message}")]
    Proc {
        pid: i32,
        what: &'static str,
        message: String,
    },
    #[error("{}", list_problems(.0))]
    Unsupported(Vec<Unsupported>),
    #[error("cannot capture {what} of fd {fd} of process {pid}")]
    Capture {
        pid: i32,
        fd: i32,
        what: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error(transparent)]
    Write(Box<crate::image::writer::WriteError>),
    #[error(transparent)]
    Files(#[from] contents::FileError),
    #[error("cannot recreate {what}")]
    Recreate {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// One fd a checkpoint cannot capture, and what the user can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub pid: i32,
    pub command: String,
    pub fd: i32,
    pub what: String,
    pub target: String,
    pub hint: &'static str,
}

/// The `fd` of an [`Unsupported`] that is the process's working directory.
pub const CWD: i32 = libc::AT_FDCWD;

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let which = if self.fd == CWD {
            "working directory".to_string()
        } else {
            format!("fd {}", self.fd)
        };
        write!(
            f,
            "process {} ({}) {which}: {} ({}); {}",
            self.pid, self.command, self.what, self.target, self.hint
        )
    }
}

fn list_problems(problems: &[Unsupported]) -> String {
    let mut text = format!(
        "{} open file{} of the job cannot be checkpointed:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        text.push_str(&format!("\n  - {p}"));
    }
    text
}

const CLOSE_IT: &str = "close it before the checkpoint, or run the job without it";

/// An fd as `/proc` shows it.
#[derive(Debug)]
pub struct OpenFd {
    pub pid: i32,
    pub fd: i32,
    /// What `/proc/PID/fd/N` points at (`/path`, `pipe:[123]`, `socket:[456]` ...).
    pub target: String,
    pub pos: u64,
    /// Open flags, `O_CLOEXEC` included.
    pub flags: i32,
    pub meta: Option<std::fs::Metadata>,
    /// `/proc/PID/fdinfo/N` as read: kinds without a path keep their state there.
    pub info: String,
}

impl OpenFd {
    /// The error for a failure to capture `what` of this fd.
    pub fn capture_failed(
        &self,
        what: &'static str,
    ) -> impl FnOnce(nix::errno::Errno) -> ObjectError + use<> {
        let (pid, fd) = (self.pid, self.fd);
        move |source| ObjectError::Capture {
            pid,
            fd,
            what,
            source,
        }
    }

    /// A copy of this fd in the calling process: the same open file description.
    pub fn copy_here(&self, what: &'static str) -> Result<OwnedFd, ObjectError> {
        use std::os::fd::AsFd;
        let pid = Pid::from_raw(self.pid);
        crate::tracer::sys::pidfd_open(pid)
            .and_then(|pidfd| crate::tracer::sys::pidfd_getfd(pidfd.as_fd(), self.fd))
            .map_err(self.capture_failed(what))
    }

    fn access(&self) -> i32 {
        self.flags & libc::O_ACCMODE
    }

    /// `O_NONBLOCK` is set on its open file description.
    pub fn nonblocking(&self) -> bool {
        self.flags & libc::O_NONBLOCK != 0
    }

    fn state(&self, kind: FdKind, object: Option<u64>) -> FdState {
        let writable = self.access() != libc::O_RDONLY;
        let size = match (kind, &self.meta) {
            (FdKind::File, Some(m)) if writable => Some(m.size()),
            _ => None,
        };
        FdState {
            fd: self.fd,
            kind,
            path: self.target.clone(),
            flags: self.flags & !libc::O_CLOEXEC,
            cloexec: self.flags & libc::O_CLOEXEC != 0,
            offset: if kind == FdKind::File { self.pos } else { 0 },
            size,
            object,
            inode: match (kind, &self.meta) {
                (FdKind::File | FdKind::Directory, Some(m)) => Some(Inode::of(m)),
                _ => None,
            },
        }
    }
}

/// Every fd of process `pid`, in fd order.
pub fn read_fd_table(pid: Pid) -> Result<Vec<OpenFd>, ObjectError> {
    let pid = pid.as_raw();
    let err = |what| {
        move |e: std::io::Error| ObjectError::Proc {
            pid,
            what,
            message: e.to_string(),
        }
    };
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(err("fd list"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    let mut table = Vec::with_capacity(fds.len());
    for fd in fds {
        let link = format!("/proc/{pid}/fd/{fd}");
        let target = match std::fs::read_link(&link) {
            Ok(t) => t.to_string_lossy().into_owned(),
            // Closed since the listing (the process runs when this is only a check).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err("fd link")(e)),
        };
        let info = match std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) {
            Ok(info) => info,
            // Closed (or the process exited) since the link was read: as above.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err("fdinfo")(e)),
        };
        let (pos, flags) = parse_fdinfo(&info).ok_or_else(|| ObjectError::Proc {
            pid,
            what: "fdinfo",
            message: format!("unexpected content: {info}"),
        })?;
        table.push(OpenFd {
            pid,
            fd,
            target,
            pos,
            flags,
            meta: std::fs::metadata(&link).ok(),
            info,
        });
    }
    Ok(table)
}

/// `pos` and `flags` from `/proc/PID/fdinfo/N` (flags are octal there).
fn parse_fdinfo(text: &str) -> Option<(u64, i32)> {
    let pos = info_field(text, "pos:")?.parse().ok()?;
    let flags = i32::from_str_radix(info_field(text, "flags:")?, 8).ok()?;
    Some((pos, flags))
}

/// The value of the first line of an fdinfo text that starts with `name` (`"pos:"`).
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

/// The value after `key` (`"wd:"`) in one fdinfo line of `key:value` words.
pub fn line_word<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// Groups fds into open file descriptions (`kcmp`): the fds of a group share offset and
/// status flags, and are one object at restore. Sorted in the kernel's order of files
/// first, so that a process with thousands of eventfds costs O(n log n) `kcmp` calls.
pub fn descriptions<'a>(fds: &[&'a OpenFd]) -> Vec<Vec<&'a OpenFd>> {
    use crate::tracer::sys::file_order;
    use std::cmp::Ordering;
    let order = |a: &OpenFd, b: &OpenFd| file_order(a.pid, a.fd, b.pid, b.fd);
    let mut sorted: Vec<&OpenFd> = fds.to_vec();
    if sorted.windows(2).any(|w| order(w[0], w[1]).is_err()) {
        // An fd closed meanwhile (a check while the job runs): one group each.
        return sorted.into_iter().map(|fd| vec![fd]).collect();
    }
    sorted.sort_by(|a, b| order(a, b).unwrap_or(Ordering::Equal));
    let mut groups: Vec<Vec<&OpenFd>> = Vec::new();
    for fd in sorted {
        match groups.last_mut() {
            Some(g) if order(g[0], fd) == Ok(Ordering::Equal) => g.push(fd),
            _ => groups.push(vec![fd]),
        }
    }
    groups
}

/// What the checkpoint keeps of the job's files.
#[derive(Debug, Default)]
pub struct JobFiles {
    /// Each process's fds, by PID.
    pub fds: BTreeMap<i32, Vec<FdState>>,
    pub objects: Vec<SharedObject>,
    /// Fds that will not come back as they were (a pipe whose other end is outside the
    /// job): the checkpoint goes on, the user is told.
    pub warnings: Vec<String>,
    /// The job's TCP connections a capture put in repair mode: taken out before the job
    /// runs on (`RepairHold::release`), or left so for a kill.
    pub repair: inet::RepairHold,
}

/// How much of the objects to read: `Check` only classifies (the job may be running),
/// `Capture` also reads their state (the job is frozen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Check,
    Capture,
}

/// Classifies every fd of the job's processes (`pids[0]` is the job's root) and, with
/// `Depth::Capture`, captures the state of the objects they share. Fails listing every fd
/// that cannot be checkpointed.
pub fn collect(
    pids: &[Pid],
    depth: Depth,
    stdio_files: stdio::StdioFiles,
) -> Result<JobFiles, ObjectError> {
    let tables: Vec<Vec<OpenFd>> = pids
        .iter()
        .map(|&p| read_fd_table(p))
        .collect::<Result<_, _>>()?;
    let job_ptys = tty::job_pairs(tables.iter().flatten());
    let root_table = tables.first().map_or(&[][..], |t| &t[..]);
    let stdio = stdio::job_streams(root_table, stdio_files, &job_ptys);
    let mut files = JobFiles::default();
    let mut problems = removed_working_dirs(pids);
    let mut pipes = ByInode::default();
    let mut sockets = ByInode::default();
    let mut inet_sockets = ByInode::default();
    let needs_diag = tables
        .iter()
        .flatten()
        .any(|f| f.target.starts_with("socket:") && !stdio.contains_key(&f.target));
    let diag_failed = |what| {
        move |e: nix::errno::Errno| ObjectError::Proc {
            pid: pids[0].as_raw(),
            what,
            message: e.to_string(),
        }
    };
    let (diag, inet_table) = if needs_diag {
        (
            unix::diag_table().map_err(diag_failed("unix sockets (sock_diag)"))?,
            inet::table().map_err(diag_failed("TCP and UDP sockets (sock_diag)"))?,
        )
    } else {
        (BTreeMap::new(), inet::InetTable::default())
    };
    let needs_netlink = tables.iter().flatten().any(|f| {
        f.target.starts_with("socket:")
            && !stdio.contains_key(&f.target)
            && !diag.contains_key(&link_inode(&f.target))
            && inet_table.get(link_inode(&f.target)).is_none()
    });
    let netlink = if needs_netlink {
        netlink::diag_table().map_err(diag_failed("netlink sockets (sock_diag)"))?
    } else {
        BTreeMap::new()
    };
    let mut regular: Vec<&OpenFd> = Vec::new();
    let mut ptys: Vec<&OpenFd> = Vec::new();
    let mut described: BTreeMap<FdKind, Vec<&OpenFd>> = BTreeMap::new();
    let mut kinds: Vec<Vec<FdKind>> = Vec::new();
    for table in &tables {
        let mut row = Vec::new();
        for fd in table {
            let kind = if stdio.contains_key(&fd.target) {
                FdKind::Stdio
            } else {
                match classify(fd, &diag, &job_ptys, &netlink, &inet_table) {
                    Ok(kind) => kind,
                    Err((what, hint)) => {
                        problems.push(unsupported(fd, what, hint));
                        FdKind::CharDevice
                    }
                }
            };
            match kind {
                FdKind::Pipe => pipes.add(fd),
                FdKind::UnixSocket => sockets.add(fd),
                FdKind::InetSocket => inet_sockets.add(fd),
                FdKind::File => regular.push(fd),
                FdKind::PtyMaster | FdKind::PtySlave => ptys.push(fd),
                k if is_described(k) => described.entry(k).or_default().push(fd),
                _ => {}
            }
            row.push(kind);
        }
        kinds.push(row);
    }
    let job = Job { pids };
    let mut ids = IdAllocator::default();
    let described_ids =
        capture_all_described(&described, &job, depth, &mut ids, &mut files, &mut problems);
    let unlisted = inet::unlisted(&inet_sockets, &inet_table);
    let inet_plans = inet::plan(
        &inet_sockets,
        &inet_table,
        &unlisted,
        &mut problems,
        &mut files.warnings,
    );
    if !problems.is_empty() {
        return Err(ObjectError::Unsupported(problems));
    }
    let sessions = tty::Sessions::read(pids);
    let terminal = |n: i32| match root_table.iter().find(|f| f.fd == n) {
        Some(fd) if depth == Depth::Capture && tty::is_terminal_stream(fd) => {
            tty::outside_terminal(fd, &sessions).map(Some)
        }
        _ => Ok(None),
    };
    let stdio_ids = stdio::objects(&stdio, terminal, &mut ids, &mut files.objects)?;
    let pty_ids = tty::objects(&ptys, &sessions, depth, &mut ids, &mut files.objects)?;
    let known_terminals: Vec<u64> = root_table
        .iter()
        .filter(|f| stdio.contains_key(&f.target))
        .chain(ptys.iter().copied())
        .filter_map(|f| f.meta.as_ref().map(MetadataExt::rdev))
        .chain(job_ptys.iter().map(|&i| tty::slave_device(i)))
        .collect();
    files
        .warnings
        .extend(sessions.lost_terminals(&known_terminals));
    let pipe_ids = pipe::objects(&pipes, depth, &mut ids, &mut files)?;
    let socket_ids = unix::objects(&sockets, &diag, depth, &mut ids, &mut files)?;
    let inet_ids = inet::objects(
        &inet_plans,
        &inet_sockets,
        &inet_table,
        &unlisted,
        depth,
        &mut ids,
        &mut files,
    )?;
    let file_ids = file::shared_descriptions(&regular, &mut ids, &mut files.objects);
    for (table, row) in tables.iter().zip(&kinds) {
        let states = table
            .iter()
            .zip(row)
            .map(|(fd, &kind)| {
                let object = match kind {
                    FdKind::Stdio => stdio_ids.get(&fd.target).copied(),
                    FdKind::Pipe => pipe_ids.get(&object_inode(fd)).copied(),
                    FdKind::UnixSocket => socket_ids.get(&link_inode(&fd.target)).copied(),
                    FdKind::InetSocket => inet_ids.get(&link_inode(&fd.target)).copied(),
                    FdKind::File => file_ids.get(&(fd.pid, fd.fd)).copied(),
                    FdKind::PtyMaster | FdKind::PtySlave => pty_ids.get(&(fd.pid, fd.fd)).copied(),
                    _ => described_ids.get(&(fd.pid, fd.fd)).copied(),
                };
                fd.state(kind, object)
            })
            .collect();
        if let Some(first) = table.first() {
            files.fds.insert(first.pid, states);
        }
    }
    for &pid in pids {
        files.fds.entry(pid.as_raw()).or_default();
    }
    Ok(files)
}

/// The job's processes, for kinds whose state refers to them (a pidfd's process).
pub struct Job<'a> {
    pub pids: &'a [Pid],
}

impl Job<'_> {
    /// Whether `pid` is a process of the job, or a zombie child of one (zombies are
    /// restored too).
    pub fn has_process(&self, pid: i32) -> bool {
        let member = |pid: i32| self.pids.iter().any(|p| p.as_raw() == pid);
        member(pid)
            || crate::tracer::tree::stat(pid)
                .is_some_and(|s| s.state == 'Z' && member(s.links.ppid))
    }
}

/// Kinds captured from their fdinfo and open file description, one object per
/// description (or, for unlinked files, per file).
fn is_described(kind: FdKind) -> bool {
    matches!(
        kind,
        FdKind::EventFd
            | FdKind::TimerFd
            | FdKind::SignalFd
            | FdKind::Epoll
            | FdKind::Inotify
            | FdKind::Pidfd
            | FdKind::Unlinked
            | FdKind::Netlink
    )
}

/// Captures one object of a described kind from the fds of one description (`group`).
fn capture_described(
    kind: FdKind,
    group: &[&OpenFd],
    job: &Job,
    depth: Depth,
) -> Result<ObjectKind, (String, &'static str)> {
    Ok(match kind {
        FdKind::EventFd => ObjectKind::EventFd(eventfd::capture(group[0])?),
        FdKind::TimerFd => ObjectKind::TimerFd(timerfd::capture(group[0])?),
        FdKind::SignalFd => ObjectKind::SignalFd(signalfd::capture(group[0])?),
        FdKind::Epoll => ObjectKind::Epoll(epoll::capture(group)?),
        FdKind::Inotify => ObjectKind::Inotify(inotify::capture(group[0], depth)?),
        FdKind::Pidfd => ObjectKind::Pidfd(pidfd::capture(group, job)?),
        FdKind::Netlink => ObjectKind::Netlink(netlink::capture(group[0], depth)?),
        other => unreachable!("{other:?} is not captured per description"),
    })
}

/// One object per open file description of every described kind (per file for unlinked
/// files); returns (pid, fd) -> object id. Fds that cannot be captured go to `problems`.
fn capture_all_described(
    described: &BTreeMap<FdKind, Vec<&OpenFd>>,
    job: &Job,
    depth: Depth,
    ids: &mut IdAllocator,
    files: &mut JobFiles,
    problems: &mut Vec<Unsupported>,
) -> BTreeMap<(i32, i32), u64> {
    let mut by_fd = BTreeMap::new();
    for (&kind, fds) in described {
        let groups = if kind == FdKind::Unlinked {
            unlinked::by_file(fds)
        } else {
            descriptions(fds)
        };
        for group in groups {
            let object = if kind == FdKind::Unlinked {
                unlinked::capture(&group).map(ObjectKind::Unlinked)
            } else {
                capture_described(kind, &group, job, depth)
            };
            match object {
                Ok(object) => {
                    if let ObjectKind::Inotify(i) = &object
                        && i.queued > 0
                    {
                        files.warnings.push(format!(
                            "fd {} of process {} ({}) is an inotify instance with {} bytes of \
                             events not read yet: they are not in the image",
                            group[0].fd,
                            group[0].pid,
                            command_of(group[0].pid),
                            i.queued
                        ));
                    }
                    let id = ids.allocate();
                    for fd in &group {
                        by_fd.insert((fd.pid, fd.fd), id);
                    }
                    files.objects.push(SharedObject { id, object });
                }
                Err((what, hint)) => problems.push(unsupported(group[0], what, hint)),
            }
        }
    }
    by_fd
}

/// Processes whose working directory was removed: a restore could not enter it.
fn removed_working_dirs(pids: &[Pid]) -> Vec<Unsupported> {
    pids.iter()
        .filter_map(|pid| {
            let pid = pid.as_raw();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            let cwd = cwd.to_string_lossy();
            cwd.ends_with(" (deleted)").then(|| Unsupported {
                pid,
                command: command_of(pid),
                fd: CWD,
                what: "a directory that was removed".into(),
                target: cwd.into_owned(),
                hint: "a restore could not enter it; let the job change to an existing directory \
                       before the checkpoint",
            })
        })
        .collect()
}

/// `net`, `mnt` ... for a namespace link such as `net:[4026531833]`.
fn namespace_link(target: &str) -> Option<&str> {
    const KINDS: [&str; 10] = [
        "cgroup",
        "ipc",
        "mnt",
        "net",
        "pid",
        "pid_for_children",
        "time",
        "time_for_children",
        "user",
        "uts",
    ];
    let (kind, rest) = target.split_once(":[")?;
    (KINDS.contains(&kind) && rest.ends_with(']')).then_some(kind)
}

/// The inode in a `/proc/PID/fd` link such as `pipe:[123]` or `socket:[456]` (0 if none).
pub fn link_inode(target: &str) -> u64 {
    target
        .split_once('[')
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The inode of the object `fd` refers to: from its link (`pipe:[N]`), or, for a named
/// object (a FIFO), its file's.
fn object_inode(fd: &OpenFd) -> u64 {
    match (link_inode(&fd.target), &fd.meta) {
        (0, Some(meta)) => meta.ino(),
        (inode, _) => inode,
    }
}

/// The job's fds of one kind, grouped by the object (inode) they refer to.
#[derive(Debug, Default)]
pub struct ByInode<'a>(BTreeMap<u64, Vec<&'a OpenFd>>);

impl<'a> ByInode<'a> {
    /// Adds `fd` under its object's inode (from the link; for a named object, its file's).
    pub fn add(&mut self, fd: &'a OpenFd) {
        self.0.entry(object_inode(fd)).or_default().push(fd);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &[&'a OpenFd])> {
        self.0.iter().map(|(&inode, fds)| (inode, fds.as_slice()))
    }

    pub fn get(&self, inode: u64) -> Option<&[&'a OpenFd]> {
        self.0.get(&inode).map(Vec::as_slice)
    }
}

/// Hands out object ids, from 1.
#[derive(Debug, Default)]
pub struct IdAllocator(u64);

impl IdAllocator {
    pub fn allocate(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

fn unsupported(fd: &OpenFd, what: String, hint: &'static str) -> Unsupported {
    Unsupported {
        pid: fd.pid,
        command: command_of(fd.pid),
        fd: fd.fd,
        what,
        target: fd.target.clone(),
        hint,
    }
}

/// The process's command name, for messages.
pub fn command_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub type Refusal = (String, &'static str);

/// The refusal of an fd of `kind` whose fdinfo does not read as expected.
pub fn unreadable(kind: &str, fd: &OpenFd) -> Refusal {
    (
        format!(
            "a {kind} whose state /proc/{}/fdinfo/{} does not show as expected",
            fd.pid, fd.fd
        ),
        CLOSE_IT,
    )
}

/// The kind of an fd that is not one of the job's standard streams.
fn classify(
    fd: &OpenFd,
    diag: &BTreeMap<u64, unix::DiagEntry>,
    job_ptys: &std::collections::BTreeSet<u32>,
    netlink: &BTreeMap<u64, netlink::DiagEntry>,
    inet_table: &inet::InetTable,
) -> Result<FdKind, Refusal> {
    let target = fd.target.as_str();
    if target.starts_with("pipe:") {
        return Ok(FdKind::Pipe);
    }
    if target.starts_with("socket:") {
        let inode = link_inode(target);
        if let Some(entry) = netlink.get(&inode) {
            return match netlink::refusal(entry) {
                None => Ok(FdKind::Netlink),
                Some(refused) => Err(refused),
            };
        }
        if inet_table.get(inode).is_some()
            || (!diag.contains_key(&inode) && inet::is_unlisted_inet(fd))
        {
            return Ok(FdKind::InetSocket);
        }
        if !diag.contains_key(&inode) && netlink::is_netlink(fd) {
            // Not bound yet: `sock_diag` lists bound netlink sockets only.
            return Ok(FdKind::Netlink);
        }
        if unix::class_of(inode, diag)? == unix::Class::Pair {
            return Ok(FdKind::UnixSocket);
        }
        return match unix_named::refusal(inode, diag) {
            None => Ok(FdKind::UnixSocket),
            Some(what) => Err((what, CLOSE_IT)),
        };
    }
    if let Some(name) = target.strip_prefix("anon_inode:") {
        return match name.trim_matches(['[', ']']) {
            "eventfd" => Ok(FdKind::EventFd),
            "timerfd" => Ok(FdKind::TimerFd),
            "signalfd" => Ok(FdKind::SignalFd),
            "eventpoll" => Ok(FdKind::Epoll),
            "inotify" => Ok(FdKind::Inotify),
            "pidfd" => Ok(FdKind::Pidfd),
            _ => Err((
                format!("an anonymous inode of a kind mlckpt does not know ({name})"),
                CLOSE_IT,
            )),
        };
    }
    if target.starts_with("pidfd:") {
        return Ok(FdKind::Pidfd);
    }
    if let Some(ns) = namespace_link(target) {
        return Err((
            format!(
                "a namespace ({ns}): mlckpt restores processes into the namespaces of the restoring command"
            ),
            CLOSE_IT,
        ));
    }
    if unlinked::is_unlinked(fd) {
        return Ok(FdKind::Unlinked);
    }
    if target.ends_with(" (deleted)") {
        return Err((
            "a deleted directory or special file".into(),
            "it cannot be opened again at restore; keep it until the checkpoint is done",
        ));
    }
    let Some(meta) = &fd.meta else {
        return Err(("an unreadable file".into(), CLOSE_IT));
    };
    if let Some(kind) = tty::classify(fd, job_ptys) {
        return kind;
    }
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_file() {
        Ok(FdKind::File)
    } else if ft.is_dir() {
        Ok(FdKind::Directory)
    } else if ft.is_char_device() {
        Ok(FdKind::CharDevice)
    } else if ft.is_fifo() {
        Ok(FdKind::Pipe)
    } else {
        Err((
            "a special file (socket file or block device)".into(),
            CLOSE_IT,
        ))
    }
}

/// Opens the pages of image `seq` (`None`: the image being restored), decompressed.
pub type PagesOpener<'a> = dyn Fn(Option<u64>) -> std::io::Result<std::fs::File> + 'a;

/// An object opened again at restore: the fds to duplicate, by `slot`.
#[derive(Debug, Default)]
pub struct Opened {
    pub slots: Vec<Option<OwnedFd>>,
    /// A read-write fd for the shared mappings of the object (unlinked files).
    pub mapping: Option<OwnedFd>,
}

impl SharedObject {
    /// Creates the object again in the calling process (the restorer), before the job's
    /// processes are created: they inherit it. `pages` opens the pages of an image (`None`:
    /// this one), where unlinked files keep their contents.
    /// Warnings (a pty that got another name) go to `warnings`.
    pub fn open(
        &self,
        pages: &PagesOpener<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<Opened, ObjectError> {
        let one = |fd: Result<OwnedFd, ObjectError>| {
            fd.map(|fd| Opened {
                slots: vec![Some(fd)],
                mapping: None,
            })
        };
        match &self.object {
            ObjectKind::Stdio(s) => s.open(),
            ObjectKind::Pipe(p) => p.open(self.id),
            ObjectKind::File(f) => f.open(),
            ObjectKind::UnixPair(p) => p.open(self.id),
            ObjectKind::UnixSockets(s) => s.open(self.id),
            ObjectKind::Netlink(n) => one(n.open()),
            ObjectKind::EventFd(e) => one(e.open()),
            ObjectKind::TimerFd(t) => one(t.open()),
            ObjectKind::SignalFd(s) => one(s.open()),
            ObjectKind::Epoll(e) => one(e.open()),
            ObjectKind::Inotify(i) => one(i.open()),
            // Opened by the process that holds it, once the process it refers to exists.
            ObjectKind::Pidfd(_) => Ok(Opened::default()),
            ObjectKind::Unlinked(u) => u.open(pages),
            ObjectKind::PtyPair(p) => p.open(self.id, warnings),
            ObjectKind::TcpSocket(t) => one(t.open()),
            ObjectKind::TcpPair(p) => p.open(),
            ObjectKind::TcpReset(r) => one(r.open()),
            ObjectKind::TcpPending(p) => one(p.open()),
            ObjectKind::Udp(u) => one(u.open()),
        }
    }

    /// Which of the opened fds fd `fd` of process `pid` duplicates.
    pub fn slot(&self, pid: i32, fd: &FdState) -> usize {
        match &self.object {
            ObjectKind::Pipe(_) => pipe::slot(fd.flags),
            ObjectKind::UnixPair(p) => p.slot(&fd.path),
            ObjectKind::UnixSockets(s) => s.slot(&fd.path),
            ObjectKind::TcpPair(p) => p.slot(&fd.path),
            ObjectKind::Unlinked(u) => u.slot(pid, fd.fd),
            ObjectKind::PtyPair(p) => p.slot(pid, fd.fd),
            _ => 0,
        }
    }
}

/// An fd at or above `floor` (the restorer keeps objects above every fd number the job
/// uses, so that the job's processes can put them in place without clobbering any).
pub fn raise_fd(fd: OwnedFd, floor: i32) -> Result<OwnedFd, ObjectError> {
    use std::os::fd::AsRawFd;
    crate::tracer::sys::dup_at_least(fd.as_raw_fd(), floor).map_err(|e| ObjectError::Recreate {
        what: format!("an fd above {floor}"),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_flags_are_octal() {
        let text = "pos:\t42\nflags:\t0100002\nmnt_id:\t25\nino:\t1\n";
        assert_eq!(parse_fdinfo(text), Some((42, 0o100002)));
    }

    #[test]
    fn every_problem_is_listed() {
        let p = |fd| Unsupported {
            pid: 7,
            command: "job".into(),
            fd,
            what: "a socket".into(),
            target: format!("socket:[{fd}]"),
            hint: "close it",
        };
        let text = ObjectError::Unsupported(vec![p(3), p(4)]).to_string();
        assert!(text.starts_with("2 open files"), "{text}");
        assert!(
            text.contains("fd 3: a socket") && text.contains("fd 4: a socket"),
            "{text}"
        );
    }
}
