//! The token pacing decision of one model: AIMD on a token rate (tokens a second), free of
//! clocks and limiters (every instant is passed in), so a unit test drives it with made-up
//! instants. [`super::aimd`] decides the request pace; this one only ever answers
//! token-rate 429s (`Throttling.AllocationQuota`, compatible `insufficient_quota`).
//!
//! A token limit is simpler to find than a request limit: the service refuses a call while
//! the tokens of its last second have reached the limit, and a refused call adds no tokens.
//! So when a token 429 comes back, the tokens answered in the second before it are the
//! limit, near enough (within one call's tokens), and there is no noise to tell apart: no
//! fault of a busy service is reported as a token limit.
//!
//! - A model's tokens are not paced until its first token 429 (or `--model-tpm`, which
//!   sets the pace, and its cap, from the start).
//! - A token 429 (at most one a window, [`SETTLE`]) sets the *ceiling* to the tokens
//!   answered in the second before it, and the pace to [`NEAR`] of that, after a short
//!   pause ([`PAUSE`]).
//! - Each second the pace is used without a token 429, it climbs half-way back to [`NEAR`]
//!   of the ceiling, then probes past it by [`PROBE_STEP`] a second; [`PROBE_AFTER`] the
//!   last 429 the step doubles each second (the limit may have been raised), and after
//!   [`FORGET`] the ceiling is forgotten.
//!
//! Why [`NEAR`] is 0.97 and not the request pace's 0.95: the service counts a token limit
//! as "the last second's tokens have reached it", so a pace evenly spaced at the limit is
//! refused about once a second, and one a call's tokens under it never is. The ceiling
//! measured at a 429 already lies within one call of the limit (about 5% of it at 20
//! calls a second), so 0.95 of it paced at 90% of the limit, and every cut and probe cost
//! more on top of that (issue 11's goal is 90%, the ramp included).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::aimd::SETTLE;

/// Share of the ceiling the pace goes back to after a token 429, and climbs back to.
const NEAR: f64 = 0.97;
/// How long a model sends nothing after a cut. The service's token window needs to lose one
/// call's tokens to admit the next, and a refused call already left a gap of one; this is
/// a call's interval at 10 calls a second more, not the request pace's 200 ms drain (a
/// request window counts refused calls, a token window does not).
const PAUSE: Duration = Duration::from_millis(100);
/// The probe's step past [`NEAR`] of the ceiling, a second, until [`PROBE_AFTER`].
const PROBE_STEP: f64 = 0.005;
/// From this long after the last token 429 the probe's step doubles each second, up to
/// [`GROWTH`].
const PROBE_AFTER: Duration = Duration::from_secs(6);
/// Once the probe's step reaches [`GROWTH`], the ceiling is forgotten.
const FORGET: Duration = Duration::from_secs(12);
/// Growth a second with no ceiling once a ceiling has been found.
const GROWTH: f64 = 1.25;
/// Growth a second while no ceiling was ever found (the first 429 had too few answers
/// before it to tell).
const DOUBLING: f64 = 2.0;
/// The floor, in tokens a second: one small call a second.
const MIN_RATE: f64 = 100.0;
/// Fewer answers than this in the second before a first 429 tell nothing about the limit.
const MIN_CALLS: usize = 3;

/// A change of token pace: the new rate, and how long to send nothing first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenChange {
    pub rate: f64,
    pub pause: Duration,
}

/// Where the token limit was last found, and when.
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    rate: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct TokenAimd {
    /// Tokens a second; `None`: not paced (no token limit met yet, none given).
    rate: Option<f64>,
    /// `--model-tpm` / 60: the start, and a cap.
    cap: Option<f64>,
    /// Answers of the last second: when, and their tokens. Bounded by the calls a second.
    answered: VecDeque<(Instant, u64)>,
    ceiling: Option<Ceiling>,
    /// A ceiling was found once: climbs past a forgotten one are gentle.
    limit_seen: bool,
    last_decrease: Option<Instant>,
    last_increase: Instant,
}

impl TokenAimd {
    /// `cap`: a known token limit a second (`--model-tpm` / 60), paced from the start.
    pub fn new(cap: Option<f64>, now: Instant) -> Self {
        let cap = cap.filter(|c| *c > 0.0);
        Self {
            rate: cap,
            cap,
            answered: VecDeque::new(),
            ceiling: None,
            limit_seen: cap.is_some(),
            last_decrease: None,
            last_increase: now,
        }
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Tokens answered in the second up to `now`.
    fn last_second(&mut self, now: Instant) -> f64 {
        while self
            .answered
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= SETTLE)
        {
            self.answered.pop_front();
        }
        self.answered.iter().map(|(_, n)| *n as f64).sum()
    }

    fn capped(&self, rate: f64) -> f64 {
        self.cap.map_or(rate, |cap| rate.min(cap)).max(MIN_RATE)
    }

    /// The rate after a second in use without a token 429.
    fn next_rate(&mut self, rate: f64, now: Instant) -> f64 {
        if self
            .ceiling
            .is_some_and(|c| now.saturating_duration_since(c.at) >= FORGET)
        {
            self.ceiling = None;
        }
        match self.ceiling {
            Some(c) if rate >= c.rate * NEAR => {
                let age = now.saturating_duration_since(c.at);
                let doublings = age.saturating_sub(PROBE_AFTER).as_secs_f64();
                rate * (1.0 + (PROBE_STEP * doublings.exp2()).min(GROWTH - 1.0))
            }
            Some(c) => {
                let near = c.rate * NEAR;
                (rate + (near - rate) / 2.0).min(near)
            }
            None if self.limit_seen => rate * GROWTH,
            None => rate * DOUBLING,
        }
    }

    /// A call answered at `now` used `tokens`. Returns the change of pace, if any.
    pub fn on_answer(&mut self, tokens: u64, now: Instant) -> Option<TokenChange> {
        self.answered.push_back((now, tokens));
        let used = self.last_second(now);
        let rate = self.rate?;
        let since = |t: Instant| now.saturating_duration_since(t);
        if since(self.last_increase) < SETTLE
            || self.last_decrease.is_some_and(|t| since(t) < SETTLE)
        {
            return None;
        }
        // A rate the model does not use is not binding: raising it proves nothing.
        if used < rate / 2.0 {
            return None;
        }
        self.last_increase = now;
        let next = self.next_rate(rate, now);
        let next = self.capped(next);
        (next != rate).then(|| {
            self.rate = Some(next);
            TokenChange {
                rate: next,
                pause: Duration::ZERO,
            }
        })
    }

    /// A token-rate 429 answered a call sent at `sent`. Returns the change of pace, if any.
    ///
    /// A 429 to a call sent less than a window after the last cut says nothing about the
    /// new rate (the service's window still holds tokens spent at the old one).
    pub fn on_throttled(&mut self, sent: Instant, now: Instant) -> Option<TokenChange> {
        if self
            .last_decrease
            .is_some_and(|t| sent.saturating_duration_since(t) < SETTLE)
        {
            return None;
        }
        let used = self.last_second(now);
        // What got through in the second before the 429 is the limit, near enough; never
        // more than the pace it was sent at.
        let got = self.rate.map_or(used, |rate| used.min(rate));
        let known = self.rate.is_some() || self.answered.len() >= MIN_CALLS;
        let next = if known {
            self.ceiling = Some(Ceiling { rate: got, at: now });
            self.limit_seen = true;
            got * NEAR
        } else {
            // A first 429 with too few answers before it: a starting pace, which doubles
            // each second until a limit is met.
            got
        };
        let next = self.capped(next);
        self.rate = Some(next);
        self.last_decrease = Some(now);
        self.last_increase = now;
        Some(TokenChange {
            rate: next,
            pause: PAUSE,
        })
    }
}

#[cfg(test)]
mod tests;
