//! File locks the job holds: POSIX record locks (`fcntl(F_SETLK)`, owned by a process),
//! open file description locks (`F_OFD_SETLK`) and `flock()` locks (owned by an open file
//! description), and leases (`F_SETLEASE`).
//!
//! Checkpoint: `/proc/PID/fdinfo/N` lists, in `lock:` lines, the locks held through fd N
//! (a POSIX lock on the fds of the process that took it; the others on every fd of the
//! description that holds them). Each is recorded once per process and description.
//! Delegations and leases being broken cannot be taken again: the checkpoint fails,
//! listing them; so does a lock on one of the job's standard streams (the restore gives
//! the job other streams).
//!
//! Restore: once a process's fds are in place (after its restorer stub), and before any of
//! its threads runs, it takes every lock again itself, through remote syscalls, without
//! waiting (`F_SETLK`, `F_OFD_SETLK`, `LOCK_NB`): a lock someone outside the job took
//! meanwhile makes the restore fail, naming the file, rather than leave the job without
//! the lock it had or block. A lease is taken again by the restored process and tells it
//! (its fd's owner) when broken; an `F_SETSIG` signal number for it is not kept.

// Syscall arguments and results are registers: an int goes in as its 64-bit value.
#![allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]

use crate::image::format::{FdKind, FdState, Manifest};
use crate::tracer::memory::ProcessMemory;
use crate::tracer::remote::RemoteThread;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    /// `fcntl(F_SETLK)`: owned by the process.
    Posix,
    /// `fcntl(F_OFD_SETLK)`: owned by the open file description.
    Ofd,
    /// `flock()`: owned by the open file description; always the whole file.
    Flock,
    /// `fcntl(F_SETLEASE)`.
    Lease,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Shared (`F_RDLCK`, `LOCK_SH`).
    Read,
    /// Exclusive (`F_WRLCK`, `LOCK_EX`).
    Write,
}

/// A lock held through fd `fd` of process `pid`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeldLock {
    pub pid: i32,
    pub fd: i32,
    pub kind: LockKind,
    pub mode: LockMode,
    /// First byte locked.
    pub start: u64,
    /// Last byte locked; None: to the end of the file, however far it grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read the locks of fd {fd} of process {pid}: {source}")]
    Proc {
        pid: i32,
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} lock(s) of the job cannot be checkpointed:{}",
        .0.len(), .0.iter().map(|p| format!("\n  - {p}")).collect::<String>()
    )]
    Unsupported(Vec<String>),
    #[error(
        "cannot take again the {kind:?} {mode:?} lock on fd {fd} ({path}) of process {pid} \
         (bytes {range}): {why}"
    )]
    Retake {
        pid: i32,
        fd: i32,
        path: String,
        kind: LockKind,
        mode: LockMode,
        range: String,
        why: String,
    },
    #[error(transparent)]
    Remote(#[from] crate::tracer::remote::RemoteError),
    #[error(transparent)]
    Memory(#[from] crate::tracer::memory::MemoryError),
}

/// One `lock:` line of fdinfo, e.g. `lock:\t1: POSIX  ADVISORY  WRITE 17862 fe:00:10011059 5 14`.
/// Ok(None): not a lock line; Err: a lock that cannot be taken again (why).
type ParsedLock = (LockKind, LockMode, u64, Option<u64>);

fn parse_line(line: &str) -> Result<Option<ParsedLock>, String> {
    let Some(rest) = line.strip_prefix("lock:") else {
        return Ok(None);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // id:, kind, state, mode, pid, dev:ino, start, end
    if f.len() < 8 {
        return Err(format!("unexpected lock line '{}'", line.trim()));
    }
    let kind = match f[1] {
        "POSIX" => LockKind::Posix,
        "OFDLCK" => LockKind::Ofd,
        "FLOCK" => LockKind::Flock,
        "LEASE" if f[2] == "ACTIVE" => LockKind::Lease,
        "LEASE" => return Err(format!("a lease being broken ({})", f[2])),
        "DELEG" => return Err("an NFS delegation".into()),
        other => return Err(format!("a lock of kind {other}")),
    };
    let mode = match f[3] {
        "READ" => LockMode::Read,
        "WRITE" => LockMode::Write,
        other => return Err(format!("a {kind:?} lock in mode {other}")),
    };
    let bad = || format!("unexpected lock range in '{}'", line.trim());
    let start = f[6].parse().map_err(|_| bad())?;
    let end = match f[7] {
        "EOF" => None,
        n => Some(n.parse().map_err(|_| bad())?),
    };
    Ok(Some((kind, mode, start, end)))
}

/// The locks the job's processes hold, by their fds (`fds`: each process's, by PID).
/// Fails listing every lock that could not be taken again.
pub fn capture(fds: &BTreeMap<i32, Vec<FdState>>) -> Result<Vec<HeldLock>, LockError> {
    let mut locks = Vec::new();
    let mut problems = Vec::new();
    for (&pid, table) in fds {
        // A lock shows on every fd of the description (and, POSIX, of the process) that
        // holds it: once is enough.
        let mut seen = BTreeSet::new();
        for fd in table {
            let info = match std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.fd)) {
                Ok(info) => info,
                Err(source) => {
                    return Err(LockError::Proc {
                        pid,
                        fd: fd.fd,
                        source,
                    });
                }
            };
            for line in info.lines() {
                let (kind, mode, start, end) = match parse_line(line) {
                    Ok(Some(lock)) => lock,
                    Ok(None) => continue,
                    Err(why) => {
                        problems.push(format!("process {pid} fd {} ({}): {why}", fd.fd, fd.path));
                        continue;
                    }
                };
                if fd.kind == FdKind::Stdio {
                    problems.push(format!(
                        "process {pid} fd {} ({}): a lock on a standard stream, which the \
                         restore replaces with its own",
                        fd.fd, fd.path
                    ));
                    continue;
                }
                let holder = match (kind, fd.object) {
                    (LockKind::Posix, _) => (fd.path.clone(), None),
                    (_, Some(object)) => (String::new(), Some(object)),
                    (_, None) => (format!("fd {}", fd.fd), None),
                };
                if seen.insert((holder, kind, mode, start, end)) {
                    locks.push(HeldLock {
                        pid,
                        fd: fd.fd,
                        kind,
                        mode,
                        start,
                        end,
                    });
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(locks)
    } else {
        Err(LockError::Unsupported(problems))
    }
}

/// What is wrong with the image's locks (field, problem), for the manifest validator.
pub fn problems(m: &Manifest) -> Vec<(String, String)> {
    let procs = m.processes();
    let mut out = Vec::new();
    for (i, l) in m.locks.iter().enumerate() {
        let at = format!("locks[{i}]");
        let Some(p) = procs.iter().find(|p| p.process.pid == l.pid) else {
            out.push((
                format!("{at}.pid"),
                format!("{} is not a process of the image", l.pid),
            ));
            continue;
        };
        if !p.fds.iter().any(|f| f.fd == l.fd) {
            out.push((
                format!("{at}.fd"),
                format!("process {} has no fd {}", l.pid, l.fd),
            ));
        }
        let range_ok = match l.end {
            Some(end) => end >= l.start && end <= i64::MAX as u64,
            None => l.start <= i64::MAX as u64,
        };
        if !range_ok {
            out.push((format!("{at}.end"), "not a byte range of a file".into()));
        }
    }
    out
}

/// `struct flock` as x86-64 lays it out: type, whence, start, len, pid.
fn flock_struct(mode: LockMode, start: u64, end: Option<u64>) -> [u8; 32] {
    let mut out = [0u8; 32];
    let kind = match mode {
        LockMode::Read => libc::F_RDLCK,
        LockMode::Write => libc::F_WRLCK,
    } as i16;
    out[0..2].copy_from_slice(&kind.to_le_bytes());
    out[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
    out[8..16].copy_from_slice(&start.to_le_bytes());
    // 0: to the end of the file.
    let len = end.map_or(0, |e| e - start + 1);
    out[16..24].copy_from_slice(&len.to_le_bytes());
    out
}

/// Process `pid` (driven through `thread`, with `scratch` a page of its own free for the
/// calls) takes `locks` again, those of the image that are its own.
pub fn retake(
    thread: &mut RemoteThread,
    mem: &ProcessMemory,
    scratch: u64,
    pid: i32,
    locks: &[HeldLock],
) -> Result<(), LockError> {
    for l in locks.iter().filter(|l| l.pid == pid) {
        let fd = l.fd as u64;
        let (nr, args) = match l.kind {
            LockKind::Posix | LockKind::Ofd => {
                mem.write(scratch, &flock_struct(l.mode, l.start, l.end))?;
                let cmd = if l.kind == LockKind::Posix {
                    libc::F_SETLK
                } else {
                    libc::F_OFD_SETLK
                };
                (libc::SYS_fcntl, vec![fd, cmd as u64, scratch])
            }
            LockKind::Flock => {
                let op = match l.mode {
                    LockMode::Read => libc::LOCK_SH,
                    LockMode::Write => libc::LOCK_EX,
                } | libc::LOCK_NB;
                (libc::SYS_flock, vec![fd, op as u64])
            }
            LockKind::Lease => {
                let lease = match l.mode {
                    LockMode::Read => libc::F_RDLCK,
                    LockMode::Write => libc::F_WRLCK,
                };
                (
                    libc::SYS_fcntl,
                    vec![fd, libc::F_SETLEASE as u64, lease as u64],
                )
            }
        };
        let ret = thread.syscall(nr, &args)?;
        if (-4095..0).contains(&ret) {
            let errno = nix::errno::Errno::from_raw(-ret as i32);
            let why = match errno {
                nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES => format!(
                    "{}: a process outside the job holds a conflicting lock, or has the file \
                     open (a lease), now",
                    errno.desc()
                ),
                other => other.desc().to_string(),
            };
            return Err(LockError::Retake {
                pid,
                fd: l.fd,
                path: std::fs::read_link(format!("/proc/{pid}/fd/{}", l.fd))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                kind: l.kind,
                mode: l.mode,
                range: match l.end {
                    Some(end) => format!("{}..={end}", l.start),
                    None => format!("{}..", l.start),
                },
                why,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lock_lines_parse() {
        let posix = "lock:\t1: POSIX  ADVISORY  WRITE 17862 fe:00:10011059 5 14";
        assert_eq!(
            parse_line(posix),
            Ok(Some((LockKind::Posix, LockMode::Write, 5, Some(14))))
        );
        let ofd = "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:10011059 100 EOF";
        assert_eq!(
            parse_line(ofd),
            Ok(Some((LockKind::Ofd, LockMode::Read, 100, None)))
        );
        let flock = "lock:\t1: FLOCK  ADVISORY  READ 17862 fe:00:10011059 0 EOF";
        assert_eq!(
            parse_line(flock),
            Ok(Some((LockKind::Flock, LockMode::Read, 0, None)))
        );
        let lease = "lock:\t1: LEASE  ACTIVE    READ 17862 fe:00:10011060 0 EOF";
        assert_eq!(
            parse_line(lease),
            Ok(Some((LockKind::Lease, LockMode::Read, 0, None)))
        );
        assert!(parse_line("lock:\t1: LEASE  BREAKING  READ 1 fe:00:1 0 EOF").is_err());
        assert!(parse_line("lock:\t1: DELEG  ACTIVE  READ 1 fe:00:1 0 EOF").is_err());
        assert_eq!(parse_line("pos:\t0"), Ok(None));
    }

    #[test]
    fn flock_struct_is_the_kernels_layout() {
        let s = flock_struct(LockMode::Write, 5, Some(14));
        assert_eq!(i16::from_le_bytes([s[0], s[1]]), libc::F_WRLCK as i16);
        assert_eq!(u64::from_le_bytes(s[8..16].try_into().unwrap()), 5);
        assert_eq!(u64::from_le_bytes(s[16..24].try_into().unwrap()), 10);
        let to_eof = flock_struct(LockMode::Read, 100, None);
        assert_eq!(u64::from_le_bytes(to_eof[16..24].try_into().unwrap()), 0);
        assert_eq!(std::mem::size_of::<libc::flock>(), 32);
    }
}
