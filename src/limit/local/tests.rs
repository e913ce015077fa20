//! The local limiter on tokio's paused clock: every instant below is exact.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Acquires one request of `key` and returns how long after `t0` it was granted.
async fn one(limiter: &LocalLimiter, key: &str, rate: Rate, t0: Instant) -> Duration {
    limiter.acquire(key, rate, Cost::REQUEST).await;
    t0.elapsed()
}

#[tokio::test(start_paused = true)]
async fn units_are_evenly_spaced_without_a_burst() {
    let limiter = LocalLimiter::new();
    let t0 = Instant::now();
    let rate = Rate::per_second(10.0);
    let mut at = Vec::new();
    for _ in 0..4 {
        at.push(one(&limiter, "m", rate, t0).await);
    }
    assert_eq!(at, [ms(0), ms(100), ms(200), ms(300)]);
    // Another key has its own budget.
    assert_eq!(one(&limiter, "other", rate, t0).await, ms(300));
}

#[tokio::test(start_paused = true)]
async fn a_burst_goes_at_once_then_the_rate_holds() {
    let limiter = LocalLimiter::new();
    let t0 = Instant::now();
    let rate = Rate::per_second(10.0).with_burst(NonZeroU32::new(3).unwrap());
    let mut at = Vec::new();
    for _ in 0..5 {
        at.push(one(&limiter, "m", rate, t0).await);
    }
    assert_eq!(at, [ms(0), ms(0), ms(0), ms(100), ms(200)]);
}

#[tokio::test(start_paused = true)]
async fn a_rate_rise_retimes_what_is_owed() {
    // At 1/s the next unit is owed a second after the first. The rate rises to 60/s a
    // tenth of a second later: the 0.9 s still owed is 0.9 of a unit, 15 ms at the new
    // rate, not the rest of the old second.
    let limiter = LocalLimiter::new();
    let t0 = Instant::now();
    one(&limiter, "m", Rate::per_second(1.0), t0).await;
    tokio::time::advance(ms(100)).await;
    let at = one(&limiter, "m", Rate::per_second(60.0), t0).await;
    assert!(at >= ms(115) && at <= ms(116), "{at:?}");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_acquisition_spends_nothing() {
    let limiter = LocalLimiter::new();
    let t0 = Instant::now();
    let rate = Rate::per_second(1.0);
    one(&limiter, "m", rate, t0).await;
    // A second caller gives up half-way through its wait...
    let gave_up = tokio::time::timeout(ms(500), limiter.acquire("m", rate, Cost::REQUEST)).await;
    assert!(gave_up.is_err());
    // ...and the next one still gets the slot the first left free, not the one after it.
    assert_eq!(one(&limiter, "m", rate, t0).await, ms(1000));
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let limiter = Arc::new(LocalLimiter::new());
    let rate = Rate::per_second(100.0);
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (limiter, order) = (Arc::clone(&limiter), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            limiter.acquire("m", rate, Cost::REQUEST).await;
            order.lock().unwrap().push(i);
        }));
        // Let it queue before the next one arrives.
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_cost_over_the_burst_goes_once_nothing_is_owed() {
    let limiter = LocalLimiter::new();
    let t0 = Instant::now();
    let rate = Rate::per_second(10.0);
    let big = Cost {
        requests: 5,
        tokens: 0,
    };
    limiter.acquire("m", rate, big).await;
    assert_eq!(t0.elapsed(), ms(0));
    // It spent five periods.
    assert_eq!(one(&limiter, "m", rate, t0).await, ms(500));
}

#[test]
fn a_late_wake_keeps_the_schedule() {
    // Each caller wakes 1 ms after its slot, as tokio's timer does: the units still go out
    // at the rate (ten in a second at 10/s), not at one per 101 ms.
    let t0 = Instant::now();
    let rate = Rate::per_second(10.0);
    let mut cell = Cell {
        tat: t0,
        period: rate.period(),
    };
    let mut at = t0;
    for _ in 0..10 {
        let slot = match cell.take(rate, 1, at) {
            Ok(()) => at,
            Err(free) => {
                at = free + ms(1);
                cell.take(rate, 1, at).expect("free by then");
                at
            }
        };
        at = slot;
    }
    assert_eq!(cell.tat, t0 + ms(1000), "{:?}", cell.tat - t0);
    // Late by a period or more (a quiet spell): the schedule starts afresh from now.
    let later = cell.tat + ms(500);
    cell.take(rate, 1, later).unwrap();
    assert_eq!(cell.tat, later + ms(100));
}
