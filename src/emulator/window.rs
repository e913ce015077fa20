//! Sliding one-second request windows, one per (account, model).
//!
//! The real service limits the credential API to 100 QPS per account per model, and model
//! calls per account per model. A sliding window (not fixed buckets) is the strict reading:
//! "more than N requests within any 1-second window". Every request is recorded whatever
//! its outcome, including the ones refused, so a client that keeps hammering stays refused,
//! and the largest count ever seen is reported as `credential_max_in_window`. Callers record
//! only requests whose account and model exist, so made-up names cannot create keys.
//!
//! A key whose newest request is older than the window holds nothing that can matter
//! again; such keys are swept out when a shard has doubled since its last sweep, so memory
//! follows the number of keys active in the last second, not every key ever seen.
//!
//! Time is the monotonic [`Instant`], passed in so unit tests control it.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);
/// Shards keep two cores from queueing on one lock when many accounts or models are busy.
const SHARDS: usize = 16;
/// A shard is swept once it holds this many keys and has doubled since its last sweep:
/// amortised O(1) per request.
const MIN_SWEEP_LEN: usize = 256;

#[derive(Debug)]
struct Timestamps {
    times: HashMap<String, VecDeque<Instant>>,
    sweep_at: usize,
}

impl Default for Timestamps {
    fn default() -> Self {
        Self {
            times: HashMap::new(),
            sweep_at: MIN_SWEEP_LEN,
        }
    }
}

impl Timestamps {
    /// Drops the keys with no request in the window ending at `now`.
    fn sweep(&mut self, now: Instant) {
        self.times.retain(|_, times| {
            times
                .back()
                .is_some_and(|&t| now.saturating_duration_since(t) < WINDOW)
        });
        self.sweep_at = (self.times.len() * 2).max(MIN_SWEEP_LEN);
    }
}

#[derive(Debug)]
pub struct SlidingWindow {
    /// `None`: record (for statistics) but never refuse.
    limit: Option<u32>,
    hasher: RandomState,
    /// Each deque holds the arrival times of the last second only, so its length is bounded
    /// by the arrival rate. The lock is held for a push and a few pops, never across an await.
    shards: Box<[Mutex<Timestamps>]>,
    max_in_window: AtomicU64,
}

/// What the window decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Requests in the last second, this one included.
    pub in_window: u64,
    pub allowed: bool,
}

impl SlidingWindow {
    pub fn new(limit: Option<u32>) -> Self {
        Self {
            limit,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_in_window: AtomicU64::new(0),
        }
    }

    /// Records one request for `account` and `model` arriving at `now`.
    pub fn hit(&self, account: &str, model: &str, now: Instant) -> Hit {
        let shard = &self.shards[self.hasher.hash_one((account, model)) as usize % SHARDS];
        let in_window = {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if shard.times.len() >= shard.sweep_at {
                shard.sweep(now);
            }
            let key = format!("{account}\n{model}");
            let times = shard.times.entry(key).or_default();
            while times
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW)
            {
                times.pop_front();
            }
            times.push_back(now);
            times.len() as u64
        };
        self.max_in_window.fetch_max(in_window, Ordering::Relaxed);
        let allowed = self.limit.is_none_or(|limit| in_window <= u64::from(limit));
        Hit { in_window, allowed }
    }

    /// The most requests one (account, model) ever had within one second.
    pub fn max_in_window(&self) -> u64 {
        self.max_in_window.load(Ordering::Relaxed)
    }

    /// How many (account, model) keys are held.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |s| s.times.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_101st_in_a_second_is_refused() {
        let window = SlidingWindow::new(Some(100));
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(window.hit("a", "m", t0 + Duration::from_millis(i)).allowed);
        }
        let hit = window.hit("a", "m", t0 + Duration::from_millis(500));
        assert_eq!(
            hit,
            Hit {
                in_window: 101,
                allowed: false
            }
        );
        assert_eq!(window.max_in_window(), 101);
    }

    #[test]
    fn window_slides() {
        let window = SlidingWindow::new(Some(2));
        let t0 = Instant::now();
        assert!(window.hit("a", "m", t0).allowed);
        assert!(
            window
                .hit("a", "m", t0 + Duration::from_millis(600))
                .allowed
        );
        assert!(
            !window
                .hit("a", "m", t0 + Duration::from_millis(900))
                .allowed
        );
        // t0 has left the window; the refused request at 900 ms still counts.
        let hit = window.hit("a", "m", t0 + Duration::from_millis(1000));
        assert_eq!(hit.in_window, 3);
        assert!(
            window
                .hit("a", "m", t0 + Duration::from_millis(2000))
                .allowed
        );
    }

    #[test]
    fn keys_are_independent() {
        let window = SlidingWindow::new(Some(1));
        let t0 = Instant::now();
        assert!(window.hit("a", "m", t0).allowed);
        assert!(window.hit("b", "m", t0).allowed);
        assert!(window.hit("a", "n", t0).allowed);
        assert!(!window.hit("a", "m", t0).allowed);
    }

    #[test]
    fn no_limit_never_refuses() {
        let window = SlidingWindow::new(None);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(window.hit("a", "m", t0).allowed);
        }
        assert_eq!(window.max_in_window(), 1000);
    }

    #[test]
    fn stale_keys_are_dropped() {
        let window = SlidingWindow::new(Some(100));
        let t0 = Instant::now();
        // 100 000 one-off keys, one a millisecond: about 1 000 are live at any time.
        for i in 0..100_000u64 {
            let hit = window.hit(&format!("acct{i}"), "m", t0 + Duration::from_millis(i));
            assert!(hit.allowed);
        }
        assert!(
            window.keys() <= SHARDS * MIN_SWEEP_LEN,
            "{} keys held",
            window.keys()
        );
        // A key that is still busy survives a sweep, with its count intact.
        let window = SlidingWindow::new(Some(2));
        for i in 0..10_000u64 {
            let t = t0 + Duration::from_millis(i);
            if i == 9_500 {
                assert!(window.hit("busy", "m", t).allowed);
            }
            window.hit(&format!("x{i}"), "m", t);
        }
        let t = t0 + Duration::from_millis(10_000);
        assert_eq!(window.hit("busy", "m", t).in_window, 2);
        assert!(!window.hit("busy", "m", t).allowed);
    }
}
