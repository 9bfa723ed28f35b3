//! Fork-snapshot checkpoints: a copy-on-write child of the frozen target holds its memory
//! as it was, so the target can run on while the snapshot is dumped.
//!
//! The child is made with `clone` and no exit signal, run inside the target, and never
//! runs: `PTRACE_O_TRACECLONE` stops it before its first instruction. Without an exit
//! signal it is a "clone" child, which `wait()` and `waitpid()` without `__WALL` never
//! report, and no SIGCHLD announces its end.
//!
//! When the target is our child (a supervised job), `CLONE_PARENT` makes the snapshot ours
//! too, and we reap it. Otherwise (`mlckpt checkpoint PID` of a process no supervisor
//! watches, or a process of a job's tree) the snapshot is the target's child: once it is
//! dumped and killed, the target is stopped a second time, for about a millisecond, to
//! reap it with a `wait4(__WALL)` of its own, so that no zombie is left in the job.

use super::freeze::Frozen;
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
    #[error(
        "process {0} lives in another pid namespace: the pid its fork returns would name \
         another process here"
    )]
    OtherNamespace(i32),
}

/// Whose child a snapshot is, and so who reaps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotParent {
    /// Ours (the target is our child: `CLONE_PARENT`).
    Us,
    /// The target's (process `pid`).
    Target(Pid),
}

/// A stopped copy-on-write copy of the target's address space; killed and reaped on drop.
pub struct Snapshot {
    pid: Pid,
    pub mem: ProcessMemory,
    pub pagemap: PageMap,
    /// The target, when the snapshot is its child (not ours): it reaps it.
    reaped_by: Option<Pid>,
}

impl Snapshot {
    /// Forks the target through its borrowed leader thread.
    pub fn fork(
        leader: &mut RemoteThread,
        parent: SnapshotParent,
    ) -> Result<Snapshot, SnapshotError> {
        let (flags, reaped_by) = match parent {
            SnapshotParent::Us => (libc::CLONE_PARENT as u64, None),
            SnapshotParent::Target(pid) => (0, Some(pid)),
        };
        if let Some(target) = reaped_by
            && !same_pid_namespace(target)
        {
            return Err(SnapshotError::OtherNamespace(target.as_raw()));
        }
        let child = leader
            .checked("clone(snapshot)", libc::SYS_clone, &[flags, 0, 0, 0, 0])
            .map_err(SnapshotError::Fork)?;
        let pid = Pid::from_raw(child as i32);
        if pid.as_raw() <= 0 {
            // Never let the reaper's kill() reach a process group.
            return Err(SnapshotError::Vanished(pid.as_raw()));
        }
        Snapshot::stopped(pid, reaped_by)
    }

    fn stopped(pid: Pid, reaped_by: Option<Pid>) -> Result<Snapshot, SnapshotError> {
        loop {
            match ptrace::wait_stop(pid, "snapshot start")? {
                Stop::Interrupted | Stop::Event(_) => break,
                Stop::Signal(_) | Stop::Syscall => ptrace::cont(pid, None)?,
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(SnapshotError::Vanished(pid.as_raw()));
                }
            }
        }
        let guard = Reaper { pid, reaped_by };
        let snapshot = Snapshot {
            pid,
            mem: ProcessMemory::open_shared(pid)?,
            pagemap: PageMap::open(pid)?,
            reaped_by,
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

/// Kills and reaps a snapshot process that could not be made a `Snapshot`.
struct Reaper {
    pid: Pid,
    reaped_by: Option<Pid>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        kill_and_reap(self.pid, self.reaped_by);
    }
}

/// Kills a snapshot process and has it reaped; returns how long the target was stopped for
/// that. We are its tracer: one wait sees its end. When it is our child (CLONE_PARENT)
/// that wait releases it; otherwise its parent `reaped_by`, the target, must reap it.
fn kill_and_reap(pid: Pid, reaped_by: Option<Pid>) -> std::time::Duration {
    let _ = kill(pid, Signal::SIGKILL);
    loop {
        match ptrace::wait_stop(pid, "snapshot end") {
            Ok(Stop::Exited(_) | Stop::Killed(_)) | Err(_) => break,
            // A stop on its way out: on with it, or it never ends.
            Ok(_) => drop(ptrace::cont(pid, None)),
        }
    }
    let Some(parent) = reaped_by else {
        return std::time::Duration::ZERO;
    };
    let began = std::time::Instant::now();
    if let Err(e) = reap_in(parent, pid) {
        crate::warn!(
            "the snapshot process {pid} stays a zombie child of process \
             {parent} until that process ends ({})",
            crate::error_chain(&*e)
        );
    }
    began.elapsed()
}

/// Whether `pid`'s children get pids of our namespace (a `clone` inside it returns a pid
/// we can use).
fn same_pid_namespace(pid: Pid) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid_for_children")).ok();
    let ours = std::fs::read_link("/proc/self/ns/pid").ok();
    ours.is_some() && ns(&pid.to_string()) == ours
}

/// Makes `parent` reap its dead child `child`: a short stop in which `parent` calls
/// `wait4(child, NULL, __WALL, NULL)`. A parent that reaped it itself meanwhile (a wait
/// with `__WALL`) is fine (ECHILD); one that is gone left it to init.
fn reap_in(parent: Pid, child: Pid) -> Result<(), Box<dyn std::error::Error>> {
    let mut frozen = match Frozen::freeze(parent) {
        Ok(f) => f,
        Err(_) if !std::path::Path::new(&format!("/proc/{parent}")).exists() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mem = ProcessMemory::open(parent)?;
    let gadget = super::capture::find_syscall_gadget(&mem, parent)?;
    let mut lead = RemoteThread::new(parent, gadget)?;
    let reaped = lead.syscall(
        libc::SYS_wait4,
        &[child.as_raw() as u64, 0, libc::__WALL as u64, 0],
    );
    if let Some(sig) = lead.finish()? {
        frozen.hold_signal(parent, sig);
    }
    frozen.release()?;
    match reaped? {
        r if r == i64::from(child.as_raw()) || r == -i64::from(libc::ECHILD) => Ok(()),
        r => Err(format!("wait4 in process {parent} returned {r}").into()),
    }
}

impl Snapshot {
    /// Kills and reaps the snapshot; returns how long the target was stopped for that (zero
    /// when the snapshot is our child).
    pub fn end(mut self) -> std::time::Duration {
        let pid = std::mem::replace(&mut self.pid, Pid::from_raw(0));
        kill_and_reap(pid, self.reaped_by)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if self.pid.as_raw() > 0 {
            kill_and_reap(self.pid, self.reaped_by);
        }
    }
}
