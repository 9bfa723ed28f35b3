//! When the supervisor checkpoints, and to which tier.
//!
//! Every tier has its own interval. When several are due together, one checkpoint is taken
//! at the highest due tier (global > partner > local) and the timers of the lower tiers
//! restart from that moment: a global checkpoint also stands for the local one that fell due
//! with it. Timers run on their scheduled times, not on the moment a checkpoint finished, so
//! intervals that are multiples of each other keep colliding (local 1 s, partner 2 s: every
//! second local checkpoint is a partner one) however long each checkpoint takes.
//!
//! Pure: time is a parameter.

use super::config::IntervalConfig;
use crate::image::format::TierKind;
use std::time::{Duration, Instant};

/// Timers due within this of each other collide: decimal intervals (0.1 s, 0.3 s) need
/// not add up to the nanosecond. At most a quarter of the shortest interval.
const COINCIDENT: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub struct Schedule {
    /// Lowest tier first.
    timers: Vec<Timer>,
    slack: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    tier: TierKind,
    every: Duration,
    next: Instant,
}

impl Schedule {
    /// Timers for the tiers with a non-zero interval for which `usable` holds, started at
    /// `start`.
    pub fn new(
        intervals: &IntervalConfig,
        usable: impl Fn(TierKind) -> bool,
        start: Instant,
    ) -> Schedule {
        let timers: Vec<Timer> = TierKind::ALL
            .into_iter()
            .map(|tier| (tier, interval_of(intervals, tier)))
            .filter(|&(tier, every)| !every.is_zero() && usable(tier))
            .map(|(tier, every)| Timer {
                tier,
                every,
                next: start + every,
            })
            .collect();
        let shortest = timers.iter().map(|t| t.every).min().unwrap_or(COINCIDENT);
        Schedule {
            timers,
            slack: COINCIDENT.min(shortest / 4),
        }
    }

    /// When the next checkpoint falls due; `None` without any timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.iter().map(|t| t.next).min()
    }

    /// The tier to checkpoint to at `now`, if any timer is due; restarts the timers of
    /// that tier and of every lower one.
    pub fn take_due(&mut self, now: Instant) -> Option<TierKind> {
        let fired = self
            .timers
            .iter()
            .rev()
            .find(|t| t.next <= now + self.slack)
            .copied()?;
        let slack = self.slack;
        for timer in self.timers.iter_mut().filter(|t| t.tier <= fired.tier) {
            timer.next = first_after(fired.next, timer.every, now, slack);
        }
        Some(fired.tier)
    }
}

fn interval_of(intervals: &IntervalConfig, tier: TierKind) -> Duration {
    match tier {
        TierKind::Local => intervals.local,
        TierKind::Partner => intervals.partner,
        TierKind::Global => intervals.global,
    }
}

/// `from + k * every` for the smallest k >= 1 that lies after `now`: a checkpoint that
/// overran its interval is not followed by a burst of catch-up checkpoints.
fn first_after(from: Instant, every: Duration, now: Instant, slack: Duration) -> Instant {
    let mut next = from + every;
    if next + slack <= now {
        let behind = now.duration_since(next).as_nanos() / every.as_nanos();
        let skip = u32::try_from(behind + 1).unwrap_or(u32::MAX);
        next += every.saturating_mul(skip);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intervals(local: f64, partner: f64, global: f64) -> IntervalConfig {
        let d = Duration::from_secs_f64;
        IntervalConfig {
            local: d(local),
            partner: d(partner),
            global: d(global),
        }
    }

    /// (second, tier) of every checkpoint up to `until` seconds, for checkpoints that take
    /// `cost` seconds each.
    fn fired(i: IntervalConfig, until: f64, cost: f64) -> Vec<(f64, TierKind)> {
        let t0 = Instant::now();
        let mut s = Schedule::new(&i, |_| true, t0);
        let mut fired = Vec::new();
        let mut now = t0;
        while let Some(due) = s.next_deadline() {
            now = now.max(due);
            let at = now.duration_since(t0).as_secs_f64();
            if at > until {
                break;
            }
            if let Some(tier) = s.take_due(now) {
                fired.push(((at * 1000.0).round() / 1000.0, tier));
                now += Duration::from_secs_f64(cost);
            }
        }
        fired
    }

    fn tiers(i: IntervalConfig, until: f64, cost: f64) -> Vec<TierKind> {
        fired(i, until, cost).into_iter().map(|f| f.1).collect()
    }

    use TierKind::{Global as G, Local as L, Partner as P};

    #[test]
    fn collisions_take_the_highest_tier() {
        let expected = [
            (1.0, L),
            (2.0, P),
            (3.0, L),
            (4.0, G),
            (5.0, L),
            (6.0, P),
            (7.0, L),
            (8.0, G),
            (9.0, L),
        ];
        assert_eq!(fired(intervals(1.0, 2.0, 4.0), 9.0, 0.0), expected);
    }

    #[test]
    fn slow_checkpoints_do_not_shift_the_collisions() {
        let got = tiers(intervals(1.0, 2.0, 4.0), 8.5, 0.3);
        assert_eq!(got, [L, P, L, G, L, P, L, G]);
    }

    #[test]
    fn lower_timers_restart_after_a_higher_checkpoint() {
        // local every 3 s, global every 4 s: the global one at 4 s restarts local to 7 s.
        assert_eq!(
            fired(intervals(3.0, 0.0, 4.0), 12.0, 0.0),
            [(3.0, L), (4.0, G), (7.0, L), (8.0, G), (11.0, L), (12.0, G)]
        );
    }

    #[test]
    fn higher_timers_are_not_restarted_by_lower_ones() {
        let globals: Vec<f64> = fired(intervals(0.7, 0.0, 2.0), 6.0, 0.0)
            .into_iter()
            .filter(|f| f.1 == G)
            .map(|f| f.0)
            .collect();
        assert_eq!(globals, [2.0, 4.0, 6.0]);
    }

    #[test]
    fn overrun_skips_missed_periods() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&intervals(1.0, 0.0, 0.0), |_| true, t0);
        assert_eq!(s.take_due(t0 + Duration::from_millis(500)), None);
        assert_eq!(s.take_due(t0 + Duration::from_millis(3500)), Some(L));
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(4)));
    }

    #[test]
    fn decimal_intervals_still_collide() {
        let got = tiers(intervals(0.1, 0.3, 0.0), 0.95, 0.0);
        assert_eq!(got, [L, L, P, L, L, P, L, L, P]);
    }

    #[test]
    fn tiny_intervals_fire_once_per_wake_up() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&intervals(0.001, 0.0, 0.0), |_| true, t0);
        let now = t0 + Duration::from_micros(1500);
        assert_eq!(s.take_due(now), Some(L));
        assert_eq!(s.take_due(now), None);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_millis(2)));
    }

    #[test]
    fn off_and_unusable_tiers_have_no_timer() {
        let t0 = Instant::now();
        let none = Schedule::new(&intervals(0.0, 0.0, 0.0), |_| true, t0);
        assert_eq!(none.next_deadline(), None);
        let mut s = Schedule::new(&intervals(2.0, 1.0, 0.0), |t| t != P, t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(s.take_due(t0 + Duration::from_secs(2)), Some(L));
    }
}
