//! Stopping every thread of a target, and letting them all go again.

use super::ptrace::{self, PtraceError, SignalNumber, Stop};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("process {pid} does not exist (or already exited)")]
    NoProcess { pid: i32 },
    #[error("cannot seize process {pid}; {holder}")]
    Seize {
        pid: i32,
        /// Who holds it, as far as `/proc` tells.
        holder: String,
        #[source]
        source: PtraceError,
    },
    #[error(
        "the main thread of process {pid} has exited while other threads run on \
         (pthread_exit in main); mlckpt cannot checkpoint such a process"
    )]
    ZombieLeader { pid: i32 },
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error(transparent)]
    Target(#[from] super::access::TargetError),
    #[error("cannot list threads of process {pid}")]
    ListThreads {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// A thread held in a ptrace stop.
#[derive(Debug, Clone, Copy)]
pub struct FrozenThread {
    pub tid: Pid,
    /// A signal that reached a stop while mlckpt drove the thread (one the freeze could not
    /// block); it is handed back on detach, so the target sees it as if nothing happened.
    pub pending: Option<SignalNumber>,
    /// The thread's own signal mask, once its signals are blocked (see `FROZEN_MASK`):
    /// the mask the image records and the thread gets back. None before that.
    pub sigmask: Option<u64>,
    /// Traced by the signal guard before this freeze (`guard`): given back to it, still
    /// traced, instead of detached.
    pub adopted: bool,
    /// Its process is in a group stop (SIGSTOP and friends): an adopted thread goes back
    /// into it rather than running on.
    pub group_stop: bool,
}

/// The signal mask of a frozen thread: everything but SIGKILL and SIGSTOP (which cannot be
/// blocked) and the synchronous signals mlckpt's own injected code could raise. A signal
/// sent while the target is frozen then stays queued in the kernel, in order, instead of
/// stopping a thread that runs a remote syscall: at such a stop the kernel has already
/// taken the signal off the queue, and only one per thread could be handed back on detach
/// (real-time signals queue, so each lost one counts). A blocked SIGTRAP or SIGSEGV would
/// be worse: the kernel forces such a signal through by resetting the target's handler.
const FROZEN_MASK: u64 = !(bit(libc::SIGKILL)
    | bit(libc::SIGSTOP)
    | bit(libc::SIGTRAP)
    | bit(libc::SIGSEGV)
    | bit(libc::SIGBUS)
    | bit(libc::SIGILL)
    | bit(libc::SIGFPE)
    | bit(libc::SIGSYS));

/// Signal `signo`'s bit in a kernel signal mask.
const fn bit(signo: i32) -> u64 {
    1 << (signo - 1)
}

/// Every thread of a process, stopped. Dropping it lets them all run again.
#[derive(Debug)]
pub struct Frozen {
    pub pid: Pid,
    threads: BTreeMap<i32, FrozenThread>,
    released: bool,
}

/// Thread ids in `/proc/PID/task`.
pub fn list_threads(pid: Pid) -> Result<Vec<Pid>, FreezeError> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            FreezeError::NoProcess { pid: pid.as_raw() }
        } else {
            FreezeError::ListThreads {
                pid: pid.as_raw(),
                source,
            }
        }
    })?;
    let mut tids: Vec<Pid> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .map(Pid::from_raw)
        .collect();
    tids.sort();
    Ok(tids)
}

/// How a thread's wait for its interrupt stop ended.
#[derive(Debug, PartialEq, Eq)]
enum Interrupted {
    /// Stopped (or gone: its exit was collected).
    Stopped,
    /// Met at its exit stop and let go: still listed a moment, never to be seized again.
    LetGoAtExit,
}

impl Frozen {
    /// Seizes and interrupts every thread, listing `/proc/PID/task` again until no new
    /// thread appears: threads may be born while the first ones are being stopped.
    pub fn freeze(pid: Pid) -> Result<Frozen, FreezeError> {
        super::access::check_target(pid)?;
        if thread_state(pid, pid) == Some('Z') {
            return Err(FreezeError::ZombieLeader { pid: pid.as_raw() });
        }
        let mut frozen = Frozen {
            pid,
            threads: BTreeMap::new(),
            released: false,
        };
        // Threads found exiting: still listed until reaped, never to be seized.
        let mut exited = std::collections::BTreeSet::new();
        loop {
            let fresh: Vec<Pid> = list_threads(pid)?
                .into_iter()
                .filter(|t| !frozen.threads.contains_key(&t.as_raw()) && !exited.contains(t))
                .collect();
            if fresh.is_empty() {
                break;
            }
            let seized = frozen.seize_all(&fresh, &mut exited)?;
            for tid in seized {
                if frozen.wait_interrupted(tid)? == Interrupted::LetGoAtExit {
                    exited.insert(tid);
                }
            }
        }
        if !frozen.threads.contains_key(&pid.as_raw()) {
            return Err(FreezeError::NoProcess { pid: pid.as_raw() });
        }
        Ok(frozen)
    }

    fn seize_all(
        &mut self,
        tids: &[Pid],
        exited: &mut std::collections::BTreeSet<Pid>,
    ) -> Result<Vec<Pid>, FreezeError> {
        let mut seized = Vec::new();
        for &tid in tids {
            let mut adopted = false;
            match seize_when_free(self.pid, tid) {
                Ok(()) => {}
                // Born of a thread stopped inside clone(): the kernel attached it to us
                // already (PTRACE_O_TRACECLONE), and it starts in a stop of its own. Or
                // traced by the signal guard, which keeps it.
                Err(_) if tracer_of(self.pid, tid) == Some(nix::unistd::gettid()) => {
                    adopted = super::guard::is_active();
                }
                // Exited between listing and seizing (ESRCH once gone, EPERM while it
                // is exiting): nothing to checkpoint.
                Err(PtraceError::Gone { .. }) => {
                    exited.insert(tid);
                    continue;
                }
                Err(_) if exiting(self.pid, tid) => {
                    exited.insert(tid);
                    continue;
                }
                Err(source) => {
                    return Err(FreezeError::Seize {
                        pid: self.pid.as_raw(),
                        holder: holder(self.pid, tid),
                        source,
                    });
                }
            }
            let thread = FrozenThread {
                tid,
                pending: None,
                sigmask: None,
                adopted,
                group_stop: false,
            };
            self.threads.insert(tid.as_raw(), thread);
            match ptrace::interrupt(tid) {
                Ok(()) => seized.push(tid),
                Err(PtraceError::Gone { .. }) => {
                    self.threads.remove(&tid.as_raw());
                }
                // Exiting, and ours: the wait collects its exit.
                Err(_) if exiting(self.pid, tid) => seized.push(tid),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(seized)
    }

    /// Waits for the interrupt stop, then blocks the thread's signals (`FROZEN_MASK`).
    ///
    /// A signal that gets in first is delivered at once: it came before the freeze, and
    /// delivered now it keeps its place among the signals queued behind it (the image then
    /// holds the thread about to run its handler). Any other stop that comes first (a
    /// signal, or the clone event of a thread being born) consumes the pending interrupt:
    /// the kernel clears it at every trap. So the thread is interrupted again once it is
    /// let go from that stop, or it would run on and this wait would never end.
    ///
    /// A signal the signal guard intercepts is not delivered but recorded for it: the job
    /// must not act on it before the checkpoint it asks for.
    fn wait_interrupted(&mut self, tid: Pid) -> Result<Interrupted, FreezeError> {
        loop {
            let mut deliver = None;
            match ptrace::wait_stop_signal(tid, "freeze")? {
                (Stop::Interrupted, stop_signal) => {
                    if let Some(t) = self.threads.get_mut(&tid.as_raw()) {
                        t.group_stop = super::guard::is_stop_signal(stop_signal);
                    }
                    return self.quieten(tid).map(|()| Interrupted::Stopped);
                }
                (Stop::Exited(_) | Stop::Killed(_), _) => {
                    self.threads.remove(&tid.as_raw());
                    return Ok(Interrupted::Stopped);
                }
                // A guarded thread on its way out, stopped at its exit: let go, as the
                // guard would. Held there, it would keep its leader from ever being
                // reported, and a wait for the leader would never end.
                (Stop::Event(libc::PTRACE_EVENT_EXIT), _) => {
                    self.threads.remove(&tid.as_raw());
                    return match ptrace::detach(tid, None) {
                        Ok(()) | Err(PtraceError::Gone { .. }) => Ok(Interrupted::LetGoAtExit),
                        Err(e) => Err(e.into()),
                    };
                }
                (Stop::Signal(sig), _) if super::guard::intercepts(sig) => {
                    super::guard::catch(tid, sig);
                }
                (Stop::Signal(sig), _) => deliver = Some(sig),
                (Stop::Syscall | Stop::Event(_), _) => {}
            }
            match ptrace::cont(tid, deliver).and_then(|()| ptrace::interrupt(tid)) {
                // Exiting: the next wait collects the exit.
                Ok(()) | Err(PtraceError::Gone { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Blocks the signals of a thread in its interrupt stop, keeping its own mask. A thread
    /// that is gone meanwhile is dropped; its exit is collected with the others'.
    fn quieten(&mut self, tid: Pid) -> Result<(), FreezeError> {
        let adopted = self.threads.get(&tid.as_raw()).is_some_and(|t| t.adopted);
        let blocked = ptrace::get_sigmask(tid).and_then(|mask| {
            if adopted {
                // The guard traces without seccomp suspension; remote syscalls need it.
                ptrace::set_options(tid, ptrace::guard_checkpoint_options())?;
            }
            ptrace::set_sigmask(tid, mask | FROZEN_MASK)?;
            Ok(mask)
        });
        match blocked {
            Ok(mask) => {
                if let Some(t) = self.threads.get_mut(&tid.as_raw()) {
                    t.sigmask = Some(mask);
                }
                Ok(())
            }
            Err(PtraceError::Gone { .. }) => {
                self.threads.remove(&tid.as_raw());
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The signal mask thread `tid` had before the freeze (None: its signals were never
    /// blocked, its mask is its own).
    pub fn sigmask(&self, tid: Pid) -> Option<u64> {
        self.threads.get(&tid.as_raw()).and_then(|t| t.sigmask)
    }

    pub fn leader(&self) -> Pid {
        self.pid
    }

    pub fn tids(&self) -> Vec<Pid> {
        self.threads.values().map(|t| t.tid).collect()
    }

    /// Remembers a signal that a thread received while mlckpt drove it.
    pub fn hold_signal(&mut self, tid: Pid, sig: SignalNumber) {
        if let Some(t) = self.threads.get_mut(&tid.as_raw()) {
            t.pending = Some(sig);
        }
    }

    /// Lets every thread run on, handing back signals that arrived meanwhile.
    pub fn release(&mut self) -> Result<(), PtraceError> {
        self.detach_all()
    }

    /// Ends the target while it is still frozen, so it does nothing after the image's state.
    /// A dead tracee stays a zombie until its tracer collects it, and a thread group only
    /// finishes exiting when all its threads are collected: collect every thread but a
    /// leader whose parent we are (that exit status is the supervisor's to report).
    ///
    /// The other threads go first: the kernel reports a zombie leader only once every other
    /// thread of its group has been collected, so waiting for it first waits forever. Each
    /// wait is bounded all the same: a thread that does not end is named, not waited for.
    pub fn kill(&mut self) {
        const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
        let _ = kill(self.pid, Signal::SIGKILL);
        self.released = true;
        let parent_is_us = parent_of(self.pid) == Some(nix::unistd::getpid());
        let others = self.threads.values().filter(|t| t.tid != self.pid);
        let leader = self.threads.values().filter(|t| t.tid == self.pid);
        for t in others.chain(leader.filter(|_| !parent_is_us)) {
            if let Ok(false) = ptrace::wait_exit(t.tid, PATIENCE) {
                crate::warn!(
                    "thread {} of process {} did not end within {PATIENCE:?} \
                     of SIGKILL",
                    t.tid,
                    self.pid
                );
            }
        }
    }

    fn detach_all(&mut self) -> Result<(), PtraceError> {
        self.released = true;
        let mut first_error = None;
        for t in self.threads.values() {
            match give_back(t, t.pending) {
                Ok(()) => {}
                // ESRCH: gone, or still ours but not stopped (an operation that failed
                // half-way let it run): stop it, then let it go, or it stays traced and
                // no later checkpoint can seize it.
                Err(PtraceError::Gone { .. }) => {
                    if tracer_of(self.pid, t.tid) == Some(nix::unistd::gettid())
                        && let Err(e) = stop_and_detach(t)
                    {
                        first_error.get_or_insert(e);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Lets a stopped thread go with its own signal mask back, delivering `sig`.
fn give_back(t: &FrozenThread, sig: Option<SignalNumber>) -> Result<(), PtraceError> {
    if let Some(mask) = t.sigmask {
        ptrace::set_sigmask(t.tid, mask)?;
    }
    if t.adopted {
        return resume_guarded(t, sig);
    }
    ptrace::detach(t.tid, sig)
}

/// Lets a stopped thread of the signal guard run on, still traced: back into its group
/// stop if its process is stopped. `PTRACE_LISTEN` only works from the event stop
/// itself; after remote syscalls the thread is interrupted again instead and resumed, so
/// that it traps at once, before any user code runs, and the guard then listens.
fn resume_guarded(t: &FrozenThread, sig: Option<SignalNumber>) -> Result<(), PtraceError> {
    ptrace::set_options(t.tid, ptrace::guard_options())?;
    match sig {
        Some(sig) if super::guard::intercepts(sig) => {
            super::guard::catch_without_info(t.tid, sig);
            ptrace::cont(t.tid, None)
        }
        Some(sig) => ptrace::cont(t.tid, Some(sig)),
        None if t.group_stop => ptrace::listen(t.tid).or_else(|_| {
            ptrace::interrupt(t.tid)?;
            ptrace::cont(t.tid, None)
        }),
        None => ptrace::cont(t.tid, None),
    }
}

/// Detaches a thread we trace that is running: interrupted first (PTRACE_DETACH needs a
/// stopped tracee).
fn stop_and_detach(t: &FrozenThread) -> Result<(), PtraceError> {
    ptrace::interrupt(t.tid)?;
    let (stop, stop_signal) = ptrace::wait_stop_signal(t.tid, "detach")?;
    let stopped = FrozenThread {
        group_stop: stop == Stop::Interrupted && super::guard::is_stop_signal(stop_signal),
        ..*t
    };
    match stop {
        Stop::Exited(_) | Stop::Killed(_) => Ok(()),
        Stop::Interrupted | Stop::Syscall | Stop::Event(_) => give_back(&stopped, t.pending),
        // A signal got in first: hand it on at detach.
        Stop::Signal(s) => give_back(&stopped, Some(s)),
    }
}

/// Seizes `tid`; while another tracer holds it, tries again for a moment: a tracer that
/// only passes by (another mlckpt's short operation, a process still detaching) lets go,
/// a debugger does not, and the error then names it.
fn seize_when_free(pid: Pid, tid: Pid) -> Result<(), PtraceError> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);
    let began = std::time::Instant::now();
    loop {
        match ptrace::seize(tid, ptrace::checkpoint_options()) {
            Err(PtraceError::Failed {
                source: nix::errno::Errno::EPERM,
                ..
            }) if began.elapsed() < PATIENCE
                && tracer_of(pid, tid).is_some_and(|t| t != nix::unistd::gettid()) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// Why a thread may not be seizable: who traces it, if anyone does.
fn holder(pid: Pid, tid: Pid) -> String {
    match tracer_of(pid, tid) {
        Some(tracer) => {
            let comm = std::fs::read_to_string(format!("/proc/{tracer}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            match job_root_under(pid, tracer) {
                Some(root) if comm == "mlckpt" && root != pid => format!(
                    "it belongs to a job supervised by mlckpt (thread {tracer}), whose root \
                     is process {root}: checkpoint the whole job with `mlckpt checkpoint {root}`"
                ),
                _ => format!(
                    "it is traced by thread {tracer} ({comm}): a debugger, strace or another \
                     mlckpt; checkpoint it through that mlckpt, or detach the other tracer"
                ),
            }
        }
        None => "another tracer (gdb, strace, a second mlckpt) may hold it, or \
                 /proc/sys/kernel/yama/ptrace_scope forbids it"
            .to_string(),
    }
}

/// The ancestor of `pid` (itself included) whose parent is the process of thread
/// `tracer`: the root of the job a supervisor traces, if `pid` is in it.
fn job_root_under(pid: Pid, tracer: Pid) -> Option<Pid> {
    let status = std::fs::read_to_string(format!("/proc/{tracer}/status")).ok()?;
    let tgid: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()?;
    let mut at = pid;
    // Bounded: a parent chain is short, and a reparenting race must not loop forever.
    for _ in 0..64 {
        let parent = parent_of(at)?;
        if parent.as_raw() == tgid {
            return Some(at);
        }
        if parent.as_raw() <= 1 {
            return None;
        }
        at = parent;
    }
    None
}

/// The fields of `/proc/PID/task/TID/stat` after the command: state, ppid, pgrp, session,
/// tty, tpgid, flags ...
fn thread_stat(pid: Pid, tid: Pid) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// A thread's state letter (R, S, D, T, t, Z ...).
pub(crate) fn thread_state(pid: Pid, tid: Pid) -> Option<char> {
    thread_stat(pid, tid)?.first()?.chars().next()
}

/// Whether thread `tid` of `pid` is exiting or gone (a zombie, dead, or no longer listed).
fn exiting(pid: Pid, tid: Pid) -> bool {
    matches!(thread_state(pid, tid), None | Some('Z' | 'X'))
}

/// Whether thread `tid` of `pid` has begun its exit (`PF_EXITING` in the flags of its
/// `stat`), even if it is not a zombie yet; or is gone.
pub(crate) fn ending(pid: Pid, tid: Pid) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Some(fields) = thread_stat(pid, tid) else {
        return true;
    };
    let flags = fields.get(6).and_then(|f| f.parse::<u64>().ok());
    flags.is_some_and(|f| f & PF_EXITING != 0)
}

/// The tracer of thread `tid` of `pid`, from its `TracerPid`: the tracing *thread*'s ID
/// (None: untraced or gone).
pub(crate) fn tracer_of(pid: Pid, tid: Pid) -> Option<Pid> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("TracerPid:"))?;
    let tracer: i32 = line["TracerPid:".len()..].trim().parse().ok()?;
    (tracer != 0).then(|| Pid::from_raw(tracer))
}

/// The parent PID from `/proc/PID/stat` (the field after the parenthesised command).
pub fn parent_of(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .map(Pid::from_raw)
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.detach_all();
        }
    }
}
