//! Fork-snapshot checkpoints: a copy-on-write child of the frozen target holds its memory
//! as it was, so the target can run on while the snapshot is dumped.
//!
//! The child is made with `clone(CLONE_PARENT)` and no exit signal, run inside the target:
//! its parent is the target's parent, the supervisor, which reaps it; the target's own
//! `wait()` never sees it. It never runs: `PTRACE_O_TRACECLONE` stops it before its first
//! instruction.

use super::memory::{MemoryError, PageMap, ProcessMemory};
use super::ptrace::{self, PtraceError, Stop};
use super::remote::{RemoteError, RemoteThread};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::HashSet;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot fork a snapshot of the target")]
    Fork(#[source] RemoteError),
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("the snapshot process {0} ended before it could be dumped")]
    Vanished(i32),
}

/// A stopped copy-on-write copy of the target's address space; killed and reaped on drop.
pub struct Snapshot {
    pid: Pid,
    pub mem: ProcessMemory,
    pub pagemap: PageMap,
}

impl Snapshot {
    /// Forks the target through its borrowed leader thread.
    pub fn fork(leader: &mut RemoteThread) -> Result<Snapshot, SnapshotError> {
        let child = leader
            .checked(
                "clone(snapshot)",
                libc::SYS_clone,
                &[libc::CLONE_PARENT as u64, 0, 0, 0, 0],
            )
            .map_err(SnapshotError::Fork)?;
        let pid = Pid::from_raw(child as i32);
        if pid.as_raw() <= 0 {
            // Never let the reaper's kill() reach a process group.
            return Err(SnapshotError::Vanished(pid.as_raw()));
        }
        Snapshot::stopped(pid)
    }

    fn stopped(pid: Pid) -> Result<Snapshot, SnapshotError> {
        loop {
            match ptrace::wait_stop(pid, "snapshot start")? {
                Stop::Interrupted | Stop::Event(_) => break,
                Stop::Signal(_) | Stop::Syscall => ptrace::cont(pid, None)?,
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(SnapshotError::Vanished(pid.as_raw()));
                }
            }
        }
        let guard = Reaper(pid);
        let snapshot = Snapshot {
            pid,
            mem: ProcessMemory::open_shared(pid)?,
            pagemap: PageMap::open(pid)?,
        };
        std::mem::forget(guard);
        Ok(snapshot)
    }

    /// Address ranges mapped in the snapshot (`MADV_DONTFORK` regions are not).
    pub fn ranges(&self) -> Result<HashSet<(u64, u64)>, SnapshotError> {
        let maps = procfs::process::Process::new(self.pid.as_raw())
            .and_then(|p| p.maps())
            .map_err(|_| SnapshotError::Vanished(self.pid.as_raw()))?;
        Ok(maps.into_iter().map(|m| m.address).collect())
    }
}

/// Kills and reaps a snapshot process (we are its tracer and, through CLONE_PARENT, its
/// parent: one wait releases it).
struct Reaper(Pid);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
        while !matches!(
            ptrace::wait_stop(self.0, "snapshot end"),
            Ok(Stop::Exited(_) | Stop::Killed(_)) | Err(_)
        ) {}
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        drop(Reaper(self.pid));
    }
}
