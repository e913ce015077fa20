//! Why a run stops early, and the switch every part of the pipeline watches.
//!
//! A run stops dispatching for one of five reasons: a signal (the caller's `shutdown`), a key
//! the service rejected, an account the service stopped (billing), an outage that outlasted
//! `--outage-timeout-s`, or a Redis (`--redis`) that stayed unreachable past
//! `--redis-timeout-s`. This is the one place
//! that state lives: the first reason wins and is the one the summary, the exit code and the
//! `not_attempted` lines name ([`Stop::stopped`]). Deliberately not here: deciding that the
//! key is bad or the service is down (the outage gate, which sees every answer, does both).

use std::fmt;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use crate::dashscope::{ApiError, ErrorKind};
use crate::failure::FailureCode;

/// Why a run stopped before the end of its manifest. A new reason (a spending limit, say) is
/// a new variant here, and its exit code in the CLI's `exit_code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The service answered 401; the message says what to check.
    KeyRejected(String),
    /// The service refused the account itself (arrears, an overdue bill, a product not
    /// bought): every call would get the same answer until someone pays. The message quotes
    /// the service and says what to do.
    AccountStopped(String),
    /// The service, its upload host or a model stayed unavailable; the message names the
    /// URL or the model.
    Outage(String),
    /// Redis (`--redis`) stayed unreachable past `--redis-timeout-s`; the message names its
    /// URL, never its password.
    RedisLost(String),
    /// SIGINT or SIGTERM.
    Interrupted,
}

impl StopReason {
    /// The stop for a 401: the message says what to check.
    pub fn key_rejected(err: &ApiError) -> StopReason {
        StopReason::KeyRejected(format!(
            "the API key was rejected ({err}); check DASHSCOPE_API_KEY or --api-key-file"
        ))
    }

    /// The stop for an account refusal ([`ErrorKind::AccountStopped`]): what the service
    /// said, and what to do, chosen by its code.
    pub fn account_stopped(err: &ApiError) -> StopReason {
        let hint = match err.code.as_str() {
            "CommodityNotPurchased" => {
                "buy (activate) the model or service for this account in the Model Studio console"
            }
            _ => "top up the account or pay the overdue bill in the Alibaba Cloud console",
        };
        StopReason::AccountStopped(format!(
            "the service refused the account ({err}); {hint}, then run again: the rows not \
             done are left for the next run"
        ))
    }

    /// A short stable name, for scripts and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::KeyRejected(_) => "key_rejected",
            StopReason::AccountStopped(_) => "account_stopped",
            StopReason::Outage(_) => "outage",
            StopReason::RedisLost(_) => "redis_lost",
            StopReason::Interrupted => "interrupted",
        }
    }

    /// The error a request gets when it is refused for this reason: it ends its retry loop
    /// at once, and its row ends `not_attempted`.
    pub fn refusal(&self) -> ApiError {
        ApiError::local(
            ErrorKind::Rejected,
            FailureCode::NotAttempted,
            format!("not attempted: {self}"),
        )
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::KeyRejected(message)
            | StopReason::AccountStopped(message)
            | StopReason::Outage(message)
            | StopReason::RedisLost(message) => f.write_str(message),
            StopReason::Interrupted => f.write_str("the run was interrupted"),
        }
    }
}

/// The run's stop switch, shared by the dispatcher, the workers and the outage gate.
#[derive(Debug)]
pub struct Stop {
    /// The caller's: cancelled by a signal.
    shutdown: CancellationToken,
    /// Cancelled to stop dispatching new rows: by a reason, by a signal (it is a child of the
    /// caller's `shutdown`), or when results can no longer be written.
    dispatch: CancellationToken,
    /// Cancelled with a reason only. Requests are refused from then on; a signal alone lets
    /// the rows in flight finish, so it does not cancel this.
    refuse: CancellationToken,
    /// Set once, by [`Stop::stop`]: the first reason, a signal that came before it included.
    reason: OnceLock<StopReason>,
}

impl Stop {
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            shutdown: shutdown.clone(),
            dispatch: shutdown.child_token(),
            refuse: CancellationToken::new(),
            reason: OnceLock::new(),
        }
    }

    /// Stops the run for `reason`, unless it was already stopped for another.
    pub fn stop(&self, reason: StopReason) {
        // A signal that came first is the reason, though it does not refuse requests itself.
        if self.shutdown.is_cancelled() {
            let _ = self.reason.set(StopReason::Interrupted);
        }
        if self.reason.set(reason).is_ok()
            && let Some(reason) = self.reason.get()
        {
            tracing::warn!("stopping ({}): {reason}", reason.as_str());
        }
        self.refuse.cancel();
        self.dispatch.cancel();
    }

    /// Why requests are refused, once they are: set only by [`Stop::stop`], never by a
    /// signal alone, which lets the rows in flight finish.
    pub fn reason(&self) -> Option<&StopReason> {
        self.reason.get()
    }

    /// Why the run stopped, if it did: the first of a signal and a reason to refuse.
    pub fn stopped(&self) -> Option<StopReason> {
        self.reason.get().cloned().or_else(|| {
            self.shutdown
                .is_cancelled()
                .then_some(StopReason::Interrupted)
        })
    }

    /// Cancelled once no new row should start.
    pub fn dispatch(&self) -> &CancellationToken {
        &self.dispatch
    }

    /// Resolves once requests are refused (a reason was set).
    pub async fn refused(&self) {
        self.refuse.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins_and_a_signal_does_not_refuse_requests() {
        let shutdown = CancellationToken::new();
        let stop = Stop::new(&shutdown);
        shutdown.cancel();
        assert!(stop.dispatch().is_cancelled());
        assert!(!stop.refuse.is_cancelled(), "rows in flight may finish");
        assert_eq!(stop.reason(), None);
        assert_eq!(stop.stopped(), Some(StopReason::Interrupted));

        // The signal came first: it stays the reason, and requests are now refused.
        stop.stop(StopReason::KeyRejected("401".into()));
        assert!(stop.refuse.is_cancelled());
        assert_eq!(stop.stopped(), Some(StopReason::Interrupted));
    }

    #[test]
    fn a_reason_set_before_a_signal_stays_the_reason() {
        let shutdown = CancellationToken::new();
        let stop = Stop::new(&shutdown);
        assert_eq!(stop.stopped(), None);
        stop.stop(StopReason::Outage("model m answered only 429".into()));
        shutdown.cancel();
        stop.stop(StopReason::KeyRejected("401".into()));
        assert_eq!(stop.reason().map(StopReason::as_str), Some("outage"));
        assert_eq!(
            stop.stopped().map(|r| r.to_string()).as_deref(),
            Some("model m answered only 429")
        );
    }
}
