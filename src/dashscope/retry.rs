//! Retries with exponential backoff and full jitter, on top of `backon`.
//!
//! Owns the retry loop shape shared by every stage: which errors are retried
//! ([`ApiError::is_retryable`]), how long to wait, how `Retry-After` bends the wait, and how
//! many attempts were made. `backon` runs the loop; this module supplies the backoff
//! iterator, because backon's built-in jitter is additive (`d + rand·d`), not the full jitter
//! (`rand(0, d)`) that spreads a crowd of clients evenly after a shared 429 storm.
//!
//! A policy may carry a [`Watch`]: the seam through which whoever runs many loops at once (the
//! pipeline) sees every attempt before it is sent and after it is answered, so that it can
//! notice an outage, hold attempts while it lasts, and refuse them once the run stops. The
//! loops inside the client (getPolicy's, in [`super::Credentials`]) are reached the same way.
//!
//! It deliberately does not know what an operation does: refreshing a policy or re-uploading
//! after a non-retryable error is the caller's decision, made outside this loop.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::Retryable;
use futures::future::BoxFuture;

use super::error::ApiError;

/// How hard to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. 0 is treated as 1.
    pub max_attempts: u32,
    /// The first wait's upper bound; doubles each retry.
    pub base: Duration,
    /// No backoff wait is drawn from a range wider than this.
    pub cap: Duration,
    /// A `Retry-After` longer than this is clamped to it: a server asking for an hour should
    /// not stall a batch for an hour; the attempt cap still bounds the total.
    pub retry_after_ceiling: Duration,
    /// Sees every attempt of every loop run with this policy. `None`: attempts go straight out.
    pub watch: Option<Arc<dyn Watch>>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
            retry_after_ceiling: Duration::from_secs(60),
            watch: None,
        }
    }
}

/// What [`Watch::admit`] said about one attempt, handed back with its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticket {
    /// Set when the attempt goes out as the one probe of something thought to be down.
    pub probe: Option<u64>,
}

/// Watches the attempts of retry loops (see the module header).
pub trait Watch: Send + Sync + fmt::Debug {
    /// Awaited before each attempt. It may hold the attempt (while the service is thought to
    /// be down), or refuse it: the error ends the loop at once, and the attempt is not sent.
    fn admit(&self) -> BoxFuture<'_, Result<Ticket, ApiError>>;

    /// Each attempt's answer, with its ticket. `true` when the attempt was a probe and the
    /// outage goes on: the attempt then does not count against `max_attempts`, and the loop
    /// waits at [`Watch::admit`] again instead of backing off on its own.
    fn answered(&self, ticket: Ticket, result: Result<(), &ApiError>) -> bool;

    /// Called for each retry as it goes out, as the loop's own `on_retry` is.
    fn retried(&self, _err: &ApiError) {}

    /// Resolves once attempts are being refused: a backoff wait then ends early, so the loop
    /// learns it at once instead of after its wait.
    fn refused(&self) -> BoxFuture<'_, ()>;
}

/// Full-jitter exponential backoff: the n-th wait (n from 0) is uniform in
/// `[0, min(cap, base·2^n)]`. Yields `max_attempts - 1` waits, then `None`, which tells
/// backon to give up.
#[derive(Debug)]
pub(crate) struct FullJitter {
    base: Duration,
    cap: Duration,
    retry: u32,
    retries_left: u32,
}

impl FullJitter {
    pub(crate) fn new(policy: &RetryPolicy) -> FullJitter {
        FullJitter {
            base: policy.base,
            cap: policy.cap,
            retry: 0,
            retries_left: policy.max_attempts.max(1) - 1,
        }
    }

    /// The upper bound of the n-th wait: `min(cap, base·2^n)`, without overflow.
    pub(crate) fn ceiling(base: Duration, cap: Duration, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        base.checked_mul(factor).unwrap_or(cap).min(cap)
    }
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.retries_left == 0 {
            return None;
        }
        self.retries_left -= 1;
        let ceiling = Self::ceiling(self.base, self.cap, self.retry);
        self.retry = self.retry.saturating_add(1);
        // Nanosecond resolution; u64 nanoseconds covers 584 years, far beyond any cap.
        let max = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(rand::random_range(0..=max)))
    }
}

/// Runs `op` until it succeeds, fails with a non-retryable error, or `max_attempts` is reached.
///
/// Each wait is drawn with full jitter; a `Retry-After` on the error is a minimum wait,
/// clamped to `retry_after_ceiling`. `on_retry(&err, wait)` is called for each retry as it
/// goes out, with the error that caused it and the backoff waited (zero for the repeat of a
/// probe the policy's [`Watch`] held back): so the retries reported are exactly the
/// attempts after the first, and a retry that a stopping run refuses is not one. Returns the
/// last result and the number of attempts made (requests sent).
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    op: F,
    on_retry: impl FnMut(&ApiError, Duration),
) -> (Result<T, ApiError>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    // An atomic rather than a Cell so the returned future stays Send (the pipeline spawns it).
    let attempts = AtomicU32::new(0);
    // The retry decided on (by backon's notify, or a held-back probe), reported once the
    // attempt goes out. Behind mutexes (never held across an await) because more than one
    // closure reaches each: backon's attempt and notify closures.
    let pending: Mutex<Option<(ApiError, Duration)>> = Mutex::new(None);
    let op = Mutex::new(op);
    let watch = policy.watch.clone();
    let mut on_retry = on_retry;
    let mut report = |err: &ApiError, wait: Duration| {
        if let Some(watch) = &watch {
            watch.retried(err);
        }
        on_retry(err, wait);
    };
    let report = Mutex::new(&mut report);
    let attempt = || async {
        loop {
            let ticket = match &watch {
                Some(watch) => watch.admit().await?,
                None => Ticket::default(),
            };
            if let Some((err, wait)) = lock(&pending).take() {
                (lock(&report))(&err, wait);
            }
            attempts.fetch_add(1, Ordering::Relaxed);
            let sent = (lock(&op))();
            let result = sent.await;
            let held = watch
                .as_ref()
                .is_some_and(|w| w.answered(ticket, result.as_ref().map(|_| ())));
            match result {
                Err(err) if held => *lock(&pending) = Some((err, Duration::ZERO)),
                result => return result,
            }
        }
    };
    let ceiling = policy.retry_after_ceiling;
    let sleeper = policy.watch.clone();
    let result = attempt
        .retry(FullJitter::new(policy))
        .sleep(move |wait| backoff(wait, sleeper.clone()))
        .when(ApiError::is_retryable)
        .adjust(move |err: &ApiError, wait: Option<Duration>| {
            // `None` means the attempts are used up: keep it, whatever Retry-After says.
            let wait = wait?;
            Some(match err.retry_after {
                Some(after) => wait.max(after.min(ceiling)),
                None => wait,
            })
        })
        .notify(|err: &ApiError, wait| *lock(&pending) = Some((err.clone(), wait)))
        .await;
    (result, attempts.load(Ordering::Relaxed))
}

/// Nothing panics while holding these locks; if something did, the value is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A backoff wait, cut short once the watch refuses attempts.
async fn backoff(wait: Duration, watch: Option<Arc<dyn Watch>>) {
    match watch {
        Some(watch) => {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = watch.refused() => {}
            }
        }
        None => tokio::time::sleep(wait).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashscope::error::ErrorKind;
    use std::sync::Mutex;

    fn err(kind: ErrorKind, retry_after: Option<Duration>) -> ApiError {
        ApiError {
            retry_after,
            ..ApiError::local(kind, "test", "test error")
        }
    }

    #[test]
    fn full_jitter_waits_stay_under_the_exponential_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 12,
            ..RetryPolicy::default()
        };
        for _ in 0..200 {
            let waits: Vec<_> = FullJitter::new(&policy).collect();
            assert_eq!(waits.len(), 11);
            for (n, wait) in waits.iter().enumerate() {
                let bound = (policy.base * 2u32.pow(n as u32)).min(policy.cap);
                assert!(*wait <= bound, "wait {n} = {wait:?} > {bound:?}");
            }
        }
        assert_eq!(
            FullJitter::ceiling(policy.base, policy.cap, 200),
            policy.cap
        );
        assert_eq!(
            FullJitter::new(&RetryPolicy {
                max_attempts: 0,
                ..policy
            })
            .count(),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_counts_attempts() {
        let calls = AtomicU32::new(0);
        let mut notified = Vec::new();
        let (result, attempts) = retry(
            &RetryPolicy::default(),
            || async {
                match calls.fetch_add(1, Ordering::Relaxed) {
                    0 => Err(err(ErrorKind::Throttled, None)),
                    1 => Err(err(ErrorKind::Server, None)),
                    2 => Err(err(ErrorKind::Network, None)),
                    _ => Ok("done"),
                }
            },
            |e, wait| notified.push((e.kind, wait)),
        )
        .await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(attempts, 4);
        let kinds: Vec<_> = notified.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [ErrorKind::Throttled, ErrorKind::Server, ErrorKind::Network]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_attempts() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let mut retries = 0;
        let (result, attempts) = retry(
            &policy,
            || async { Err::<(), _>(err(ErrorKind::Server, None)) },
            |_, _| retries += 1,
        )
        .await;
        assert_eq!(result.unwrap_err().kind, ErrorKind::Server);
        assert_eq!(attempts, 3);
        assert_eq!(retries, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_on_non_retryable_errors() {
        for kind in [
            ErrorKind::Unauthorized,
            ErrorKind::PolicyExpired,
            ErrorKind::AlreadyExists,
            ErrorKind::InvalidOssUrl,
            ErrorKind::Rejected,
        ] {
            let mut retries = 0;
            let (result, attempts) = retry(
                &RetryPolicy::default(),
                || async { Err::<(), _>(err(kind, None)) },
                |_, _| retries += 1,
            )
            .await;
            assert_eq!(result.unwrap_err().kind, kind);
            assert_eq!((attempts, retries), (1, 0), "{kind:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_a_minimum_and_clamped_to_the_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(1),
            retry_after_ceiling: Duration::from_secs(60),
            watch: None,
        };
        let calls = AtomicU32::new(0);
        let waits = Mutex::new(Vec::new());
        let start = tokio::time::Instant::now();
        let (result, attempts) = retry(
            &policy,
            || async {
                match calls.fetch_add(1, Ordering::Relaxed) {
                    0 => Err(err(ErrorKind::Throttled, Some(Duration::from_secs(5)))),
                    1 => Err(err(ErrorKind::Throttled, Some(Duration::from_secs(3600)))),
                    _ => Ok(()),
                }
            },
            |_, wait| waits.lock().unwrap().push(wait),
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(attempts, 3);
        // Jitter never exceeds the 1 s cap, so the Retry-After floor decides both waits.
        assert_eq!(
            *waits.lock().unwrap(),
            [Duration::from_secs(5), Duration::from_secs(60)]
        );
        // And the waits really happened (paused clock, auto-advanced).
        assert!(start.elapsed() >= Duration::from_secs(65));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_does_not_add_attempts() {
        let policy = RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        };
        let (result, attempts) = retry(
            &policy,
            || async { Err::<(), _>(err(ErrorKind::Throttled, Some(Duration::from_secs(1)))) },
            |_, _| {},
        )
        .await;
        assert!(result.is_err());
        assert_eq!(attempts, 2);
    }
}
