//! The emulator's wall clock: real time plus an offset that only moves forward.
//!
//! Everything dated by the service (policy expiry, the 48 h object lifetime, the daily
//! capacity's day) reads this clock, so tests can jump hours ahead with
//! `POST /__emulator/clock?advance_s=N` instead of waiting. Rate-limit windows deliberately do
//! not: they use the monotonic [`std::time::Instant`], because a jump in wall time must not
//! open or close a one-second window.
//!
//! The clock never passes [`latest`] (the end of year 9999 in Beijing time): a policy's
//! `expiration` is ISO-8601 with a four-digit year, and so is the Beijing-time day in
//! `upload_dir`; capping here means nothing downstream can overflow or panic.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, FixedOffset, NaiveDate, TimeDelta, Utc};

/// 9999-12-31T15:59:59.999Z (23:59:59.999 in Beijing) in milliseconds since the epoch.
const LATEST_MS: i64 = 253_402_271_999_999;

/// The latest time the emulator's clock (and any time it computes) can reach.
pub fn latest() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(LATEST_MS).expect("year 9999 is within chrono's range")
}

/// An advance that would move the clock past [`latest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "advancing the clock {0} s would move it past 9999-12-31T15:59:59.999Z, the latest time \
     the emulator can represent; advance by less"
)]
pub struct TooFar(pub u64);

#[derive(Debug, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock. An atomic: read on every request, written rarely.
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        add_capped(Utc::now(), TimeDelta::try_milliseconds(offset))
    }

    /// Moves the clock `seconds` forward and returns the new time, or refuses (and leaves
    /// the clock alone) if that would pass [`latest`].
    pub fn advance(&self, seconds: u64) -> Result<DateTime<Utc>, TooFar> {
        let too_far = TooFar(seconds);
        let ms = seconds
            .checked_mul(1000)
            .and_then(|ms| i64::try_from(ms).ok())
            .ok_or(too_far)?;
        let real_ms = Utc::now().timestamp_millis();
        self.offset_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |offset| {
                let offset = offset.checked_add(ms)?;
                (real_ms.checked_add(offset)? <= LATEST_MS).then_some(offset)
            })
            .map_err(|_| too_far)?;
        Ok(self.now())
    }
}

/// `t + delta`, but never later than [`latest`].
pub fn add_capped(t: DateTime<Utc>, delta: Option<TimeDelta>) -> DateTime<Utc> {
    delta
        .and_then(|d| t.checked_add_signed(d))
        .map_or_else(latest, |t| t.min(latest()))
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
        let after = clock.advance(48 * 3600).expect("a small jump");
        assert!(after - before >= TimeDelta::hours(48));
        // Absurd jumps are refused and leave the clock where it was.
        assert_eq!(clock.advance(u64::MAX), Err(TooFar(u64::MAX)));
        assert_eq!(clock.advance(u64::MAX / 1000), Err(TooFar(u64::MAX / 1000)));
        assert!(clock.now() - after < TimeDelta::hours(1));
        // Up to the cap is fine, and everything derived from it stays computable.
        let to_end = (latest() - clock.now()).num_seconds() - 10;
        let near_end = clock
            .advance(u64::try_from(to_end).expect("positive"))
            .expect("fits");
        assert!(near_end <= latest());
        assert!(clock.advance(3600).is_err());
        assert_eq!(service_date(clock.now()).to_string(), "9999-12-31");
        assert_eq!(
            iso_millis(add_capped(clock.now(), TimeDelta::try_days(1_000_000))),
            "9999-12-31T15:59:59.999Z"
        );
        assert_eq!(add_capped(clock.now(), None), latest());
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
