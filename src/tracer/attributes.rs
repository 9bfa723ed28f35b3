//! Per-process kernel state that is neither memory, files nor signal actions: timers (see
//! `timers`), personality, `oom_score_adj`, prctl flags (THP disable, dumpable,
//! no_new_privs, timer slack), membarrier registrations, locked memory, and each thread's
//! scheduling. Captured while the target is frozen (remote calls for what only the process
//! can read about itself), put back at restore in three steps:
//! - `restore_privileged`: while the restored process still has the restorer's privileges
//!   (timer ids need CAP_CHECKPOINT_RESTORE, locking memory and real-time scheduling
//!   may need CAP_IPC_LOCK and CAP_SYS_NICE), after its threads exist;
//! - `restore_thread`: in each thread the restore creates (timer slack is per thread);
//! - `restore_last`: after its credentials (which reset the dumpable flag), and after the
//!   restorer's last `int3` (whose SIGTRAP, raised with every signal blocked, made the
//!   kernel reset the SIGTRAP action to the default).
//!
//! Seccomp filters (see `seccomp`) are installed by `restore_privileged` and
//! `restore_thread`. What cannot be restored is refused at checkpoint by `unsupported`:
//! seccomp strict mode and SCHED_DEADLINE threads.

use super::freeze::Frozen;
use super::memory::{MemoryError, ProcessMemory};
use super::remote::{RemoteError, RemoteThread};
use super::rethread::Rethreader;
use super::seccomp::{self, SeccompError};
use super::timers::{self, TimerError};
use crate::image::attributes::{LockedRange, ProcessAttributes, Scheduling, ThreadAttributes};
use crate::image::format::{PendingSignal, SignalAction};
use nix::errno::Errno;
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum AttributeError {
    #[error(transparent)]
    Timer(#[from] TimerError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("cannot read {what} of process {pid}: {source}")]
    Proc {
        pid: i32,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {what} of process {pid}: {source}")]
    ProcWrite {
        pid: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} of thread {tid}")]
    Sys {
        what: &'static str,
        tid: i32,
        #[source]
        source: Errno,
    },
}

/// A thread borrowed for remote calls, and scratch memory in its process for their
/// structs.
pub struct Remote<'a> {
    pub thread: &'a mut RemoteThread,
    pub mem: &'a ProcessMemory,
    pub scratch: u64,
}

impl Remote<'_> {
    pub fn call(&mut self, name: &'static str, nr: i64, args: &[u64]) -> Result<u64, RemoteError> {
        self.thread.checked(name, nr, args)
    }

    /// The raw result: a negative errno is an answer here, not a failure.
    pub fn try_call(&mut self, nr: i64, args: &[u64]) -> Result<i64, RemoteError> {
        self.thread.syscall(nr, args)
    }

    pub fn read(&self, at: u64, len: usize) -> Result<Vec<u8>, MemoryError> {
        self.mem.read(at, len)
    }

    pub fn write(&self, at: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.mem.write(at, bytes)
    }
}

/// `membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)` (Linux 6.3).
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// `PR_{GET,SET}_THP_DISABLE`, `PR_{GET,SET}_TIMERSLACK`.
const PR_GET_THP_DISABLE: u64 = 42;
const PR_SET_THP_DISABLE: u64 = 41;
const PR_SET_TIMERSLACK: u64 = 29;
const SCHED_DEADLINE: u32 = 6;
/// `sched_flags` restored: SCHED_FLAG_RESET_ON_FORK. (Utilization clamps are not.)
const SCHED_FLAG_RESET_ON_FORK: u64 = 1;
const MLOCK_ONFAULT: u64 = 1;

/// What `capture` needs of the checkpoint in progress.
pub struct Capturing<'a> {
    pub frozen: &'a Frozen,
    pub lead: &'a mut RemoteThread,
    pub mem: &'a ProcessMemory,
    /// Scratch memory mapped in the target (a page at least).
    pub scratch: u64,
    /// The range the checkpoint mapped into the target (the scratch is inside): not the
    /// job's memory, but it shows whether `mlockall(MCL_FUTURE)` is in force.
    pub injected: (u64, u64),
    /// The signals queued for the process and for each thread, as captured: timers' own
    /// signals are taken out (see `timers::take_pending`).
    pub pending: Vec<&'a mut Vec<PendingSignal>>,
    /// Each thread's timer slack, as the capture's op tables asked it in every thread.
    pub timer_slack: &'a [(Pid, u64)],
}

/// Captures the frozen process's attributes; run from `capture` while its pages are
/// mapped.
pub fn capture(c: Capturing) -> Result<ProcessAttributes, AttributeError> {
    let pid = c.frozen.leader();
    let mut remote = Remote {
        thread: c.lead,
        mem: c.mem,
        scratch: c.scratch,
    };
    let mut posix_timers = timers::capture_posix(pid, &mut remote)?;
    let mut pending = c.pending;
    timers::take_pending(&mut posix_timers, &mut pending);
    let interval_timers = timers::capture_interval(&mut remote)?;
    let prctl = |remote: &mut Remote, name, option| {
        remote.call(name, libc::SYS_prctl, &[option, 0, 0, 0, 0])
    };
    let thp_disable = prctl(&mut remote, "prctl(PR_GET_THP_DISABLE)", PR_GET_THP_DISABLE)?;
    let dumpable = prctl(
        &mut remote,
        "prctl(PR_GET_DUMPABLE)",
        libc::PR_GET_DUMPABLE as u64,
    )?;
    let no_new_privs = prctl(
        &mut remote,
        "prctl(PR_GET_NO_NEW_PRIVS)",
        libc::PR_GET_NO_NEW_PRIVS as u64,
    )? != 0;
    // Older kernels answer EINVAL: no registrations they could report.
    let membarrier = u32::try_from(remote.try_call(
        libc::SYS_membarrier,
        &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0],
    )?)
    .ok();
    let (locked, lock_future) = locked_memory(pid, c.injected)?;
    let mut threads = Vec::new();
    for &(tid, slack) in c.timer_slack {
        threads.push(ThreadAttributes {
            tid: tid.as_raw(),
            sched: Some(sched_of(tid)?),
            timer_slack_ns: Some(slack),
        });
    }
    threads.sort_by_key(|t| t.tid);
    Ok(ProcessAttributes {
        posix_timers,
        interval_timers,
        personality: Some(read_personality(pid)?),
        oom_score_adj: Some(read_oom_score_adj(pid)?),
        thp_disable: Some(thp_disable as u32),
        dumpable: Some(dumpable as u32),
        no_new_privs: Some(no_new_privs),
        membarrier,
        lock_future,
        locked,
        threads,
        seccomp: seccomp::capture(&c.frozen.tids())?,
    })
}

fn proc_text(pid: Pid, name: &str) -> Result<String, AttributeError> {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).map_err(|source| AttributeError::Proc {
        pid: pid.as_raw(),
        what: name.to_string(),
        source,
    })
}

fn bad_value(pid: Pid, name: &str, text: &str) -> AttributeError {
    AttributeError::Proc {
        pid: pid.as_raw(),
        what: name.to_string(),
        source: std::io::Error::other(format!("unexpected {text:?}")),
    }
}

fn read_personality(pid: Pid) -> Result<u32, AttributeError> {
    let text = proc_text(pid, "personality")?;
    u32::from_str_radix(text.trim(), 16).map_err(|_| bad_value(pid, "personality", &text))
}

fn read_oom_score_adj(pid: Pid) -> Result<i32, AttributeError> {
    let text = proc_text(pid, "oom_score_adj")?;
    text.trim()
        .parse()
        .map_err(|_| bad_value(pid, "oom_score_adj", &text))
}

/// Ranges with VmFlags `lo` (and whether `lf`, lock on fault), and whether the injected
/// range is locked (it was mapped after any `mlockall(MCL_FUTURE)`). `smaps` walks page
/// tables, so it is only read when `VmLck` says something is locked.
fn locked_memory(
    pid: Pid,
    injected: (u64, u64),
) -> Result<(Vec<LockedRange>, bool), AttributeError> {
    let status = proc_text(pid, "status")?;
    let vm_lck = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    if vm_lck == 0 {
        return Ok((Vec::new(), false));
    }
    let smaps = proc_text(pid, "smaps")?;
    let locked = parse_locked(&smaps);
    let future = locked
        .iter()
        .any(|r| r.start < injected.1 && injected.0 < r.end);
    Ok((without(locked, injected), future))
}

/// `ranges` less the range `cut` (the injected pages may have merged with a neighbour of
/// the same flags, or been split by their protections).
fn without(ranges: Vec<LockedRange>, cut: (u64, u64)) -> Vec<LockedRange> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        if r.start < cut.0 {
            out.push(LockedRange {
                end: r.end.min(cut.0),
                ..r
            });
        }
        if r.end > cut.1 {
            out.push(LockedRange {
                start: r.start.max(cut.1),
                ..r
            });
        }
    }
    out
}

/// The locked ranges of an `smaps` text.
fn parse_locked(smaps: &str) -> Vec<LockedRange> {
    let mut out = Vec::new();
    let mut range = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let flags: Vec<&str> = flags.split_whitespace().collect();
            if let Some((start, end)) = range.take()
                && flags.contains(&"lo")
            {
                out.push(LockedRange {
                    start,
                    end,
                    on_fault: flags.contains(&"lf"),
                });
            }
            continue;
        }
        // A region's header: `start-end perms offset dev inode [path]`.
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((s, e)) = first.split_once('-')
            && let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16))
        {
            range = Some((s, e));
        }
    }
    out
}

/// `struct sched_attr` (linux/sched/types.h), the first version's 56 bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

fn sched_of(tid: Pid) -> Result<Scheduling, AttributeError> {
    let a = get_sched_attr(tid).map_err(|source| AttributeError::Sys {
        what: "sched_getattr",
        tid: tid.as_raw(),
        source,
    })?;
    Ok(Scheduling {
        policy: a.policy,
        flags: a.flags & SCHED_FLAG_RESET_ON_FORK,
        nice: a.nice,
        priority: a.priority,
    })
}

fn get_sched_attr(tid: Pid) -> Result<SchedAttr, Errno> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: the kernel writes at most `size` bytes into `attr`, a live SchedAttr of
    // exactly that size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid.as_raw(),
            &raw mut attr,
            size,
            0,
        )
    };
    Errno::result(ret).map(|_| attr)
}

fn set_sched_attr(tid: Pid, s: &Scheduling) -> Result<(), Errno> {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: s.policy,
        flags: s.flags,
        nice: s.nice,
        priority: s.priority,
        ..SchedAttr::default()
    };
    // SAFETY: the kernel reads `attr.size` bytes from `attr`, a live SchedAttr of that size.
    let ret = unsafe { libc::syscall(libc::SYS_sched_setattr, tid.as_raw(), &raw const attr, 0) };
    Errno::result(ret).map(drop)
}

/// What of processes `pids` a checkpoint cannot restore, one line per object: seccomp
/// strict mode, SCHED_DEADLINE threads (their runtime reservation is not captured).
pub fn unsupported(pids: &[Pid]) -> Vec<String> {
    let mut out = Vec::new();
    for &pid in pids {
        let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for tid in tids {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .unwrap_or_default();
            let seccomp = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .map_or("0", str::trim);
            if seccomp == "1" {
                out.push(format!(
                    "thread {tid} of process {pid}: seccomp strict mode (SECCOMP_MODE_STRICT) is not restorable"
                ));
            }
            if let Ok(a) = get_sched_attr(Pid::from_raw(tid))
                && a.policy == SCHED_DEADLINE
            {
                out.push(format!(
                    "thread {tid} of process {pid}: SCHED_DEADLINE scheduling is not restorable"
                ));
            }
        }
    }
    out
}

/// Puts back what needs the restorer's privileges, once every thread exists and before
/// the process gets its own credentials.
pub fn restore_privileged(r: &mut Rethreader, a: &ProcessAttributes) -> Result<(), AttributeError> {
    let pid = r.pid;
    let new_ids = r.new_ids;
    let leader_tid = r.threads.first().map(|t| t.tid);
    let image_threads = r.threads.len();
    let map: Vec<(i32, Pid)> = r
        .threads
        .iter()
        .filter_map(|t| Some((t.tid, r.current_tid(t.tid)?)))
        .collect();
    let lookup = |image_tid: i32| map.iter().find(|m| m.0 == image_tid).map(|m| m.1);
    let mut remote = Remote {
        thread: &mut r.main,
        mem: &r.mem,
        scratch: r.scratch,
    };
    timers::restore_posix(&mut remote, &a.posix_timers, &lookup, new_ids)?;
    timers::restore_interval(&mut remote, &a.interval_timers)?;
    if let Some(p) = a.personality {
        remote.call("personality", libc::SYS_personality, &[u64::from(p)])?;
    }
    if let Some(off) = a.thp_disable {
        // Bit 1 is PR_THP_DISABLE_EXCEPT_ADVISED, which the setter takes as a flag.
        let args = [
            PR_SET_THP_DISABLE,
            u64::from(off & 1),
            u64::from(off & 2),
            0,
            0,
        ];
        remote.call("prctl(PR_SET_THP_DISABLE)", libc::SYS_prctl, &args)?;
    }
    if let Some(mask) = a.membarrier {
        for bit in (0..32).filter(|b| mask & (1 << b) != 0) {
            let args = [1u64 << bit, 0, 0];
            remote.call("membarrier(register)", libc::SYS_membarrier, &args)?;
        }
    }
    for l in &a.locked {
        let flags = if l.on_fault { MLOCK_ONFAULT } else { 0 };
        remote.call(
            "mlock2",
            libc::SYS_mlock2,
            &[l.start, l.end - l.start, flags],
        )?;
    }
    if a.lock_future {
        remote.call(
            "mlockall(MCL_FUTURE)",
            libc::SYS_mlockall,
            &[libc::MCL_FUTURE as u64],
        )?;
    }
    let leader = a.threads.iter().find(|t| Some(t.tid) == leader_tid);
    if let Some(slack) = leader.and_then(|t| t.timer_slack_ns) {
        set_slack(&mut remote, slack)?;
    }
    // Scheduling last: a real-time policy also zeroes the timer slack, as it did then.
    for t in &a.threads {
        let (Some(now), Some(s)) = (lookup(t.tid), &t.sched) else {
            continue;
        };
        set_sched_attr(now, s).map_err(|source| AttributeError::Sys {
            what: "sched_setattr",
            tid: now.as_raw(),
            source,
        })?;
    }
    if let Some(s) = &a.seccomp {
        let image_main = leader_tid.unwrap_or(pid.as_raw());
        seccomp::restore_main(&mut remote, pid, image_main, image_threads, s)?;
    }
    if let Some(adj) = a.oom_score_adj {
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()).map_err(
            |source| AttributeError::ProcWrite {
                pid: pid.as_raw(),
                what: "oom_score_adj",
                source,
            },
        )?;
    }
    Ok(())
}

fn set_slack(remote: &mut Remote, ns: u64) -> Result<(), RemoteError> {
    // 0 would mean "back to the default": a real-time thread shows 0, and gets it back
    // from its policy.
    if ns != 0 {
        let args = [PR_SET_TIMERSLACK, ns, 0, 0, 0];
        remote.call("prctl(PR_SET_TIMERSLACK)", libc::SYS_prctl, &args)?;
    }
    Ok(())
}

/// Puts back thread `image_tid`'s own attributes, in that thread (`thread`).
pub fn restore_thread(
    thread: &mut RemoteThread,
    mem: &ProcessMemory,
    scratch: u64,
    image_tid: i32,
    a: &ProcessAttributes,
) -> Result<(), AttributeError> {
    let tid = thread.tid();
    let mut remote = Remote {
        thread,
        mem,
        scratch,
    };
    let own = a.threads.iter().find(|t| t.tid == image_tid);
    if let Some(slack) = own.and_then(|t| t.timer_slack_ns) {
        set_slack(&mut remote, slack)?;
    }
    if let Some(s) = &a.seccomp {
        seccomp::restore_thread(&mut remote, tid, image_tid, s)?;
    }
    Ok(())
}

/// Puts back what must come last: after the credentials, the dumpable flag (changing ids
/// sets it) and no_new_privs (it would forbid nothing the restorer still does, but is
/// one-way); after the restorer's last trap, the SIGTRAP action.
pub fn restore_last(
    r: &mut Rethreader,
    a: &ProcessAttributes,
    signals: &[SignalAction],
) -> Result<(), AttributeError> {
    let mut remote = Remote {
        thread: &mut r.main,
        mem: &r.mem,
        scratch: r.scratch,
    };
    // The stub's `int3` ran with every signal blocked: the kernel then forces SIGTRAP
    // through and resets its action (kernel/signal.c force_sig_info_to_task).
    let trap = signals.iter().find(|s| s.signo == libc::SIGTRAP);
    if let Some(action) = trap {
        let bytes: Vec<u8> = [action.handler, action.flags, action.restorer, action.mask]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        remote.write(remote.scratch, &bytes)?;
        let args = [libc::SIGTRAP as u64, remote.scratch, 0, 8];
        remote.call("rt_sigaction(SIGTRAP)", libc::SYS_rt_sigaction, &args)?;
    }
    if let Some(d) = a.dumpable {
        // 2 (SUID_DUMP_ROOT) cannot be set with prctl: 0 is the nearer of the two.
        let d = if d == 1 { 1 } else { 0 };
        let args = [libc::PR_SET_DUMPABLE as u64, d, 0, 0, 0];
        remote.call("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, &args)?;
    }
    if a.no_new_privs == Some(true) {
        let args = [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0];
        remote.call("prctl(PR_SET_NO_NEW_PRIVS)", libc::SYS_prctl, &args)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_ranges_come_from_vmflags() {
        let smaps = "\
00400000-00401000 r-xp 00000000 08:01 12 /bin/x
Size:                  4 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0000004000 rw-p 00000000 00:00 0
Size:                 16 kB
VmFlags: rd wr mr mw me lo ac
7f0000010000-7f0000012000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me lo lf ac
";
        assert_eq!(
            parse_locked(smaps),
            vec![
                LockedRange {
                    start: 0x7f00_0000_0000,
                    end: 0x7f00_0000_4000,
                    on_fault: false
                },
                LockedRange {
                    start: 0x7f00_0001_0000,
                    end: 0x7f00_0001_2000,
                    on_fault: true
                },
            ]
        );
    }

    #[test]
    fn injected_pages_are_cut_out_of_locked_ranges() {
        let r = |start, end| LockedRange {
            start,
            end,
            on_fault: false,
        };
        let cut = without(
            vec![r(0x1000, 0x5000), r(0x5000, 0x6000), r(0x8000, 0x9000)],
            (0x3000, 0x6000),
        );
        assert_eq!(cut, vec![r(0x1000, 0x3000), r(0x8000, 0x9000)]);
    }

    #[test]
    fn own_scheduling_reads_back() {
        let me = Pid::from_raw(nix::unistd::gettid().as_raw());
        let s = sched_of(me).unwrap();
        assert_eq!(s.nice, crate::tracer::sys::thread_nice(0).unwrap());
    }
}
