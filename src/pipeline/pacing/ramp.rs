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
//! max([`FLOOR`], [`GROWTH`] × those of the second before), the rule itself with a margin, so
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

/// Calls in the first second, under the smallest burst floors seen (10 a second): a
/// millisecond of jitter at the floor itself puts 11 in one window (measured: a growth
/// 429 in the first second). Far under any published request limit.
pub const FLOOR: f64 = 9.0;
/// Growth a second, under the documented limit's factor of 2: at a window of 100 calls, 10
/// calls to spare for jitter between our send times and the service's arrival times.
const GROWTH: f64 = 1.9;
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
    pub fn shared_rule(&self) -> RampRule {
        RampRule {
            floor: FLOOR,
            growth: self.growth,
            spread: SPREAD,
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
    /// if so, the allowance.
    fn fits(&self, t: Instant) -> Option<f64> {
        let last = t.checked_sub(SECOND);
        let before = last.map_or(0, |l| self.count(l.checked_sub(SECOND), l));
        // One call less than the growth allows: a call granted just before a window's edge
        // may reach the service just after it (a new connection's handshake is enough), and
        // at a few calls a second the factor alone leaves less than one to spare (measured:
        // a growth-rate 429 two seconds in, which slowed the rest of the ramp).
        let grown = (self.growth * before as f64).floor() - 1.0;
        let allowance = FLOOR.max(grown);
        let window = self.count(last, t);
        (window as f64 + 1.0 <= allowance).then_some(allowance)
    }

    /// The first instant at or after `now` when a call fits and is spaced from the last.
    /// The count changes only when a call leaves the last second (and enters the one
    /// before it) or leaves the second before, so those are the instants to try.
    fn next_turn(&self, now: Instant) -> Instant {
        let spaced = |t: Instant, allowance: f64| {
            self.sent.back().map_or(t, |last| {
                t.max(*last + Duration::from_secs_f64(1.0 / (SPREAD * allowance)))
            })
        };
        let mut candidates: Vec<Instant> = self
            .sent
            .iter()
            .flat_map(|s| [*s + SECOND, *s + SECOND * 2])
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
