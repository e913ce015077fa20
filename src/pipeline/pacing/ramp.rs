//! A slow start's gate: how a model with no known limit ramps up (issue 11), counted in
//! calls rather than set as a rate, and free of clocks (every instant is passed in).
//!
//! The service documents a growth-rate limit ("ramp up gradually"): in any one-second
//! window a model may take at most max(floor, growth × the window before). A ramp that sets
//! a *rate* and doubles it once a second has to wait a second and a half before its first
//! step, since the second before the first one held nothing, and its steps come a second
//! apart; together that left about 18 calls unsent before a limit of 20 a second was met
//! (0.9 s of a 30-second run, docs/performance.md). This gate lets a call go whenever the
//! calls this process sent in the last second, that one included, stay under
//! max([`FLOOR`], [`GROWTH`] × those of the second before), the rule itself with a margin in
//! time ([`MARGIN`]) for the jitter between our send times and the service's arrivals, so
//! the ramp takes what such a limit accepts at each moment rather than a staircase under it.
//! Within a window the calls are spread at [`SPREAD`] × the window's allowance, so that no
//! window's allowance goes out in one burst, and a limit met mid-window sees a few calls
//! over it, not a whole allowance, before its 429 comes back.
//!
//! With `--redis` the gate's window is kept in Redis and counts the calls of every process
//! (`shared::ramp`, the same rule in a Lua script); this one is then only asked for the
//! rule, whose growth its growth-rate 429s slow.

use std::collections::VecDeque;

use crate::shared::RampRule;
use std::time::{Duration, Instant};

/// Calls in the first second: the smallest burst floor seen (10 a second), far under any
/// published request limit. The jitter that once put 11 calls in one window at this floor
/// (a growth 429 in the first second) is [`MARGIN`]'s to absorb.
pub const FLOOR: f64 = 10.0;
/// Growth a second: the factor of the growth-limit scenario (`--burst-growth 2`). The service
/// does not publish its own (its threshold moves); where it is lower, its growth 429s slow
/// this one ([`Ramp::slow_down`]).
const GROWTH: f64 = 2.0;
/// The least growth that growth-rate 429s leave: each one takes a quarter off the step.
const MIN_GROWTH: f64 = 1.1;
/// What is left of the growth step after a growth-rate 429.
const SLOWDOWN: f64 = 0.75;
/// Calls within a window are spaced at this multiple of its allowance: a window's calls go
/// out in the first part of it, near what a gate alone would send, yet never all at once.
/// A call's answer takes a fraction of a second, and everything sent meanwhile at a limit
/// is refused (and counted by a strict limit), so a higher multiple costs more 429s when a
/// limit is met; 2.5 left about 4 calls of a 30-second run unsent (simulated; the rate
/// staircase before it left 18).
const SPREAD: f64 = 2.0;
const SECOND: Duration = Duration::from_secs(1);
/// How far a call's arrival at the service may move against another's, relative to their
/// send times (the network's and the timers' jitter). The gate counts a window as the
/// service may see it: a call sent up to this long before the window's start may still
/// fall in it, and one sent within this long of the start of the second before may fall
/// out of that. A margin in time rather than in calls: the floor of 9, the growth of 1.9
/// and the one call less that it replaces cost the request-limit run about a quarter of a
/// second and the growth-limit run a third, and 10 ms of network jitter still met a growth
/// 429 that slowed the rest of a ramp (1.55 × the ideal ramp's time against 1.20; measured
/// with `load --emulator-arg=--latency-jitter-ms=10`, docs/performance.md). Jitter well past
/// the margin meets growth 429s, which slow the ramp as any do.
const MARGIN: Duration = Duration::from_millis(10);

/// The gate of one model's slow start.
#[derive(Debug, Clone)]
pub struct Ramp {
    /// When the calls of the last two seconds went, in order.
    sent: VecDeque<Instant>,
    growth: f64,
}

impl Default for Ramp {
    fn default() -> Self {
        Self {
            sent: VecDeque::new(),
            growth: GROWTH,
        }
    }
}

impl Ramp {
    /// The rule for a gate shared with the account's other processes (`--redis`, see
    /// `shared::ramp`): the whole floor, since the shared gate counts every process's calls.
    /// Twice the margin: a grant is timed by Redis's clock, and the call then leaves from
    /// another process once the answer has crossed back, so two legs of jitter lie between
    /// the gate's count and the service's (measured, 4 processes under a limit of 40: 4.0 to
    /// 4.9% of calls refused with the one margin, 2.2 and 2.5% with two).
    pub fn shared_rule(&self) -> RampRule {
        RampRule {
            floor: FLOOR,
            growth: self.growth,
            spread: SPREAD,
            margin: MARGIN * 2,
        }
    }

    /// A growth-rate 429: the ramp grew faster than the service allows; its step shrinks.
    pub fn slow_down(&mut self) {
        self.growth = (1.0 + (self.growth - 1.0) * SLOWDOWN).max(MIN_GROWTH);
    }

    /// Calls sent after `at`, by this gate's count.
    pub fn sent_after(&self, at: Instant) -> usize {
        self.sent.len() - self.sent.partition_point(|t| *t <= at)
    }

    /// Takes a turn at `now` if the gate allows one (the call then counts as sent at `now`)
    /// and answers `None`; else answers when to ask again.
    pub fn take(&mut self, now: Instant) -> Option<Instant> {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= SECOND * 2)
        {
            self.sent.pop_front();
        }
        let at = self.next_turn(now);
        if at > now {
            return Some(at);
        }
        self.sent.push_back(now);
        None
    }

    /// Calls sent in `(from, to]`, as the service counts a window that ends at `to`.
    fn count(&self, from: Option<Instant>, to: Instant) -> usize {
        let start = from.map_or(0, |f| self.sent.partition_point(|t| *t <= f));
        self.sent.partition_point(|t| *t <= to) - start
    }

    /// Whether a call at `t` fits (its window, with it, within the window's allowance);
    /// if so, the allowance. The window is widened by [`MARGIN`] and the second before it
    /// narrowed by it at both ends: the calls that may count against the call, and the
    /// calls that surely count for its allowance.
    fn fits(&self, t: Instant) -> Option<f64> {
        let last = t.checked_sub(SECOND + MARGIN);
        let before = last.map_or(0, |l| {
            let from = (t + MARGIN).checked_sub(SECOND * 2);
            self.count(from, l)
        });
        let grown = (self.growth * before as f64).floor();
        let allowance = FLOOR.max(grown);
        let window = self.count(last, t);
        (window as f64 + 1.0 <= allowance).then_some(allowance)
    }

    /// The first instant at or after `now` when a call fits and is spaced from the last.
    /// The count changes only when a call leaves the (widened) window and enters the
    /// (narrowed) second before it, or leaves that, so those are the instants to try.
    fn next_turn(&self, now: Instant) -> Instant {
        let spaced = |t: Instant, allowance: f64| {
            self.sent.back().map_or(t, |last| {
                t.max(*last + Duration::from_secs_f64(1.0 / (SPREAD * allowance)))
            })
        };
        let mut candidates: Vec<Instant> = self
            .sent
            .iter()
            .flat_map(|s| [*s + SECOND + MARGIN, *s + SECOND * 2 - MARGIN])
            .filter(|t| *t > now)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        for t in std::iter::once(now).chain(candidates) {
            if let Some(allowance) = self.fits(t) {
                let at = spaced(t, allowance);
                // Spacing moves the turn on; if the window is still open then, that is it.
                if at == t || self.fits(at).is_some() {
                    return at;
                }
            }
        }
        // Every call of the last two seconds has left both windows: the floor is open.
        self.sent.back().map_or(now, |last| *last + SECOND * 2)
    }
}

#[cfg(test)]
mod tests;
