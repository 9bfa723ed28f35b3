//! Manifest types of per-process kernel state that is neither memory nor files: POSIX
//! timers, interval timers, and attributes set with `prctl`, `personality`, `sched_setattr`,
//! `membarrier`, `mlock` and `/proc/PID/oom_score_adj`. `tracer::timers` and
//! `tracer::attributes` capture and restore them.
//!
//! Every field is optional or empty by default: an image from before these were recorded
//! restores as it did then (the restored process keeps what it inherits).

use serde::{Deserialize, Serialize};

/// The kernel's `MAX_SIGNAL`-style bounds the validator applies.
const MAX_SIGNAL: i32 = 64;
/// More timers than this in one process is no image mlckpt wrote (the kernel allows as
/// many as RLIMIT_SIGPENDING; a validator bound keeps a hostile image from asking for
/// millions of remote calls).
pub const MAX_POSIX_TIMERS: usize = 1 << 16;
/// More locked ranges than this is no image mlckpt wrote (the kernel's default
/// vm.max_map_count is 65530).
pub const MAX_LOCKED_RANGES: usize = 1 << 20;
/// `struct itimerspec` fields are seconds and nanoseconds below this.
const NANOS_PER_SEC: u64 = 1_000_000_000;
/// The longest time a timer may be set to: what `timespec64_valid_strict` accepts, well
/// below `KTIME_SEC_MAX` (about 292 years).
pub const MAX_TIMER_NS: u64 = 200 * 365 * 24 * 3600 * NANOS_PER_SEC;

/// Per-process kernel state beyond memory, files and signals.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessAttributes {
    /// POSIX timers (`timer_create`), restored with their ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub posix_timers: Vec<PosixTimer>,
    /// Armed interval timers (`setitimer`; `alarm` is `ITIMER_REAL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interval_timers: Vec<IntervalTimer>,
    /// `personality(2)` flags and domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personality: Option<u32>,
    /// `/proc/PID/oom_score_adj`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    /// `PR_GET_THP_DISABLE`: 0, 1 (disabled), or 3 (disabled except where advised,
    /// `PR_THP_DISABLE_EXCEPT_ADVISED`, Linux 6.18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thp_disable: Option<u32>,
    /// `PR_GET_DUMPABLE` (0, 1 or 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dumpable: Option<u32>,
    /// `PR_GET_NO_NEW_PRIVS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_new_privs: Option<bool>,
    /// `MEMBARRIER_CMD_GET_REGISTRATIONS`: the `MEMBARRIER_CMD_REGISTER_*` commands the
    /// process ran, as a mask of command bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membarrier: Option<u32>,
    /// `mlockall(MCL_FUTURE)` in force: mappings made from now on are locked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lock_future: bool,
    /// Address ranges locked in memory (`mlock`, `MAP_LOCKED`, `mlockall`): VmFlags `lo`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locked: Vec<LockedRange>,
    /// Scheduling and timer slack of each thread, by TID (in the image's thread order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<ThreadAttributes>,
    /// Seccomp filters of the threads, when any has some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<SeccompFilters>,
}

impl ProcessAttributes {
    pub fn is_empty(&self) -> bool {
        self == &ProcessAttributes::default()
    }

    /// What is wrong with the values, as (field below `attributes`, problem).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut fail = |field: String, problem: String| out.push((field, problem));
        if self.posix_timers.len() > MAX_POSIX_TIMERS {
            fail(
                "posix_timers".into(),
                format!(
                    "{} timers, more than {MAX_POSIX_TIMERS}",
                    self.posix_timers.len()
                ),
            );
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, t) in self.posix_timers.iter().take(MAX_POSIX_TIMERS).enumerate() {
            let at = format!("posix_timers[{i}]");
            if t.id < 0 || !ids.insert(t.id) {
                fail(
                    format!("{at}.id"),
                    format!("{} is negative or listed twice", t.id),
                );
            }
            if !matches!(t.notify, 0 | 1 | 2 | 4) {
                fail(
                    format!("{at}.notify"),
                    format!(
                        "{} is not SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD or SIGEV_THREAD_ID",
                        t.notify
                    ),
                );
            }
            let needs_signal = t.notify != SIGEV_NONE;
            if needs_signal && !(1..=MAX_SIGNAL).contains(&t.signo) {
                fail(
                    format!("{at}.signo"),
                    format!("{} is not a signal", t.signo),
                );
            }
            if t.notify == SIGEV_THREAD_ID && t.tid <= 0 {
                fail(format!("{at}.tid"), format!("{} is not a thread id", t.tid));
            }
            check_times(&mut fail, &at, t.value_ns, t.interval_ns);
        }
        let mut which = std::collections::BTreeSet::new();
        for (i, t) in self.interval_timers.iter().enumerate() {
            let at = format!("interval_timers[{i}]");
            if !(0..=2).contains(&t.which) || !which.insert(t.which) {
                fail(
                    format!("{at}.which"),
                    format!(
                        "{} is not ITIMER_REAL/VIRTUAL/PROF, or is listed twice",
                        t.which
                    ),
                );
            }
            check_times(&mut fail, &at, t.value_ns, t.interval_ns);
        }
        if let Some(adj) = self.oom_score_adj
            && !(-1000..=1000).contains(&adj)
        {
            fail(
                "oom_score_adj".into(),
                format!("{adj} is outside -1000..=1000"),
            );
        }
        if let Some(t) = self.thp_disable
            && !matches!(t, 0 | 1 | 3)
        {
            fail("thp_disable".into(), format!("{t} is not 0, 1 or 3"));
        }
        if let Some(d) = self.dumpable
            && d > 2
        {
            fail("dumpable".into(), format!("{d} is not 0, 1 or 2"));
        }
        if self.locked.len() > MAX_LOCKED_RANGES {
            fail(
                "locked".into(),
                format!(
                    "{} ranges, more than {MAX_LOCKED_RANGES}",
                    self.locked.len()
                ),
            );
        }
        for (i, r) in self.locked.iter().take(MAX_LOCKED_RANGES).enumerate() {
            let aligned =
                r.start % super::format::PAGE_SIZE == 0 && r.end % super::format::PAGE_SIZE == 0;
            if !(aligned && r.start < r.end && r.end <= crate::image::validate::TASK_TOP) {
                fail(
                    format!("locked[{i}]"),
                    format!(
                        "{:#x}..{:#x} is not a page-aligned range of user space",
                        r.start, r.end
                    ),
                );
            }
        }
        if let Some(s) = &self.seccomp {
            for (field, problem) in s.problems() {
                fail(format!("seccomp.{field}"), problem);
            }
        }
        for (i, t) in self.threads.iter().enumerate() {
            let at = format!("threads[{i}]");
            if let Some(s) = &t.sched {
                if !(-20..=19).contains(&s.nice) {
                    fail(
                        format!("{at}.sched.nice"),
                        format!("{} is outside -20..=19", s.nice),
                    );
                }
                if !matches!(s.policy, 0 | 1 | 2 | 3 | 5) {
                    fail(
                        format!("{at}.sched.policy"),
                        format!(
                            "{} is not SCHED_OTHER, _FIFO, _RR, _BATCH or _IDLE",
                            s.policy
                        ),
                    );
                }
                if s.priority > 99 {
                    fail(
                        format!("{at}.sched.priority"),
                        format!("{} is above 99", s.priority),
                    );
                }
            }
        }
        out
    }
}

fn check_times(fail: &mut impl FnMut(String, String), at: &str, value_ns: u64, interval_ns: u64) {
    for (name, ns) in [("value_ns", value_ns), ("interval_ns", interval_ns)] {
        if ns > MAX_TIMER_NS {
            fail(
                format!("{at}.{name}"),
                format!("{ns} ns is more than {MAX_TIMER_NS}"),
            );
        }
    }
}

/// `sigev_notify` values (asm-generic/siginfo.h).
pub const SIGEV_SIGNAL: i32 = 0;
pub const SIGEV_NONE: i32 = 1;
pub const SIGEV_THREAD: i32 = 2;
pub const SIGEV_THREAD_ID: i32 = 4;

/// A POSIX timer as `/proc/PID/timers`, `timer_gettime` and `timer_getoverrun` show it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PosixTimer {
    /// The id `timer_create` gave (what the process holds as its `timer_t`).
    pub id: i32,
    /// The clock: a fixed one (CLOCK_REALTIME, CLOCK_MONOTONIC …) or a CPU-time clock,
    /// whose id names the process or thread by PID (the same after a restore).
    pub clock: i32,
    /// `sigev_notify` as the kernel keeps it (`SIGEV_THREAD_ID` alone means signal a thread).
    pub notify: i32,
    /// `sigev_signo`.
    pub signo: i32,
    /// `sigev_value`: what the signal's `si_value` carries.
    pub sigval: u64,
    /// The thread signalled, for `SIGEV_THREAD_ID`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tid: i32,
    /// Time left until the next expiry (0: disarmed).
    pub value_ns: u64,
    pub interval_ns: u64,
    /// `timer_getoverrun` at checkpoint time (informational: the kernel offers no way to
    /// set it, and it counts from the next expiry after a restore).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overrun: i32,
    /// Its signal was queued and not yet delivered: the restore makes the timer expire at
    /// once (so the kernel queues its own signal, counting overruns until it is taken)
    /// instead of queueing a copy beside a timer that would queue another.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signal_pending: bool,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// An armed interval timer (`getitimer`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IntervalTimer {
    /// ITIMER_REAL (0), ITIMER_VIRTUAL (1), ITIMER_PROF (2).
    pub which: i32,
    pub value_ns: u64,
    pub interval_ns: u64,
}

/// A locked address range.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockedRange {
    pub start: u64,
    pub end: u64,
    /// Locked on fault (`mlock2(MLOCK_ONFAULT)`, VmFlags `lf`) rather than populated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_fault: bool,
}

/// One thread's scheduling and timer slack.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ThreadAttributes {
    pub tid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sched: Option<Scheduling>,
    /// `PR_GET_TIMERSLACK`, nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_slack_ns: Option<u64>,
}

/// What `sched_getattr` reports (the deadline fields are not restored: SCHED_DEADLINE
/// threads are refused at checkpoint).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Scheduling {
    pub policy: u32,
    /// `sched_flags` (SCHED_FLAG_RESET_ON_FORK …).
    pub flags: u64,
    pub nice: i32,
    /// Real-time priority (SCHED_FIFO, SCHED_RR).
    pub priority: u32,
}

/// Seccomp filters: each distinct filter once, and each thread's chain of them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SeccompFilters {
    pub filters: Vec<SeccompFilter>,
    /// Every thread of the process (those without filters with an empty chain).
    pub threads: Vec<SeccompChain>,
}

/// A classic BPF program as `seccomp(SECCOMP_SET_MODE_FILTER)` takes it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SeccompFilter {
    /// SECCOMP_FILTER_FLAG_* it was installed with, as far as the kernel reports them
    /// (SECCOMP_FILTER_FLAG_LOG).
    pub flags: u64,
    /// `struct sock_filter` instructions (code, jt, jf, k), each as one little-endian word.
    pub program: Vec<u64>,
}

/// One thread's filters, oldest first, as indices into `SeccompFilters::filters`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SeccompChain {
    pub tid: i32,
    pub filters: Vec<usize>,
}

/// BPF_MAXINSNS: the longest program the kernel accepts.
const MAX_FILTER_INSNS: usize = 4096;
/// MAX_INSNS_PER_PATH (kernel/seccomp.c): all of a thread's filters together, each
/// counting 4 more.
const MAX_CHAIN_INSNS: usize = 32768;
/// SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW.
const RESTORED_FILTER_FLAGS: u64 = 2 | 4;

impl SeccompFilters {
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, f) in self.filters.iter().enumerate() {
            if f.program.is_empty() || f.program.len() > MAX_FILTER_INSNS {
                out.push((
                    format!("filters[{i}].program"),
                    format!(
                        "{} instructions, not 1..={MAX_FILTER_INSNS}",
                        f.program.len()
                    ),
                ));
            }
            if f.flags & !RESTORED_FILTER_FLAGS != 0 {
                out.push((
                    format!("filters[{i}].flags"),
                    format!("{:#x} has flags a restore does not set", f.flags),
                ));
            }
        }
        let mut tids = std::collections::BTreeSet::new();
        for (i, t) in self.threads.iter().enumerate() {
            if !tids.insert(t.tid) {
                out.push((
                    format!("threads[{i}].tid"),
                    format!("{} is listed twice", t.tid),
                ));
            }
            let mut total = 0usize;
            for &k in &t.filters {
                match self.filters.get(k) {
                    Some(f) => total = total.saturating_add(f.program.len() + 4),
                    None => out.push((
                        format!("threads[{i}].filters"),
                        format!("filter {k} does not exist"),
                    )),
                }
            }
            if total > MAX_CHAIN_INSNS {
                out.push((
                    format!("threads[{i}].filters"),
                    format!("{total} instructions in all, more than {MAX_CHAIN_INSNS}"),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_named() {
        let a = ProcessAttributes {
            posix_timers: vec![PosixTimer {
                id: -1,
                clock: 1,
                notify: 9,
                signo: 99,
                sigval: 0,
                tid: 0,
                value_ns: u64::MAX,
                interval_ns: 0,
                overrun: 0,
                signal_pending: false,
            }],
            interval_timers: vec![IntervalTimer {
                which: 7,
                value_ns: 0,
                interval_ns: 0,
            }],
            oom_score_adj: Some(5000),
            dumpable: Some(9),
            locked: vec![LockedRange {
                start: 0x2000,
                end: 0x1000,
                on_fault: false,
            }],
            ..Default::default()
        };
        let fields: Vec<String> = a.problems().into_iter().map(|p| p.0).collect();
        for want in [
            "posix_timers[0].id",
            "posix_timers[0].notify",
            "posix_timers[0].signo",
            "posix_timers[0].value_ns",
            "interval_timers[0].which",
            "oom_score_adj",
            "dumpable",
            "locked[0]",
        ] {
            assert!(fields.iter().any(|f| f == want), "{want} not in {fields:?}");
        }
    }

    #[test]
    fn empty_attributes_are_not_written() {
        let a = ProcessAttributes::default();
        assert!(a.is_empty());
        assert_eq!(serde_json::to_string(&a).unwrap(), "{}");
        assert!(a.problems().is_empty());
    }
}
