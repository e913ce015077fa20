//! The model-call limits beyond the request rate (which `window` owns): the growth-rate
//! ("traffic burst") limit and the token limit, per (account, model) as the service counts
//! them (protocol notes §6).
//!
//! - Growth: in any one-second window a model may take at most
//!   `max(floor, growth × what it took in the second before)`. Only admitted calls count: a
//!   refused call takes nothing, so hammering does not raise the ceiling.
//! - Tokens: a call is refused while the tokens of the last second have reached TPM/60 or
//!   those of the last minute have reached TPM. An admitted call's tokens are counted once
//!   its answer is known; a stream whose tokens carry the count past a limit is cut by
//!   the caller with the same throttle, mid-way.
//!
//! Time is the monotonic [`Instant`], passed in so unit tests control it. When neither
//! limit is configured nothing is recorded and no lock is taken.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
/// The map is swept of idle keys once it holds this many and has doubled since its last
/// sweep: amortised O(1) per call, memory bounded by the keys active in the last minute.
const MIN_SWEEP_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    pub floor: u32,
    pub growth: f64,
}

#[derive(Debug, Default)]
struct Use {
    /// Admission times of the last two seconds (the growth limit compares two windows).
    admitted: VecDeque<Instant>,
    /// (time, tokens) of the last minute.
    tokens: VecDeque<(Instant, u64)>,
}

impl Use {
    fn forget_before(&mut self, now: Instant) {
        while self
            .admitted
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= 2 * SECOND)
        {
            self.admitted.pop_front();
        }
        while self
            .tokens
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) >= MINUTE)
        {
            self.tokens.pop_front();
        }
    }

    fn is_idle(&self) -> bool {
        self.admitted.is_empty() && self.tokens.is_empty()
    }

    fn tokens_within(&self, now: Instant, span: Duration) -> u64 {
        self.tokens
            .iter()
            .filter(|&&(t, _)| now.saturating_duration_since(t) < span)
            .map(|&(_, n)| n)
            .sum()
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Burst,
    Tokens,
}

#[derive(Debug)]
struct Map {
    uses: HashMap<(String, String), Use>,
    sweep_at: usize,
}

#[derive(Debug)]
pub struct Limits {
    burst: Option<Burst>,
    tpm: Option<u64>,
    /// One lock: held for a few deque operations, never across an await. Only taken when a
    /// limit is configured.
    map: Mutex<Map>,
}

impl Limits {
    pub fn new(burst: Option<Burst>, tpm: Option<u64>) -> Self {
        Self {
            burst,
            tpm,
            map: Mutex::new(Map {
                uses: HashMap::new(),
                sweep_at: MIN_SWEEP_LEN,
            }),
        }
    }

    fn with_use<T>(
        &self,
        account: &str,
        model: &str,
        now: Instant,
        f: impl FnOnce(&mut Use) -> T,
    ) -> T {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.uses.len() >= map.sweep_at {
            map.uses.retain(|_, u| {
                u.forget_before(now);
                !u.is_idle()
            });
            map.sweep_at = (map.uses.len() * 2).max(MIN_SWEEP_LEN);
        }
        let entry = map
            .uses
            .entry((account.to_owned(), model.to_owned()))
            .or_default();
        entry.forget_before(now);
        f(entry)
    }

    /// Admits a call or says which limit refuses it. The token limit is judged first: a
    /// call it refuses is not admitted, so it does not count for growth either.
    pub fn admit(&self, account: &str, model: &str, now: Instant) -> Result<(), Refusal> {
        if self.burst.is_none() && self.tpm.is_none() {
            return Ok(());
        }
        self.with_use(account, model, now, |u| {
            if let Some(tpm) = self.tpm {
                let per_second = tpm as f64 / 60.0;
                if u.tokens_within(now, SECOND) as f64 >= per_second
                    || u.tokens_within(now, MINUTE) >= tpm
                {
                    return Err(Refusal::Tokens);
                }
            }
            if let Some(burst) = self.burst {
                let last = u
                    .admitted
                    .iter()
                    .filter(|&&t| now.saturating_duration_since(t) < SECOND)
                    .count();
                let before = u.admitted.len() - last;
                let ceiling = (burst.growth * before as f64)
                    .floor()
                    .max(f64::from(burst.floor));
                if (last + 1) as f64 > ceiling {
                    return Err(Refusal::Burst);
                }
            }
            u.admitted.push_back(now);
            Ok(())
        })
    }

    /// Counts an admitted call's tokens; true if they carry the count past a token limit
    /// (the caller may then cut a stream with the throttle).
    pub fn spend(&self, account: &str, model: &str, now: Instant, tokens: u64) -> bool {
        let Some(tpm) = self.tpm else {
            return false;
        };
        self.with_use(account, model, now, |u| {
            u.tokens.push_back((now, tokens));
            u.tokens_within(now, SECOND) as f64 > tpm as f64 / 60.0
                || u.tokens_within(now, MINUTE) > tpm
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn growth_is_bounded_by_the_second_before() {
        let limits = Limits::new(
            Some(Burst {
                floor: 3,
                growth: 2.0,
            }),
            None,
        );
        let t0 = Instant::now();
        let admitted = |at: Instant, n: usize| {
            (0..n)
                .filter(|_| limits.admit("a", "m", at).is_ok())
                .count()
        };
        // First second: the floor.
        assert_eq!(admitted(t0, 10), 3);
        // Next second: twice the 3 before.
        assert_eq!(admitted(t0 + ms(1000), 10), 6);
        // Then twice 6.
        assert_eq!(admitted(t0 + ms(2000), 20), 12);
        // After a quiet spell the floor applies again.
        assert_eq!(admitted(t0 + ms(10_000), 10), 3);
        assert_eq!(limits.admit("a", "m", t0 + ms(10_000)), Err(Refusal::Burst));
        // Other keys are independent.
        assert!(limits.admit("b", "m", t0 + ms(10_000)).is_ok());
    }

    #[test]
    fn tokens_are_limited_per_second_and_per_minute() {
        // 6000 TPM: 100 tokens a second.
        let limits = Limits::new(None, Some(6000));
        let t0 = Instant::now();
        assert!(limits.admit("a", "m", t0).is_ok());
        assert!(!limits.spend("a", "m", t0, 60));
        assert!(limits.admit("a", "m", t0).is_ok());
        // 120 > 100: this call carried the count past the per-second limit.
        assert!(limits.spend("a", "m", t0, 60));
        assert_eq!(limits.admit("a", "m", t0 + ms(500)), Err(Refusal::Tokens));
        // A second later the per-second count is clear.
        assert!(limits.admit("a", "m", t0 + ms(1000)).is_ok());
        // 150 tokens once a second: each second's count is clear when the next call
        // comes (the last was a full second ago), but after 40 calls the minute holds 6000.
        let limits = Limits::new(None, Some(6000));
        for s in 0..40 {
            let t = t0 + ms(s * 1000);
            assert!(limits.admit("a", "m", t).is_ok(), "second {s}");
            limits.spend("a", "m", t, 150);
        }
        assert_eq!(
            limits.admit("a", "m", t0 + ms(40_000)),
            Err(Refusal::Tokens)
        );
    }

    #[test]
    fn no_limits_record_nothing() {
        let limits = Limits::new(None, None);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| limits.admit("a", "m", t0).is_ok()));
        assert!(!limits.spend("a", "m", t0, u64::MAX));
        assert!(limits.map.lock().expect("lock").uses.is_empty());
    }
}
