//! The signal guard: between checkpoints a supervised job stays traced, so that a signal
//! sent to it (a SLURM step signal, a preemption) can be turned into a checkpoint before
//! the program acts on it (`docs/signals.md`).
//!
//! A traced thread cannot act on a signal without its tracer: the kernel stops it first
//! (signal-delivery stop) and the tracer decides. The guard passes every signal on at once,
//! unchanged, except the intercepted ones, which it takes away (the thread runs on as if
//! the signal had not come) and records for the supervisor. Job control behaves as it does
//! untraced: a group stop is left in place with `PTRACE_LISTEN`.
//!
//! Checkpoints adopt the guard's threads (`freeze`): they are already ours, so there is no
//! moment between guard and checkpoint in which a thread is untraced, and an intercepted
//! signal met while the checkpoint stops the job is recorded here too, never delivered.
//!
//! Everything runs on the supervisor's thread (ptrace requests must come from the tracer
//! thread), so the state a checkpoint shares with the guard is thread-local.

use super::freeze::{ending, list_threads, tracer_of};
use super::ptrace::{self, PtraceError, SignalNumber, Stop};
use super::{sys, tree};
use nix::unistd::Pid;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

/// An intercepted signal, taken from the thread it was going to.
#[derive(Clone)]
pub struct Caught {
    pub tid: Pid,
    pub sig: SignalNumber,
    /// Its sender and code, so that a signal delivered after the checkpoint reaches the
    /// program as it was sent.
    pub info: Option<libc::siginfo_t>,
}

impl std::fmt::Debug for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} to thread {}", self.sig, self.tid)
    }
}

/// What a checkpoint on this thread needs to know of the guard.
#[derive(Default)]
struct Shared {
    active: bool,
    /// Bit `n - 1` for signal `n` (real-time signals included: 64 bits cover 1..=64).
    intercepted: u64,
    caught: Vec<Caught>,
}

thread_local! {
    static SHARED: RefCell<Shared> = RefCell::default();
}

fn bit(signo: i32) -> u64 {
    if (1..=64).contains(&signo) {
        1 << (signo - 1)
    } else {
        0
    }
}

/// Whether a guard runs on this thread: then the threads of the job that this thread
/// traces are the guard's, and a checkpoint gives them back rather than detaching them.
pub fn is_active() -> bool {
    SHARED.with(|s| s.borrow().active)
}

/// Whether `sig` is one the guard turns into a checkpoint (false without a guard).
pub fn intercepts(sig: SignalNumber) -> bool {
    SHARED.with(|s| {
        let s = s.borrow();
        s.active && s.intercepted & bit(sig.0) != 0
    })
}

/// Records an intercepted signal thread `tid` is stopped for; the caller resumes the
/// thread without it.
pub fn catch(tid: Pid, sig: SignalNumber) {
    let info = ptrace::get_siginfo(tid).ok();
    record(Caught { tid, sig, info });
}

/// Records an intercepted signal that is no longer in a stop (its sender is unknown).
pub fn catch_without_info(tid: Pid, sig: SignalNumber) {
    record(Caught {
        tid,
        sig,
        info: None,
    });
}

fn record(caught: Caught) {
    SHARED.with(|s| s.borrow_mut().caught.push(caught));
}

/// The intercepted signals recorded since the last call, oldest first.
pub fn take_caught() -> Vec<Caught> {
    SHARED.with(|s| std::mem::take(&mut s.borrow_mut().caught))
}

/// Whether a group-stop's signal is `signo` (a stop of job control, not an interrupt).
pub fn is_stop_signal(signo: i32) -> bool {
    matches!(
        signo,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// A signal the guard sends itself after a checkpoint (`deliver`): let through once.
struct Pass {
    /// A thread, or (for a signal to the whole process) a process.
    target: PassTarget,
    sig: SignalNumber,
    info: Option<libc::siginfo_t>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PassTarget {
    Thread(i32),
    Process(i32),
}

/// The guard of one job (and, if asked, of the batch shell that started mlckpt).
pub struct Guard {
    root: Pid,
    /// Threads we trace for the guard: the job's, and orphans of the job that came to us.
    traced: BTreeSet<i32>,
    passes: Vec<Pass>,
    /// The parent shell, traced only so that its SIGTERM does not kill it.
    shell: Option<Pid>,
    shell_terminated: bool,
    /// Processes already named in a warning.
    warned: HashSet<i32>,
    /// Processes let go while stopped by job control (see [`Guard::on_stop`]), traced
    /// again once they run.
    stopped: BTreeSet<i32>,
}

/// Why the parent shell cannot be guarded.
#[derive(Debug, thiserror::Error)]
#[error("cannot trace the parent shell (process {pid})")]
pub struct ShellError {
    pid: i32,
    #[source]
    source: PtraceError,
}

impl Guard {
    /// Starts guarding every thread of the tree rooted at `root`, intercepting the signals
    /// `intercepted`. Threads that cannot be traced are named in warnings; their signals
    /// reach them directly.
    ///
    /// With `trace_job` false the job is left alone (the guard then serves only the batch
    /// shell of [`Guard::attach_shell`]).
    pub fn start(root: Pid, intercepted: &[i32], trace_job: bool) -> Guard {
        SHARED.with(|s| {
            *s.borrow_mut() = Shared {
                active: trace_job,
                intercepted: intercepted.iter().fold(0, |m, &sig| m | bit(sig)),
                caught: Vec::new(),
            }
        });
        let mut guard = Guard {
            root,
            traced: BTreeSet::new(),
            passes: Vec::new(),
            shell: None,
            shell_terminated: false,
            warned: HashSet::new(),
            stopped: BTreeSet::new(),
        };
        if trace_job {
            guard.cover();
        }
        guard
    }

    /// Whether the job's threads are guarded (not only the shell).
    pub fn guards_job(&self) -> bool {
        is_active()
    }

    /// Traces every thread of the job not traced yet, listing again until a listing finds
    /// none: threads born meanwhile of an untraced thread are not traced by birth. Called
    /// at the start and after every checkpoint (a checkpoint that seized a thread itself
    /// lets it go again).
    pub fn cover(&mut self) {
        if !is_active() {
            return;
        }
        loop {
            let mut fresh = 0;
            let members = tree::descendants(self.root.as_raw())
                .into_iter()
                .filter(|s| s.state != 'Z' && s.state != 'X')
                .map(|s| Pid::from_raw(s.pid));
            for pid in std::iter::once(self.root).chain(members) {
                if tree::stat(pid.as_raw()).is_some_and(|s| s.state == 'T') {
                    self.stopped.insert(pid.as_raw());
                    continue;
                }
                for tid in list_threads(pid).unwrap_or_default() {
                    // One let go at its exit stop is still listed for a moment: traced
                    // again, its exit would go to us first after all.
                    if !self.traced.contains(&tid.as_raw())
                        && !ending(pid, tid)
                        && self.trace(pid, tid)
                    {
                        fresh += 1;
                    }
                }
            }
            if fresh == 0 {
                return;
            }
        }
    }

    /// Seizes one thread; true if it is ours now.
    fn trace(&mut self, pid: Pid, tid: Pid) -> bool {
        match ptrace::seize(tid, ptrace::guard_options()) {
            Ok(()) => {}
            Err(_) if tracer_of(pid, tid) == Some(nix::unistd::gettid()) => {}
            // Gone, or exiting: nothing to guard.
            Err(PtraceError::Gone { .. }) => return false,
            Err(_) if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => {
                return false;
            }
            Err(e) => {
                if self.warned.insert(pid.as_raw()) {
                    crate::warn!(
                        "process {pid} of the job cannot be guarded ({}): \
                         signals reach it directly, before any checkpoint",
                        crate::error_chain(&e)
                    );
                }
                return false;
            }
        }
        self.traced.insert(tid.as_raw());
        true
    }

    /// Guards the batch shell `pid` too: its SIGTERM is taken and reported by
    /// [`Guard::shell_terminated`]; every other signal reaches it unchanged.
    pub fn attach_shell(&mut self, pid: Pid) -> Result<(), ShellError> {
        ptrace::seize(pid, nix::sys::ptrace::Options::empty()).map_err(|source| ShellError {
            pid: pid.as_raw(),
            source,
        })?;
        self.shell = Some(pid);
        Ok(())
    }

    /// Whether the guarded shell was sent SIGTERM since the last call.
    pub fn shell_terminated(&mut self) -> bool {
        std::mem::take(&mut self.shell_terminated)
    }

    /// Handles every stop and exit waiting to be collected. Exits of children that are not
    /// traced (orphans of the job, handed to us as their subreaper) are reaped here too;
    /// the root's exit is kept for `ptrace::take_collected_exit`.
    pub fn collect(&mut self) {
        while let Ok(Some((tid, stop, stop_signal))) = ptrace::poll_any_stop() {
            if Some(tid) == self.shell {
                self.on_shell_stop(tid, stop, stop_signal);
            } else {
                self.on_stop(tid, stop, stop_signal);
            }
        }
        let before = self.stopped.len();
        self.stopped
            .retain(|&pid| tree::stat(pid).is_some_and(|s| s.state == 'T'));
        if self.stopped.len() < before {
            self.cover();
        }
    }

    fn on_stop(&mut self, tid: Pid, stop: Stop, stop_signal: i32) {
        if matches!(stop, Stop::Exited(_) | Stop::Killed(_)) {
            self.traced.remove(&tid.as_raw());
            return;
        }
        self.traced.insert(tid.as_raw());
        let resumed = match stop {
            Stop::Signal(sig) => match self.take_pass(tid, sig) {
                Some(info) => {
                    if let Some(info) = info {
                        let _ = ptrace::set_siginfo(tid, &info);
                    }
                    ptrace::cont(tid, Some(sig))
                }
                None if intercepts(sig) => {
                    catch(tid, sig);
                    ptrace::cont(tid, None)
                }
                None => ptrace::cont(tid, Some(sig)),
            },
            // Stopped by job control: let go, so that it is stopped as it would be untraced
            // (state T, not t: programs and shells look). Stopped, it acts on no signal
            // but SIGKILL; traced again when it runs (within a second of its SIGCONT).
            Stop::Interrupted if is_stop_signal(stop_signal) => {
                if let Some(tgid) = thread_group(tid) {
                    self.stopped.insert(tgid);
                }
                self.traced.remove(&tid.as_raw());
                return drop(ptrace::detach(tid, None));
            }
            // Ending: let go, so that its parent hears of its exit as it would untraced
            // (at once, with the pidfd readable only once the exit can be collected).
            Stop::Event(libc::PTRACE_EVENT_EXIT) => {
                self.traced.remove(&tid.as_raw());
                return drop(ptrace::detach(tid, None));
            }
            Stop::Event(event) => {
                if matches!(
                    event,
                    libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK
                ) && let Ok(born) = ptrace::event_message(tid)
                {
                    self.traced.insert(born as i32);
                }
                ptrace::cont(tid, None)
            }
            _ => ptrace::cont(tid, None),
        };
        if let Err(PtraceError::Gone { .. }) = resumed {
            self.traced.remove(&tid.as_raw());
        }
    }

    fn on_shell_stop(&mut self, tid: Pid, stop: Stop, stop_signal: i32) {
        let _ = match stop {
            Stop::Exited(_) | Stop::Killed(_) => {
                self.shell = None;
                return;
            }
            Stop::Signal(SignalNumber(libc::SIGTERM)) => {
                self.shell_terminated = true;
                ptrace::cont(tid, None)
            }
            Stop::Signal(sig) => ptrace::cont(tid, Some(sig)),
            Stop::Interrupted if is_stop_signal(stop_signal) => ptrace::listen(tid),
            _ => ptrace::cont(tid, None),
        };
    }

    /// The pass for a signal the guard re-sent itself, if `sig` at `tid` is one: its
    /// original siginfo (if known).
    fn take_pass(&mut self, tid: Pid, sig: SignalNumber) -> Option<Option<libc::siginfo_t>> {
        if self.passes.is_empty() {
            return None;
        }
        let tgid = thread_group(tid);
        let i = self.passes.iter().position(|p| {
            p.sig == sig
                && (p.target == PassTarget::Thread(tid.as_raw())
                    || Some(p.target) == tgid.map(PassTarget::Process))
        })?;
        Some(self.passes.swap_remove(i).info)
    }

    /// Hands intercepted signals on to the threads they were going to, with their original
    /// sender and code (the program's handler runs, or its default action).
    pub fn deliver(&mut self, caught: &[Caught]) {
        for c in caught {
            let Some(tgid) = thread_group(c.tid) else {
                continue;
            };
            self.passes.push(Pass {
                target: PassTarget::Thread(c.tid.as_raw()),
                sig: c.sig,
                info: c.info,
            });
            if sys::tgkill(tgid, c.tid.as_raw(), c.sig.0).is_err() {
                self.passes.pop();
            }
        }
    }

    /// Sends `sig` to process `pid` past the guard.
    pub fn deliver_to_process(&mut self, pid: Pid, sig: SignalNumber) {
        self.passes.push(Pass {
            target: PassTarget::Process(pid.as_raw()),
            sig,
            info: None,
        });
        if sys::kill_any(pid.as_raw(), sig.0).is_err() {
            self.passes.pop();
        }
    }

    /// Lets the parent shell go (its pending stops are handled first).
    pub fn release_shell(&mut self) {
        self.collect();
        if let Some(shell) = self.shell.take() {
            let_go(&[shell.as_raw()], false);
        }
    }

    /// Lets every thread go: signals that arrive meanwhile are delivered, intercepted
    /// ones included (nothing supervises the job any more).
    pub fn release(&mut self) {
        self.release_shell();
        SHARED.with(|s| *s.borrow_mut() = Shared::default());
        self.collect();
        let tids: Vec<i32> = std::mem::take(&mut self.traced).into_iter().collect();
        let_go(&tids, true);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.release();
    }
}

/// Stops and detaches `tids` (all interrupted first, then collected), each with the
/// signal it was stopped for, if any; a thread that reports nothing within a moment (a
/// zombie leader waiting for its threads) is left: our exit detaches it.
fn let_go(tids: &[i32], pass_signals: bool) {
    const PATIENCE: Duration = Duration::from_secs(2);
    let mut waiting: Vec<Pid> = tids
        .iter()
        .map(|&t| Pid::from_raw(t))
        .filter(|&t| ptrace::interrupt(t).is_ok())
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while !waiting.is_empty() && Instant::now() < deadline {
        waiting.retain(|&tid| match ptrace::poll_stop(tid) {
            Ok(None) => true,
            Ok(Some((Stop::Exited(_) | Stop::Killed(_), _))) | Err(_) => false,
            Ok(Some((Stop::Signal(sig), _))) => {
                let _ = ptrace::detach(tid, pass_signals.then_some(sig));
                false
            }
            Ok(Some(_)) => {
                let _ = ptrace::detach(tid, None);
                false
            }
        });
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The process a thread belongs to (`Tgid:` in `/proc/TID/status`).
fn thread_group(tid: Pid) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Tgid:"))?;
    line["Tgid:".len()..].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_bits_cover_real_time_signals_and_nothing_outside() {
        assert_eq!(bit(1), 1);
        assert_eq!(bit(libc::SIGTERM), 1 << 14);
        assert_eq!(bit(64), 1 << 63);
        assert_eq!(bit(0), 0);
        assert_eq!(bit(65), 0);
    }

    #[test]
    fn only_job_control_signals_are_group_stops() {
        assert!(is_stop_signal(libc::SIGTSTP));
        assert!(!is_stop_signal(libc::SIGTRAP));
    }
}

/// A checkpoint that meets the job's threads stopped at their exit (the guard has not
/// collected them yet) lets them go and fails cleanly, instead of waiting forever for a
/// leader that cannot be reported while its other thread is held.
#[cfg(test)]
mod exit_stop_tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const PROGRAM: &str = "import os, threading, time\n\
                           threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n\
                           time.sleep(0.5)\n\
                           os._exit(0)\n";

    #[test]
    fn a_checkpoint_lets_go_of_threads_stopped_at_their_exit() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let Ok(mut child) = std::process::Command::new("python3")
            .args(["-c", PROGRAM])
            .spawn()
        else {
            eprintln!("note: no python3; skipped");
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while list_threads(pid).map_or(0, |t| t.len()) < 2 {
            assert!(Instant::now() < deadline, "python started no thread");
            std::thread::sleep(Duration::from_millis(10));
        }
        let guard = Guard::start(pid, &[], true);
        // The leader ends and stops at its exit, the other thread (killed by the group
        // exit) ends too; nothing collects either.
        let stopped = || {
            let state = |t: Pid| super::super::freeze::thread_state(pid, t);
            let tids = list_threads(pid).unwrap_or_default();
            // (PF_EXITING comes after the exit stop: the state tells.)
            state(pid) == Some('t')
                && tids.len() == 2
                && tids.iter().all(|&t| matches!(state(t), Some('t' | 'Z')))
        };
        while !stopped() {
            assert!(
                Instant::now() < deadline,
                "the threads did not stop at their exit"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let done = Arc::new(AtomicBool::new(false));
        let watched = Arc::clone(&done);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            if !watched.load(Ordering::SeqCst) {
                eprintln!("the freeze of a process stopped at its exit hangs");
                std::process::abort();
            }
        });
        let frozen = super::super::freeze::Frozen::freeze(pid);
        done.store(true, Ordering::SeqCst);
        assert!(frozen.is_err(), "an exiting process was frozen");
        drop(guard);
        child.wait().unwrap();
    }
}
