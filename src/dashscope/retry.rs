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
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::Retryable;
use futures::FutureExt;
use futures::future::{self, BoxFuture};

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
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
            retry_after_ceiling: Duration::from_secs(60),
            watch: None,
        }
    }
}

impl RetryPolicy {
    /// Five retries: with a 250 ms base doubling to a 30 s cap, about 8 s of backoff at
    /// most before a row fails. `run --max-attempts` takes its default from here.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
}

/// What [`Watch::admit`] said about one attempt, handed back with its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticket {
    /// Set when the attempt goes out as the one probe of something thought to be down.
    pub probe: Option<u64>,
    /// When the watch let the attempt go, for a watch that learns from each answer how
    /// fast to send (the model pacer judges a 429 by when its call was sent).
    pub admitted: Option<std::time::Instant>,
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

    /// Resolves when a backoff wait should end early: attempts are being refused (the loop
    /// learns it at once), or the watch is holding attempts (it does the waiting then, and
    /// a loop in a long backoff must not miss its turn to probe). Owns what it needs
    /// (`'static`), since the backoff sleeper cannot lend from itself.
    fn wake(&self) -> BoxFuture<'static, ()>;

    /// Resolves, with the error an attempt gets, once attempts are refused for good (the
    /// run stopped). An attempt that waits for something that may never come (a grant from
    /// a Redis that was lost: the limiter fails closed) races its wait against this. The
    /// default never resolves.
    fn refused(&self) -> BoxFuture<'static, ApiError> {
        Box::pin(std::future::pending())
    }
}

/// Full-jitter exponential backoff: the n-th wait (n from 0) is uniform in
/// `[0, min(cap, base·2^n)]`. Yields `max_attempts - 1` waits, then `None`, which tells
/// backon to give up. While `refund` is set (a watch held a failed probe back), it yields a
/// zero wait that uses up neither a retry nor a step of the backoff.
#[derive(Debug)]
pub(crate) struct FullJitter<'a> {
    base: Duration,
    cap: Duration,
    retry: u32,
    retries_left: u32,
    refund: Option<&'a AtomicBool>,
}

impl<'a> FullJitter<'a> {
    pub(crate) fn new(policy: &RetryPolicy) -> FullJitter<'a> {
        FullJitter {
            base: policy.base,
            cap: policy.cap,
            retry: 0,
            retries_left: policy.max_attempts.max(1) - 1,
            refund: None,
        }
    }

    pub(crate) fn with_refund(self, refund: &'a AtomicBool) -> FullJitter<'a> {
        FullJitter {
            refund: Some(refund),
            ..self
        }
    }

    /// The upper bound of the n-th wait: `min(cap, base·2^n)`, without overflow.
    pub(crate) fn ceiling(base: Duration, cap: Duration, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        base.checked_mul(factor).unwrap_or(cap).min(cap)
    }
}

impl Iterator for FullJitter<'_> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.refund.is_some_and(|r| r.load(Ordering::Relaxed)) {
            return Some(Duration::ZERO);
        }
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
/// clamped to `retry_after_ceiling`. With a [`Watch`], each attempt is admitted by it first,
/// and a failed probe that it holds back is retried without a wait of ours and without
/// counting against `max_attempts` (the watch does the waiting).
///
/// `on_retry(&err, wait)` is called for each retry as it goes out, with the error that
/// caused it and the backoff waited: so the retries reported are exactly the requests sent
/// after the first, and a retry that a stopping run refuses is not one. Returns the last
/// result and the number of attempts made (requests sent).
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    mut op: F,
    mut on_retry: impl FnMut(&ApiError, Duration),
) -> (Result<T, ApiError>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    // Atomics and mutexes (never held across an await) rather than Cells so the returned
    // future stays Send (the pipeline spawns it); they are shared by backon's closures.
    let attempts = AtomicU32::new(0);
    // Set when the watch held a failed probe back: its retry is free (see `FullJitter`).
    let refund = AtomicBool::new(false);
    // The retry decided on, reported once its attempt goes out.
    let pending: Mutex<Option<(ApiError, Duration)>> = Mutex::new(None);
    let watch = policy.watch.clone();
    let report = |err: &ApiError, wait: Duration| {
        if let Some(watch) = &watch {
            watch.retried(err);
        }
        on_retry(err, wait);
    };
    let report = Mutex::new(report);
    let attempt = || {
        // Made now, sent only once admitted: `op`'s futures do nothing until polled.
        let sent = op();
        let (watch, refund, pending, report, attempts) =
            (&watch, &refund, &pending, &report, &attempts);
        async move {
            let ticket = match watch {
                Some(watch) => watch.admit().await?,
                None => Ticket::default(),
            };
            if let Some((err, wait)) = lock(pending).take() {
                (lock(report))(&err, wait);
            }
            attempts.fetch_add(1, Ordering::Relaxed);
            let result = sent.await;
            if let Some(watch) = watch
                && watch.answered(ticket, result.as_ref().map(|_| ()))
            {
                refund.store(true, Ordering::Relaxed);
            }
            result
        }
    };
    let ceiling = policy.retry_after_ceiling;
    let result = attempt
        .retry(FullJitter::new(policy).with_refund(&refund))
        .sleep(sleeper(policy.watch.clone()))
        // A held-back probe is retried whatever it was: the watch decides when.
        .when(|err: &ApiError| err.is_retryable() || refund.load(Ordering::Relaxed))
        .adjust(|err: &ApiError, wait: Option<Duration>| {
            // The watch holds the next attempt until the next probe: no wait of our own.
            if refund.swap(false, Ordering::Relaxed) {
                return Some(Duration::ZERO);
            }
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

/// Backoff waits, each cut short when the watch says so (see [`Watch::wake`]). Made in a function of its
/// own because a closure carries the generics of the function it is written in, and backon
/// wants a `'static` sleeper: written inside [`retry`], it would be bound by `op`'s borrows.
fn sleeper(watch: Option<Arc<dyn Watch>>) -> impl Fn(Duration) -> BoxFuture<'static, ()> {
    move |wait| {
        let sleep = tokio::time::sleep(wait);
        match watch.as_ref().map(|w| w.wake()) {
            Some(wake) => Box::pin(future::select(Box::pin(sleep), wake).map(|_| ())),
            None => Box::pin(sleep),
        }
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
            ..ApiError::service(kind, "test", "test error")
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

    /// A scripted watch: holds back the first `held` failed attempts as probes, refuses
    /// every attempt once `refuse` is set.
    #[derive(Debug, Default)]
    struct Scripted {
        held: AtomicU32,
        refuse: tokio_util::sync::CancellationToken,
        admitted: AtomicU32,
        retried: Mutex<Vec<ErrorKind>>,
    }

    impl Watch for Scripted {
        fn admit(&self) -> BoxFuture<'_, Result<Ticket, ApiError>> {
            Box::pin(async move {
                if self.refuse.is_cancelled() {
                    return Err(err(ErrorKind::Rejected, None));
                }
                let n = self.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(Ticket {
                    probe: Some(u64::from(n)),
                    ..Ticket::default()
                })
            })
        }

        fn answered(&self, _: Ticket, result: Result<(), &ApiError>) -> bool {
            result.is_err()
                && self
                    .held
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
        }

        fn retried(&self, err: &ApiError) {
            self.retried.lock().unwrap().push(err.kind);
        }

        fn wake(&self) -> BoxFuture<'static, ()> {
            let refuse = self.refuse.clone();
            Box::pin(async move { refuse.cancelled().await })
        }
    }

    fn watched(watch: &Arc<Scripted>, max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            watch: Some(Arc::clone(watch) as Arc<dyn Watch>),
            ..RetryPolicy::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn held_back_probes_do_not_use_up_attempts_and_every_retry_sent_is_reported() {
        let watch = Arc::new(Scripted {
            held: AtomicU32::new(4),
            ..Scripted::default()
        });
        let mut reported = Vec::new();
        let start = tokio::time::Instant::now();
        let (result, attempts) = retry(
            &watched(&watch, 2),
            || async { Err::<(), _>(err(ErrorKind::Network, None)) },
            |e, wait| reported.push((e.kind, wait)),
        )
        .await;
        assert!(result.is_err());
        // Four held back (free, no wait of ours), then the two attempts of the policy.
        assert_eq!(attempts, 6);
        assert_eq!(
            reported.len(),
            5,
            "one retry reported per request after the first"
        );
        assert!(reported[..4].iter().all(|(_, w)| w.is_zero()));
        assert_eq!(watch.retried.lock().unwrap().len(), 5);
        assert!(start.elapsed() <= RetryPolicy::default().base);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_ends_the_loop_unsent_and_cuts_a_backoff_short() {
        let watch = Arc::new(Scripted::default());
        let sent = AtomicU32::new(0);
        let policy = RetryPolicy {
            base: Duration::from_secs(3600),
            cap: Duration::from_secs(3600),
            ..watched(&watch, 6)
        };
        let refuse = watch.refuse.clone();
        let start = tokio::time::Instant::now();
        let mut reported = 0;
        let (result, attempts) = retry(
            &policy,
            || async {
                if sent.fetch_add(1, Ordering::Relaxed) == 0 {
                    // The run stops while this request is out; its retry would wait an hour.
                    refuse.cancel();
                }
                Err::<(), _>(err(ErrorKind::Server, Some(Duration::from_secs(60))))
            },
            |_, _| reported += 1,
        )
        .await;
        assert_eq!(result.unwrap_err().kind, ErrorKind::Rejected);
        assert_eq!((attempts, sent.load(Ordering::Relaxed)), (1, 1));
        assert_eq!(reported, 0, "the refused retry was never sent");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    /// getPolicy's loop borrows the caller's state and holds a lock guard across an await;
    /// the run spawns such futures, so they must stay Send (a closure written inside
    /// `retry` for backon's sleeper once broke that).
    #[tokio::test]
    async fn a_loop_over_a_borrowing_op_can_be_spawned() {
        struct Source {
            turn: tokio::sync::Mutex<()>,
            policy: RetryPolicy,
        }
        impl Source {
            async fn get(&self, model: &str) -> Result<usize, ApiError> {
                let (result, _) = retry(
                    &self.policy,
                    || async {
                        let _turn = self.turn.lock().await;
                        tokio::task::yield_now().await;
                        Ok(model.len())
                    },
                    |err, wait| tracing::debug!(model, %err, ?wait, "retrying"),
                )
                .await;
                result
            }
        }
        let source = Arc::new(Source {
            turn: tokio::sync::Mutex::new(()),
            policy: watched(&Arc::new(Scripted::default()), 2),
        });
        let got = tokio::spawn(async move { source.get("m").await }).await;
        assert_eq!(got.unwrap().unwrap(), 1);
    }
}
