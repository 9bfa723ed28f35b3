//! POSIX timers (`timer_create`) and interval timers (`setitimer`, `alarm`).
//!
//! At checkpoint `/proc/PID/timers` names each POSIX timer (id, signal and `sigev_value`,
//! how it notifies, clock); `timer_gettime` and `timer_getoverrun`, run inside the frozen
//! target, add the time left and the interval. `getitimer` reads the three interval
//! timers the same way. At restore the timers are created again inside the new process
//! with their ids (`PR_TIMER_CREATE_RESTORE_IDS`, Linux 6.13+, needs
//! CAP_CHECKPOINT_RESTORE) and armed with the time that was left, relative to now: the
//! time the job spent checkpointed does not count (as with CRIU).

use super::attributes::Remote;
use super::remote::RemoteError;
use crate::image::attributes::{
    IntervalTimer, MAX_POSIX_TIMERS, PosixTimer, SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD,
    SIGEV_THREAD_ID,
};
use crate::image::format::PendingSignal;
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    #[error("cannot read /proc/{pid}/timers: {source}")]
    Read {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/{pid}/timers: unexpected line {line:?}")]
    Parse { pid: i32, line: String },
    #[error(
        "process {pid} has {count} POSIX timers, more than the {MAX_POSIX_TIMERS} an image holds"
    )]
    TooMany { pid: i32, count: usize },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Memory(#[from] super::memory::MemoryError),
    #[error(
        "POSIX timer {want} came back as timer {got}: this kernel does not restore timer ids \
         (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.13)"
    )]
    WrongId { want: i32, got: i32 },
    #[error("POSIX timer {id} signals thread {tid}, which the restored process does not have")]
    NoThread { id: i32, tid: i32 },
    #[error(
        "POSIX timer {id} counts the CPU time of process or thread {pid}, which has another id after a restore with a new PID"
    )]
    CpuClockOfOldPid { id: i32, pid: i32 },
}

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, …)` (linux/prctl.h, 6.13).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const RESTORE_IDS_OFF: u64 = 0;
const RESTORE_IDS_ON: u64 = 1;

/// Scratch layout: `struct itimerspec`/`itimerval` at 0 (32 bytes), `struct sigevent` at
/// 64 (64 bytes), the timer id `timer_create` reads and writes at 128.
const TIMES: u64 = 0;
const SIGEVENT: u64 = 64;
const SIGEVENT_BYTES: usize = 64;
const TIMER_ID: u64 = 128;

const NANOS: u64 = 1_000_000_000;

/// A timer's line group in `/proc/PID/timers`, before the remote calls.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    id: i32,
    signo: i32,
    sigval: u64,
    notify: i32,
    tid: i32,
    clock: i32,
}

/// Parses `/proc/PID/timers` (fs/proc/base.c `show_timer`): per timer
/// `ID: n`, `signal: signo/sigval (hex)`, `notify: signal|none|thread/pid|tid.N`,
/// `ClockID: n`.
fn parse(pid: i32, text: &str) -> Result<Vec<Listed>, TimerError> {
    let bad = |line: &str| TimerError::Parse {
        pid,
        line: line.to_string(),
    };
    let mut out: Vec<Listed> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once(':').ok_or_else(|| bad(line))?;
        let value = value.trim();
        if key == "ID" {
            out.push(Listed {
                id: value.parse().map_err(|_| bad(line))?,
                signo: 0,
                sigval: 0,
                notify: SIGEV_SIGNAL,
                tid: 0,
                clock: 0,
            });
            continue;
        }
        let t = out.last_mut().ok_or_else(|| bad(line))?;
        match key {
            "signal" => {
                let (signo, sigval) = value.split_once('/').ok_or_else(|| bad(line))?;
                t.signo = signo.parse().map_err(|_| bad(line))?;
                let hex = sigval.trim_start_matches("0x");
                t.sigval = u64::from_str_radix(hex, 16).map_err(|_| bad(line))?;
            }
            "notify" => {
                let (how, whom) = value.split_once('/').ok_or_else(|| bad(line))?;
                let (kind, id) = whom.split_once('.').ok_or_else(|| bad(line))?;
                let base = match how {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return Err(bad(line)),
                };
                (t.notify, t.tid) = match kind {
                    "tid" => (base | SIGEV_THREAD_ID, id.parse().map_err(|_| bad(line))?),
                    "pid" => (base, 0),
                    _ => return Err(bad(line)),
                };
            }
            "ClockID" => t.clock = value.parse().map_err(|_| bad(line))?,
            _ => return Err(bad(line)),
        }
    }
    Ok(out)
}

fn timespec_ns(sec: u64, nsec: u64) -> u64 {
    sec.saturating_mul(NANOS).saturating_add(nsec)
}

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// `struct itimerspec` (interval, then value; seconds and nanoseconds each).
fn itimerspec(interval_ns: u64, value_ns: u64) -> Vec<u8> {
    [
        interval_ns / NANOS,
        interval_ns % NANOS,
        value_ns / NANOS,
        value_ns % NANOS,
    ]
    .iter()
    .flat_map(|w| w.to_le_bytes())
    .collect()
}

/// `struct itimerval` (interval, then value; seconds and microseconds each). A value that
/// is not 0 stays not 0: a timer about to expire must still be armed.
fn itimerval(interval_ns: u64, value_ns: u64) -> Vec<u8> {
    let us = |ns: u64| ns.div_ceil(1000);
    let (interval, value) = (us(interval_ns), us(value_ns));
    [
        interval / 1_000_000,
        interval % 1_000_000,
        value / 1_000_000,
        value % 1_000_000,
    ]
    .iter()
    .flat_map(|w| w.to_le_bytes())
    .collect()
}

/// Every POSIX timer of the frozen process `pid`, with its time left.
pub fn capture_posix(pid: Pid, remote: &mut Remote) -> Result<Vec<PosixTimer>, TimerError> {
    let raw = pid.as_raw();
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .map_err(|source| TimerError::Read { pid: raw, source })?;
    let listed = parse(raw, &text)?;
    if listed.len() > MAX_POSIX_TIMERS {
        return Err(TimerError::TooMany {
            pid: raw,
            count: listed.len(),
        });
    }
    let mut timers = Vec::with_capacity(listed.len());
    for l in listed {
        let at = remote.scratch + TIMES;
        let id = l.id as u64;
        remote.call("timer_gettime", libc::SYS_timer_gettime, &[id, at])?;
        let w = words(&remote.read(at, 32)?);
        let overrun = remote.call("timer_getoverrun", libc::SYS_timer_getoverrun, &[id])?;
        timers.push(PosixTimer {
            id: l.id,
            clock: l.clock,
            notify: l.notify,
            signo: l.signo,
            sigval: l.sigval,
            tid: l.tid,
            interval_ns: timespec_ns(w[0], w[1]),
            value_ns: timespec_ns(w[2], w[3]),
            overrun: i32::try_from(overrun).unwrap_or(i32::MAX),
            signal_pending: false,
        });
    }
    // Ascending ids: restored in that order, each id is free when its turn comes.
    timers.sort_by_key(|t| t.id);
    Ok(timers)
}

/// The armed interval timers (ITIMER_REAL, _VIRTUAL, _PROF).
pub fn capture_interval(remote: &mut Remote) -> Result<Vec<IntervalTimer>, TimerError> {
    let mut out = Vec::new();
    for which in 0..3 {
        let at = remote.scratch + TIMES;
        remote.call("getitimer", libc::SYS_getitimer, &[which, at])?;
        let w = words(&remote.read(at, 32)?);
        let (interval_ns, value_ns) = (
            timespec_ns(w[0], w[1] * 1000),
            timespec_ns(w[2], w[3] * 1000),
        );
        if value_ns != 0 {
            out.push(IntervalTimer {
                which: which as i32,
                value_ns,
                interval_ns,
            });
        }
    }
    Ok(out)
}

/// `si_code` of a timer's signal.
const SI_TIMER: i32 = -2;

/// The timer whose signal `info` is (a `siginfo_t`: signo, errno, code, then for
/// SI_TIMER the timer id).
fn timer_of(info: &[u8]) -> Option<i32> {
    let int = |at: usize| Some(i32::from_le_bytes(info.get(at..at + 4)?.try_into().ok()?));
    (int(8)? == SI_TIMER).then(|| int(16)).flatten()
}

/// Takes the queued signals of `timers` out of `pending` (the process's and each
/// thread's queued signals) and marks those timers `signal_pending`: a timer whose signal
/// is queued queues no other until it is delivered, which a copy queued by the restore
/// beside a re-armed timer would not respect.
pub fn take_pending(timers: &mut [PosixTimer], pending: &mut [&mut Vec<PendingSignal>]) {
    for queue in pending.iter_mut() {
        queue.retain(|p| {
            let own = timer_of(&p.siginfo).and_then(|id| {
                timers
                    .iter_mut()
                    .find(|t| t.id == id && t.signo == p.signo && t.notify != SIGEV_NONE)
            });
            match own {
                Some(t) => {
                    t.signal_pending = true;
                    false
                }
                None => true,
            }
        });
    }
}

/// Where a restored thread is now, by its TID in the image.
pub type TidMap<'a> = &'a dyn Fn(i32) -> Option<Pid>;

/// Creates the POSIX timers again with their ids, then arms them. `tid_now` maps a TID
/// of the image to the thread's TID now; `new_ids` says the process has a new PID.
pub fn restore_posix(
    remote: &mut Remote,
    timers: &[PosixTimer],
    tid_now: TidMap,
    new_ids: bool,
) -> Result<(), TimerError> {
    if timers.is_empty() {
        return Ok(());
    }
    for t in timers {
        // A CPU-time clock names its process or thread: ~pid << 3 | flags; 0 is "self".
        let clock_pid = !(t.clock >> 3);
        if new_ids && t.clock < 0 && clock_pid != 0 {
            return Err(TimerError::CpuClockOfOldPid {
                id: t.id,
                pid: clock_pid,
            });
        }
    }
    let on = [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0];
    let switched_on = remote.try_call(libc::SYS_prctl, &on)?;
    // Without CAP_CHECKPOINT_RESTORE (a user's `--new-pid` restore) the ids come out
    // 0, 1, 2 … as a new process's do: good enough when they were those, an error
    // (`WrongId`) otherwise.
    if switched_on != 0 && switched_on != -i64::from(libc::EPERM) {
        return Err(RemoteError::Syscall {
            tid: remote.thread.tid().as_raw(),
            name: "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            source: std::io::Error::from_raw_os_error(-switched_on as i32),
        }
        .into());
    }
    let created = create_all(remote, timers, tid_now);
    if switched_on == 0 {
        let off = [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0];
        remote.call("prctl(PR_TIMER_CREATE_RESTORE_IDS)", libc::SYS_prctl, &off)?;
    }
    created?;
    for t in timers
        .iter()
        .filter(|t| t.value_ns != 0 || t.signal_pending)
    {
        // 1 ns: expire now, and queue the signal that was pending.
        let value_ns = if t.signal_pending { 1 } else { t.value_ns };
        let at = remote.scratch + TIMES;
        remote.write(at, &itimerspec(t.interval_ns, value_ns))?;
        remote.call(
            "timer_settime",
            libc::SYS_timer_settime,
            &[t.id as u64, 0, at, 0],
        )?;
    }
    Ok(())
}

fn create_all(
    remote: &mut Remote,
    timers: &[PosixTimer],
    tid_now: TidMap,
) -> Result<(), TimerError> {
    for t in timers {
        let tid = if t.notify & SIGEV_THREAD_ID != 0 {
            tid_now(t.tid)
                .ok_or(TimerError::NoThread {
                    id: t.id,
                    tid: t.tid,
                })?
                .as_raw()
        } else {
            0
        };
        // struct sigevent: sigev_value, sigev_signo, sigev_notify, then the union whose
        // first int is the thread id.
        let mut event = [0u8; SIGEVENT_BYTES];
        event[0..8].copy_from_slice(&t.sigval.to_le_bytes());
        event[8..12].copy_from_slice(&t.signo.to_le_bytes());
        event[12..16].copy_from_slice(&t.notify.to_le_bytes());
        event[16..20].copy_from_slice(&tid.to_le_bytes());
        let (event_at, id_at) = (remote.scratch + SIGEVENT, remote.scratch + TIMER_ID);
        remote.write(event_at, &event)?;
        remote.write(id_at, &t.id.to_le_bytes())?;
        remote.call(
            "timer_create",
            libc::SYS_timer_create,
            &[t.clock as i64 as u64, event_at, id_at],
        )?;
        let got = i32::from_le_bytes(remote.read(id_at, 4)?.try_into().expect("4 bytes"));
        if got != t.id {
            return Err(TimerError::WrongId { want: t.id, got });
        }
    }
    Ok(())
}

/// Arms the interval timers with the time that was left.
pub fn restore_interval(remote: &mut Remote, timers: &[IntervalTimer]) -> Result<(), TimerError> {
    for t in timers {
        let at = remote.scratch + TIMES;
        remote.write(at, &itimerval(t.interval_ns, t.value_ns))?;
        remote.call("setitimer", libc::SYS_setitimer, &[t.which as u64, at, 0])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers_are_parsed() {
        let text = "ID: 2\nsignal: 34/000000001234abcd\nnotify: signal/tid.7404\nClockID: 7\n\
                    ID: 1\nsignal: 34/0000000000000000\nnotify: none/pid.7404\nClockID: -6\n\
                    ID: 0\nsignal: 14/00007ffd00000010\nnotify: signal/pid.7404\nClockID: 1\n";
        let t = parse(7404, text).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            Listed {
                id: 2,
                signo: 34,
                sigval: 0x1234_abcd,
                notify: SIGEV_SIGNAL | SIGEV_THREAD_ID,
                tid: 7404,
                clock: 7
            }
        );
        assert_eq!((t[1].notify, t[1].clock), (SIGEV_NONE, -6));
        assert_eq!(
            (t[2].signo, t[2].sigval, t[2].notify),
            (14, 0x7ffd_0000_0010, SIGEV_SIGNAL)
        );
        assert!(parse(1, "signal: 3/0\n").is_err());
        assert!(parse(1, "ID: 1\nnotify: bogus/pid.3\n").is_err());
    }

    #[test]
    fn a_queued_timer_signal_marks_its_timer() {
        let timer = |id| PosixTimer {
            id,
            clock: 1,
            notify: SIGEV_SIGNAL,
            signo: 34,
            sigval: 0,
            tid: 0,
            value_ns: 0,
            interval_ns: 0,
            overrun: 0,
            signal_pending: false,
        };
        let info = |code: i32, id: i32| {
            let mut b = vec![0u8; 128];
            b[0..4].copy_from_slice(&34i32.to_le_bytes());
            b[8..12].copy_from_slice(&code.to_le_bytes());
            b[16..20].copy_from_slice(&id.to_le_bytes());
            PendingSignal {
                signo: 34,
                siginfo: b,
            }
        };
        let mut timers = vec![timer(0), timer(3)];
        // A timer's signal, and a sigqueue()d one (SI_QUEUE) of the same number.
        let mut process = vec![info(SI_TIMER, 3), info(-1, 3)];
        let mut thread = vec![];
        take_pending(&mut timers, &mut [&mut process, &mut thread]);
        assert_eq!(process.len(), 1);
        assert!(timers[1].signal_pending && !timers[0].signal_pending);
    }

    #[test]
    fn times_round_trip_and_stay_armed() {
        let spec = words(&itimerspec(2_500_000_000, 7));
        assert_eq!(spec, vec![2, 500_000_000, 0, 7]);
        // 7 ns left is still armed as an interval timer: 1 us.
        let val = words(&itimerval(1_000_000_000, 7));
        assert_eq!(val, vec![1, 0, 0, 1]);
    }
}
