//! timerfd: a timer on a clock, with the expirations not yet read. A relative timer comes
//! back with the time it had left at checkpoint time (the time between checkpoint and
//! restore does not count, as for a stopped process); a timer set with
//! `TFD_TIMER_ABSTIME` keeps its absolute expiry on its clock (a `CLOCK_REALTIME` deadline
//! that passed while the job was down fires at once). Unread expirations come back with
//! `TFD_IOC_SET_TICKS`.

use super::eventfd::recreate;
use super::{OpenFd, Refusal, info_field, unreadable};
use crate::tracer::fd_syscalls;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, OwnedFd};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimerFdState {
    pub clock: i32,
    /// Expirations not yet read.
    pub ticks: u64,
    /// `TFD_TIMER_ABSTIME`, `TFD_TIMER_CANCEL_ON_SET` as last set.
    pub settime_flags: i32,
    /// Time to the next expiry, (seconds, nanoseconds); zero: disarmed.
    pub left: (i64, i64),
    pub interval: (i64, i64),
    /// For an absolute timer: the expiry on its clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<(i64, i64)>,
    pub nonblocking: bool,
}

/// Clocks a timerfd may use (`timerfd_create(2)`).
pub const CLOCKS: [i32; 5] = [
    libc::CLOCK_REALTIME,
    libc::CLOCK_MONOTONIC,
    libc::CLOCK_BOOTTIME,
    libc::CLOCK_REALTIME_ALARM,
    libc::CLOCK_BOOTTIME_ALARM,
];

/// `(12, 345)` from fdinfo's `(12, 345)`.
fn pair(text: &str) -> Option<(i64, i64)> {
    let (s, ns) = text.trim_matches(['(', ')']).split_once(',')?;
    Some((s.trim().parse().ok()?, ns.trim().parse().ok()?))
}

pub fn capture(fd: &OpenFd) -> Result<TimerFdState, Refusal> {
    // A periodic timer that expired and was not read shows `it_value (0, 0)` until the
    // kernel is asked: ask, then read fdinfo again.
    let updated = fd
        .copy_here("the timerfd")
        .ok()
        .filter(|copy| fd_syscalls::timerfd_update(copy.as_fd()).is_ok())
        .and_then(|_| std::fs::read_to_string(format!("/proc/{}/fdinfo/{}", fd.pid, fd.fd)).ok());
    let info = updated.as_deref().unwrap_or(&fd.info);
    let field = |name| info_field(info, name);
    let parsed = (|| {
        let clock: i32 = field("clockid:")?.parse().ok()?;
        let ticks = field("ticks:")?.parse().ok()?;
        let settime_flags = i32::from_str_radix(field("settime flags:")?, 8).ok()?;
        let left = pair(field("it_value:")?)?;
        let interval = pair(field("it_interval:")?)?;
        Some((clock, ticks, settime_flags, left, interval))
    })();
    let Some((clock, ticks, settime_flags, left, interval)) = parsed else {
        return Err(unreadable("timerfd", fd));
    };
    if !CLOCKS.contains(&clock) {
        return Err(unreadable("timerfd", fd));
    }
    let armed = left != (0, 0);
    let expires_at = (armed && settime_flags & libc::TFD_TIMER_ABSTIME != 0)
        .then(|| now(clock).map(|t| add(t, left)))
        .flatten();
    Ok(TimerFdState {
        clock,
        ticks,
        settime_flags,
        left,
        interval,
        expires_at,
        nonblocking: fd.nonblocking(),
    })
}

/// The time on `clock` (an alarm clock reads as the clock it wakes on).
fn now(clock: i32) -> Option<(i64, i64)> {
    let base = match clock {
        libc::CLOCK_REALTIME_ALARM => libc::CLOCK_REALTIME,
        libc::CLOCK_BOOTTIME_ALARM => libc::CLOCK_BOOTTIME,
        c => c,
    };
    let t = nix::time::clock_gettime(nix::time::ClockId::from_raw(base)).ok()?;
    Some((t.tv_sec(), t.tv_nsec()))
}

fn add(a: (i64, i64), b: (i64, i64)) -> (i64, i64) {
    let ns = a.1 + b.1;
    (a.0 + b.0 + ns / 1_000_000_000, ns % 1_000_000_000)
}

fn timespec((sec, nsec): (i64, i64)) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

impl TimerFdState {
    pub fn open(&self) -> Result<OwnedFd, super::ObjectError> {
        let flags = if self.nonblocking {
            libc::TFD_NONBLOCK
        } else {
            0
        };
        let fd = fd_syscalls::timerfd_create(self.clock, flags).map_err(recreate("a timerfd"))?;
        if self.left != (0, 0) {
            let (flags, value) = match self.expires_at {
                Some(at) => (self.settime_flags, at),
                None => (0, self.left),
            };
            fd_syscalls::timerfd_settime(
                fd.as_fd(),
                flags,
                timespec(value),
                timespec(self.interval),
            )
            .map_err(recreate("a timerfd's timer"))?;
        }
        if self.ticks > 0 {
            fd_syscalls::timerfd_set_ticks(fd.as_fd(), self.ticks)
                .map_err(recreate("a timerfd's expirations"))?;
        }
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_pairs_and_sums() {
        assert_eq!(pair("(99, 937708746)"), Some((99, 937_708_746)));
        assert_eq!(add((1, 600_000_000), (2, 500_000_000)), (4, 100_000_000));
    }
}
