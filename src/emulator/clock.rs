//! The emulator's wall clock: real time plus an offset that only moves forward.
//!
//! Everything dated by the service (policy expiry, the 48 h object lifetime, the daily
//! capacity's day) reads this clock, so tests can jump hours ahead with
//! `POST /__emulator/clock?advance_s=N` instead of waiting. Rate-limit windows deliberately do
//! not: they use the monotonic [`std::time::Instant`], because a jump in wall time must not
//! open or close a one-second window.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, FixedOffset, NaiveDate, TimeDelta, Utc};

#[derive(Debug, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock. An atomic: read on every request, written rarely.
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        add_or_max(Utc::now(), TimeDelta::try_milliseconds(offset))
    }

    /// Moves the clock `seconds` forward and returns the new time. Saturates instead of
    /// overflowing: a silly jump lands at the end of time, it does not panic.
    pub fn advance(&self, seconds: u64) -> DateTime<Utc> {
        let ms = i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let _ = self
            .offset_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
                Some(o.saturating_add(ms))
            });
        self.now()
    }
}

/// `t + delta`, or the latest representable time if that overflows.
pub fn add_or_max(t: DateTime<Utc>, delta: Option<TimeDelta>) -> DateTime<Utc> {
    delta
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The calendar day as the service sees it. DashScope's temporary storage lives in the
/// China (Beijing) region, so dates in `upload_dir` and the daily capacity roll over at
/// midnight UTC+8, not UTC.
pub fn service_date(t: DateTime<Utc>) -> NaiveDate {
    let beijing = FixedOffset::east_opt(8 * 3600).expect("UTC+8 is within the valid range");
    t.with_timezone(&beijing).date_naive()
}

/// `2026-11-25T12:00:00.000Z`: the form OSS uses in a policy's `expiration`.
pub fn iso_millis(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_forward() {
        let clock = Clock::default();
        let before = clock.now();
        let after = clock.advance(48 * 3600);
        assert!(after - before >= TimeDelta::hours(48));
        // Absurd jumps saturate rather than panic.
        clock.advance(u64::MAX);
        clock.advance(u64::MAX);
        assert_eq!(clock.now(), DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn service_date_is_beijing() {
        let t = DateTime::parse_from_rfc3339("2024-07-18T17:00:00Z").map(|t| t.to_utc());
        assert_eq!(service_date(t.expect("valid")).to_string(), "2024-07-19");
    }

    #[test]
    fn iso_millis_shape() {
        let t = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z").expect("valid");
        assert_eq!(iso_millis(t.to_utc()), "2026-11-25T12:00:00.000Z");
    }
}
