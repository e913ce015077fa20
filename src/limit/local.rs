//! The in-process limiter: per key, the instant its next unit is free (GCRA's theoretical
//! arrival time) under a lock, and the key's callers queued in arrival order.
//!
//! One limiter serves every rate: a call's [`Rate`] is applied when it is served, and what
//! the key already owes is re-timed when the rate changes. Nothing is ever booked ahead, so
//! a caller that stops waiting leaves nothing behind, and a rate rise is felt by the very
//! next call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{Cost, Limiter, Rate};

/// Time comes from tokio's clock, so tests drive it with `tokio::time::pause()`.
#[derive(Default)]
pub struct LocalLimiter {
    /// Locked only to find or add a key; never held across an await.
    keys: Mutex<HashMap<String, Arc<Key>>>,
}

#[derive(Default)]
struct Key {
    /// Locked to decide one acquisition; never held across an await.
    cell: Mutex<Option<Cell>>,
    /// FIFO turn among the key's waiters, held while one waits for its units. Without it
    /// every waiter would sleep until the same free instant, all wake, one win and the rest
    /// sleep again (a thundering herd, and no fairness); queued on a fair mutex, one waiter
    /// is awake at a time and units go out in arrival order. Bounded by the callers'
    /// own concurrency.
    turn: tokio::sync::Mutex<()>,
}

impl Key {
    fn take(&self, rate: Rate, units: u32, now: Instant) -> Result<(), Instant> {
        // Nothing panics while holding this lock; if something ever did, the cell is valid.
        let mut cell = self.cell.lock().unwrap_or_else(|p| p.into_inner());
        cell.get_or_insert(Cell {
            tat: now,
            period: rate.period(),
        })
        .take(rate, units, now)
    }
}

/// GCRA state of one key.
#[derive(Debug, Clone, Copy)]
struct Cell {
    /// When everything spent so far is paid off at the rate: the next unit is free then
    /// (earlier by up to a burst).
    tat: Instant,
    /// The period `tat` was computed with.
    period: std::time::Duration,
}

impl Cell {
    /// Spends `units` at `now` if `rate` allows; else says when it will.
    fn take(&mut self, rate: Rate, units: u32, now: Instant) -> Result<(), Instant> {
        let period = rate.period();
        if period != self.period {
            // What is owed, counted in units, is owed at the new rate: a rise from 1/s to
            // 60/s turns the second still owed into a sixtieth of one.
            if let Some(owed) = self.tat.checked_duration_since(now) {
                let scale = period.as_secs_f64() / self.period.as_secs_f64();
                self.tat = now + owed.mul_f64(scale);
            }
            self.period = period;
        }
        // A cost over the burst would never fit; it goes once nothing is owed.
        let room = period * rate.burst.get().max(units);
        // Evenly spaced units: a caller served late by less than a period (a timer wakes a
        // millisecond or so after the instant it was set for) keeps its place on the
        // schedule, so the next unit is due a period after the slot, not after the late
        // wake. Without it every wake's lateness added to the period: paced at 19.9 a
        // second, calls went out at about 19.5 (issue 11's request-limit run).
        let late = now.saturating_duration_since(self.tat);
        let from = if rate.burst.get() == 1 && late < period {
            self.tat
        } else {
            self.tat.max(now)
        };
        let next = from + period * units;
        if next.saturating_duration_since(now) <= room {
            self.tat = next;
            Ok(())
        } else {
            Err(next - room)
        }
    }
}

impl LocalLimiter {
    pub fn new() -> LocalLimiter {
        LocalLimiter::default()
    }

    fn key(&self, key: &str) -> Arc<Key> {
        // No code panics while holding this lock; if one ever did, the map is still valid.
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get(key) {
            return Arc::clone(k);
        }
        Arc::clone(keys.entry(key.to_owned()).or_default())
    }
}

impl Limiter for LocalLimiter {
    fn acquire<'a>(&'a self, key: &'a str, rate: Rate, cost: Cost) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let units = cost.units();
            if units == 0 {
                return;
            }
            let key = self.key(key);
            let _turn = key.turn.lock().await;
            // Decided and spent under one lock with no await after it: a dropped future
            // has either spent its units and returned, or spent nothing.
            while let Err(at) = key.take(rate, units, Instant::now()) {
                tokio::time::sleep_until(at).await;
            }
        })
    }
}

#[cfg(test)]
mod tests;
