//! Rate limits: "acquire `cost` units of `key` at this rate", behind one interface.
//!
//! Owns the interface ([`Limiter`]), its vocabulary ([`Rate`], [`Cost`]) and its two
//! implementations: in-process ([`LocalLimiter`]) and shared by every process on one Redis
//! ([`RedisLimiter`], a GCRA in a Lua script, `--redis`). Upload credentials (getPolicy, per
//! model) and model-call pacing (per model) both go through it. The implementation is chosen
//! at run time, hence the boxed future: `Arc<dyn Limiter>` must work.
//!
//! Deliberately not here: *which* rate to ask for. A fixed quota (credentials) or a rate
//! that follows 429s (`pipeline::pacing`) is the caller's; each call passes the rate it
//! wants, so a limiter never has to be rebuilt, or swapped, when the rate changes.

use std::num::NonZeroU32;
use std::time::Duration;

use futures::future::BoxFuture;

mod local;
mod redis;

pub use self::redis::{GCRA_SCRIPT, RedisLimiter};
pub use local::LocalLimiter;

/// How fast units of one key may be spent: `per_second` sustained, and up to `burst` at
/// once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_second: f64,
    burst: NonZeroU32,
}

impl Rate {
    /// The slowest rate a limiter spaces calls at: one in a thousand seconds. A rate of
    /// zero would never let a call go; the callers' floors are far above this.
    const MIN_PER_SECOND: f64 = 1e-3;

    /// Evenly spaced units at `per_second`, no burst: a burst is exactly what a
    /// per-second window on the service side punishes.
    pub fn per_second(per_second: f64) -> Rate {
        let per_second = if per_second.is_finite() {
            per_second.max(Self::MIN_PER_SECOND)
        } else {
            Self::MIN_PER_SECOND
        };
        Rate {
            per_second,
            burst: NonZeroU32::MIN,
        }
    }

    /// The same rate, with up to `burst` units at once after a quiet spell.
    pub fn with_burst(self, burst: NonZeroU32) -> Rate {
        Rate { burst, ..self }
    }

    /// How many units may go at once after a quiet spell.
    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// The time one unit takes at this rate.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second)
    }
}

/// What one acquisition spends. A key counts one kind of unit: requests, or (for a key of
/// a token limit, `--model-tpm`) tokens, asked for with `requests: 0`. [`LocalLimiter`]
/// spends [`Cost::units`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    pub requests: u32,
    pub tokens: u64,
}

impl Cost {
    /// `n` tokens, for a key that counts tokens.
    pub fn tokens(n: u64) -> Cost {
        Cost {
            requests: 0,
            tokens: n,
        }
    }

    /// The units a key spends: its requests, or if none, its tokens (up to `u32::MAX`).
    pub fn units(&self) -> u32 {
        if self.requests > 0 {
            self.requests
        } else {
            u32::try_from(self.tokens).unwrap_or(u32::MAX)
        }
    }

    /// One request, tokens unknown.
    pub const REQUEST: Cost = Cost {
        requests: 1,
        tokens: 0,
    };
}

/// Acquires `cost` units of `key` at `rate`: the future completes when they may be spent,
/// and they are spent then.
///
/// Contract for implementations:
/// - **Cancel-safe.** Dropping the future before it completes spends nothing. A caller
///   whose rate changes while it waits drops its acquisition and asks again at the new
///   rate, instead of going out at the old one.
/// - **The rate of the call being served applies.** A key's rate is whatever its callers
///   pass; a call with a new rate re-times what is already owed at the new rate, so a rise
///   takes effect at once instead of after the slots booked at the old one.
/// - **Infallible.** A backend that cannot reach its store decides itself what that means
///   (wait and try again, or let the call go and leave the service's 429s to steer): the
///   callers could do nothing else with an error.
///
/// Keys belong to the caller; callers that share one limiter prefix theirs.
pub trait Limiter: Send + Sync {
    fn acquire<'a>(&'a self, key: &'a str, rate: Rate, cost: Cost) -> BoxFuture<'a, ()>;
}
