//! The outage gate: [`Outages`] applied to every request of a run, through the
//! [`Watch`] seam of the retry loops (getPolicy's inside the client, the uploads' and the
//! model calls' in the pipeline). Requests of a paused scope wait here; when the run gives
//! up, the gate stops it with a message that names the URL or the model, and every request
//! still waiting is refused.
//!
//! Since every request passes here, it also counts what rows cannot: every 429 answer (a
//! row records only the ones it retried and its last), and the retries of getPolicy (a fetch
//! serves all the rows waiting for it, so none of them records its retries).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::{Admit, Change, Outages, Scope};
use crate::dashscope::retry::{Ticket, Watch};
use crate::dashscope::{ApiError, ErrorKind};
use crate::pipeline::stop::{Stop, StopReason};

/// Holds and releases the requests of one run.
#[derive(Debug)]
pub struct Gate {
    outages: Mutex<Outages>,
    /// Wakes the requests held here when a probe is answered, an outage ends or the run
    /// stops. Waiters register before they look at the state, so no wake-up falls between
    /// the look and the wait; the state changes at most once per answer, so waking them all
    /// costs one look each.
    changed: Notify,
    stop: Arc<Stop>,
    /// Named in messages (never the key: it travels only in a header).
    base_url: String,
    timeout: Duration,
    /// getPolicy retries by cause (see the module header).
    credential_retries: Mutex<BTreeMap<&'static str, u64>>,
    /// 429 answers to any request.
    throttled: AtomicU64,
    /// The same, by the limit each reports (the summary's and the metrics' 429s by kind).
    throttled_by_kind: Mutex<BTreeMap<&'static str, u64>>,
}

impl Gate {
    pub fn new(base_url: &str, timeout: Duration, stop: Arc<Stop>) -> Arc<Self> {
        Arc::new(Self {
            outages: Mutex::new(Outages::new(timeout)),
            changed: Notify::new(),
            stop,
            base_url: base_url.to_owned(),
            timeout,
            credential_retries: Mutex::default(),
            throttled: AtomicU64::new(0),
            throttled_by_kind: Mutex::default(),
        })
    }

    /// The watch for requests in `scopes`.
    pub fn watch(self: &Arc<Self>, scopes: Vec<Scope>) -> Arc<dyn Watch> {
        Arc::new(Scoped {
            gate: Arc::clone(self),
            scopes: scopes.into(),
        })
    }

    /// getPolicy retries so far, by cause.
    pub fn credential_retries(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.credential_retries).clone()
    }

    /// 429 answers so far, to requests of every kind.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// 429 answers so far, by the limit they report.
    pub fn throttled_by_kind(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.throttled_by_kind).clone()
    }

    async fn admit(&self, scopes: &[Scope]) -> Result<Ticket, ApiError> {
        loop {
            if let Some(reason) = self.stop.reason() {
                return Err(reason.refusal());
            }
            let changed = self.changed.notified();
            let verdict = lock(&self.outages).admit(scopes, Instant::now());
            let until = match verdict {
                Admit::Go(probe) => {
                    return Ok(Ticket {
                        probe,
                        ..Ticket::default()
                    });
                }
                Admit::GiveUp(scope) => {
                    self.give_up(&scope);
                    continue;
                }
                Admit::Wait(until) => until,
            };
            let timer = async {
                match until {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = changed => {}
                () = timer => {}
                () = self.stop.refused() => {}
            }
        }
    }

    /// Resolves once the run stops or one of `scopes` is paused.
    async fn paused_or_stopped(&self, scopes: &[Scope]) {
        loop {
            let changed = self.changed.notified();
            if self.stop.reason().is_some() || lock(&self.outages).is_paused(scopes) {
                return;
            }
            tokio::select! {
                () = changed => {}
                () = self.stop.refused() => return,
            }
        }
    }

    fn answered(&self, scopes: &[Scope], ticket: Ticket, result: Result<(), &ApiError>) -> bool {
        if let Err(err) = result
            && let Some(scope) = err.throttle_scope()
        {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            *lock(&self.throttled_by_kind)
                .entry(scope.as_str())
                .or_default() += 1;
        }
        // Stopped here, as the answer arrives, so that no request sent after it (getPolicy
        // for another model, another row's upload) carries the rejected key again.
        // An account the service stopped (billing) is the same: every request would be refused.
        if let Err(err) = result {
            let reason = match err.kind {
                ErrorKind::Unauthorized => Some(StopReason::key_rejected(err)),
                ErrorKind::AccountStopped => Some(StopReason::account_stopped(err)),
                _ => None,
            };
            if let Some(reason) = reason {
                self.stop.stop(reason);
                self.changed.notify_waiters();
            }
        }
        let answer = lock(&self.outages).answered(scopes, ticket.probe, result, Instant::now());
        for (scope, change) in &answer.changes {
            match change {
                Change::Paused => tracing::warn!(
                    "{} {}; holding its requests and probing it (the run stops if it \
                     lasts {}s, --outage-timeout-s)",
                    self.describe(scope),
                    failing(scope),
                    self.timeout.as_secs(),
                ),
                Change::Resumed => {
                    tracing::warn!("{} answers again; resuming", self.describe(scope))
                }
            }
        }
        if ticket.probe.is_some() || !answer.changes.is_empty() {
            self.changed.notify_waiters();
        }
        answer.again
    }

    fn give_up(&self, scope: &Scope) {
        let since = lock(&self.outages).down_since(scope);
        let lasted = since.map_or(self.timeout, |s| s.elapsed()).as_secs();
        let hint = match scope {
            Scope::Service => "check the network and --base-url, then run again",
            Scope::Uploads => "check the network, then run again",
            Scope::Credentials => {
                "another client may be using the account's quota; run again later"
            }
            Scope::Model(_) => {
                "its quota may be used up (see the model's limits in Model Studio); run again later"
            }
        };
        self.stop.stop(StopReason::Outage(format!(
            "{} {} for {lasted}s (--outage-timeout-s {}s); {hint}",
            self.describe(scope),
            failing(scope),
            self.timeout.as_secs(),
        )));
        self.changed.notify_waiters();
    }

    fn describe(&self, scope: &Scope) -> String {
        match scope {
            Scope::Service => format!("the service at {}", self.base_url),
            Scope::Uploads => "the upload host named by the upload credentials".to_owned(),
            Scope::Credentials => format!("the upload-credential API at {}", self.base_url),
            Scope::Model(model) => format!("model {model}"),
        }
    }
}

fn failing(scope: &Scope) -> &'static str {
    match scope {
        Scope::Service | Scope::Uploads => "has not answered (connections fail or time out)",
        Scope::Credentials | Scope::Model(_) => "has answered only 429 (throttled)",
    }
}

/// No code panics while holding these locks; if one ever did, the state is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The gate as seen by the requests of some scopes.
struct Scoped {
    gate: Arc<Gate>,
    scopes: Arc<[Scope]>,
}

impl std::fmt::Debug for Scoped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped")
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Watch for Scoped {
    fn admit(&self) -> BoxFuture<'_, Result<Ticket, ApiError>> {
        Box::pin(self.gate.admit(&self.scopes))
    }

    fn answered(&self, ticket: Ticket, result: Result<(), &ApiError>) -> bool {
        self.gate.answered(&self.scopes, ticket, result)
    }

    fn retried(&self, err: &ApiError) {
        if self.scopes.contains(&Scope::Credentials) {
            *lock(&self.gate.credential_retries)
                .entry(err.kind.as_str())
                .or_default() += 1;
        }
    }

    fn wake(&self) -> BoxFuture<'static, ()> {
        let (gate, scopes) = (Arc::clone(&self.gate), Arc::clone(&self.scopes));
        Box::pin(async move { gate.paused_or_stopped(&scopes).await })
    }

    fn refused(&self) -> BoxFuture<'static, ApiError> {
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            gate.stop.refused().await;
            gate.stop
                .reason()
                .unwrap_or(&StopReason::Interrupted)
                .refusal()
        })
    }
}
