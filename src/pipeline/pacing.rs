//! Adaptive pacing of model calls, per model (one run = one key = one account, so per model
//! is per (account, model), which is how DashScope counts its limits).
//!
//! The service does not say a model's rate limit; it answers 429 past it. What a 429 (or
//! a success) means for the pace is decided in [`aimd`]; this module applies it.
//!
//! A call asks for a [`Permit`] (`acquire(model, cost)`), which waits for the model's pace,
//! and settles it with the call's outcome, which steers the pace. The decision is
//! [`Aimd`], a state machine with the clock injected; the waiting is a [`Limiter`] that
//! spaces the calls evenly at the current rate, asked again by every waiter whenever the
//! rate changes, so calls queued at a low pace go out at the new one as soon as it rises.
//! Each model has its own state, so one throttled model never slows another, and nothing
//! pauses the whole run (unlike a global back-off after any 429). `--model-rps` sets a known
//! limit up front; the rate then stays at or below it. Without it a model starts slowly
//! (issue 11): its calls go through a gate ([`ramp`]) that lets at most
//! [`aimd::START_RATE`] go in the first second and twice the second before in each one
//! after (with a margin in time for the network's jitter), until the first 429 sets a rate; a growth-rate 429
//! (`Throttling.BurstRate`) slows that ramp rather than setting a rate. A token-rate 429
//! (`Throttling.AllocationQuota`, compatible `insufficient_quota`) paces the model's tokens
//! instead, leaving its request pace alone ([`tokens`]): from then on the model's calls go
//! at the lower of its request pace and its token pace over the tokens a call uses (learnt
//! from the usage of its answers). `--model-tpm` sets that token pace, and its cap, from
//! the start.
//!
//! With `--redis`, what each model's state machine decides is shared with the other
//! processes of the account ([`SharedPace`], see `shared::pace` for the design): a change
//! is applied here at once and proposed to Redis, compare-and-set on the epoch this process
//! last saw; a process whose proposal lost, or that reads a newer epoch (a few times a
//! second), adopts the stored rate. Without `--redis` nothing of this runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::dashscope::ApiError;
use crate::dashscope::error::ThrottleScope;
use crate::limit::{Cost, Limiter, LocalLimiter, Rate};
use crate::shared::pace::{Proposal, SYNC, Seen};
use crate::shared::{RampTurn, SharedPace};
use aimd::{Aimd, Change, Turn};
use tokens::{TokenAimd, TokenChange};

mod aimd;
mod ramp;
mod sample;
mod tokens;

/// What callers of one model wait on. Sent on every change, so that a caller waiting at the
/// old pace wakes and waits again at the new one.
#[derive(Debug, Clone, Copy, Default)]
struct Pace {
    /// Calls per second; `None`: unpaced, calls go at once.
    rate: Option<f64>,
    /// Tokens per second; `None`: tokens unpaced.
    tokens: Option<f64>,
    /// No call before this instant: the pause that comes with a cut.
    not_before: Option<Instant>,
    /// A slow start: calls go when its gate lets them ([`Aimd::turn`]), not at `rate`.
    ramping: bool,
}

/// One model's pacer: its AIMD state and the pace it publishes to the callers.
struct Model {
    aimd: Aimd,
    tokens: TokenAimd,
    pace: watch::Sender<Pace>,
    /// Tokens per call, learnt from the usage of its answers (a moving average); 0 until
    /// the first answer.
    tokens_per_call: f64,
    /// The shared pace's epoch this process last saw (`--redis`; 0: none yet).
    epoch: u64,
    /// When this process last asked for the shared pace; `None`: never.
    synced: Option<Instant>,
}

/// Weight of the newest answer in the tokens-per-call average: recent calls count most,
/// since a manifest's rows often come grouped by kind.
const TOKENS_WEIGHT: f64 = 0.2;

impl Model {
    fn apply(&mut self, change: Change, now: Instant) {
        // `send_modify` updates the value even while no caller is subscribed.
        let ramping = self.aimd.ramping();
        self.pace.send_modify(|pace| {
            pace.rate = Some(change.rate);
            pace.ramping = ramping;
            if !change.pause.is_zero() {
                pace.not_before = Some(now + change.pause);
            }
        });
    }

    /// `change`, as proposed to the other processes (`--redis`), with the ceiling it was
    /// decided under.
    fn proposal(&self, change: Change) -> Proposal {
        Proposal {
            rate: change.rate,
            pause: change.pause,
            ceiling: self.aimd.ceiling(),
        }
    }

    fn apply_tokens(&mut self, change: TokenChange, now: Instant) {
        self.pace.send_modify(|pace| {
            pace.tokens = Some(change.rate);
            if !change.pause.is_zero() {
                pace.not_before = Some(now + change.pause);
            }
        });
    }
}

/// What became of a paced call, as far as the pace is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered: the model took the call at this pace.
    Ok,
    /// Refused with a 429 of this scope.
    Throttled(ThrottleScope),
    /// Any other failure: says nothing about the pace.
    Failed,
}

impl Outcome {
    pub fn of<T>(result: Result<T, &ApiError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => e
                .throttle_scope()
                .map_or(Outcome::Failed, Outcome::Throttled),
        }
    }
}

/// Leave to send one call to a model, from [`Pacing::acquire`]. The call's outcome goes
/// back through [`Pacing::settle`] with [`Permit::sent`]; a call never made (a cancelled
/// row) teaches the pace nothing.
#[must_use = "send the call, then settle its outcome"]
#[derive(Debug, Clone, Copy)]
pub struct Permit {
    sent: Instant,
}

impl Permit {
    /// When the turn was granted: the call goes out now.
    pub fn sent(self) -> Instant {
        self.sent
    }
}

impl Pace {
    /// Calls a second: the request pace, or the token pace over `per_call` tokens a call
    /// (once known), whichever is lower; `None`: neither is paced.
    fn calls_per_second(&self, per_call: f64) -> Option<f64> {
        match (self.rate, self.by_tokens(per_call)) {
            (Some(rate), Some(by_tokens)) => Some(rate.min(by_tokens)),
            (rate, by_tokens) => rate.or(by_tokens),
        }
    }

    /// Calls a second that the token pace allows at `per_call` tokens a call (once known).
    fn by_tokens(&self, per_call: f64) -> Option<f64> {
        self.tokens
            .filter(|_| per_call >= 1.0)
            .map(|t| t / per_call)
    }
}

/// The pacers of all models of a run.
pub struct Pacing {
    cap: Option<f64>,
    /// `--model-tpm` as tokens per second: the token pace from the start, and its cap.
    tokens_per_second: Option<f64>,
    /// Spaces the calls of each model (key: the model) at its current rate.
    limiter: Arc<dyn Limiter>,
    /// Locked briefly per call to subscribe to a model's pace or to record an outcome;
    /// never held across an await. Shared with the tasks that talk to Redis (`--redis`).
    models: Arc<Mutex<HashMap<String, Model>>>,
    /// `--redis`: the pace shared with the account's other processes.
    shared: Option<SharedPace>,
}

/// Tokio's clock, so that tests on a paused clock drive the pacing and the limiter alike.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Pacing {
    /// `model_rps`: a known per-model limit, or `None` to discover it from 429s;
    /// `model_tpm`: a known per-model token limit a minute, paced as TPM/60 a second (the
    /// service counts both).
    pub fn new(model_rps: Option<f64>, model_tpm: Option<u64>) -> Self {
        Self {
            tokens_per_second: model_tpm.filter(|t| *t > 0).map(|t| t as f64 / 60.0),
            cap: model_rps.filter(|r| *r > 0.0),
            limiter: Arc::new(LocalLimiter::new()),
            models: Arc::default(),
            shared: None,
        }
    }

    /// The same pacing, its decisions shared with the account's other processes through
    /// Redis (`--redis`; see the module notes).
    pub fn with_shared(self, shared: SharedPace) -> Self {
        Self {
            shared: Some(shared),
            ..self
        }
    }

    /// Reads the shared pace of `model` if it is time to (at most every [`SYNC`]), in a task
    /// of its own: a caller never waits for Redis here.
    fn sync(&self, model: &str) {
        let Some(shared) = &self.shared else {
            return;
        };
        let due = self.with_model(model, |m| {
            let now = now();
            let due = m
                .synced
                .is_none_or(|t| now.saturating_duration_since(t) >= SYNC);
            if due {
                m.synced = Some(now);
            }
            due
        });
        if due {
            let (shared, models, model) =
                (shared.clone(), Arc::clone(&self.models), model.to_owned());
            tokio::spawn(async move {
                // Lost: the run is stopping; the pace stays as it is.
                if let Ok(seen) = shared.sync(&model).await {
                    reconcile(&models, &model, seen);
                }
            });
        }
    }

    /// Proposes a change this process decided for `model` at `epoch` (`--redis`), in a task
    /// of its own; the answer is reconciled (the stored rate adopted if another process
    /// changed it first).
    fn propose(&self, model: &str, epoch: u64, change: Proposal) {
        let Some(shared) = &self.shared else {
            return;
        };
        let (shared, models, model) = (shared.clone(), Arc::clone(&self.models), model.to_owned());
        tokio::spawn(async move {
            if let Ok(seen) = shared.propose(&model, epoch, change).await {
                reconcile(&models, &model, seen);
            }
        });
    }

    /// The same pacing, its waits spaced by `limiter` (one shared with other processes of
    /// the account, `--redis`) instead of an in-process one.
    pub fn with_limiter(self, limiter: Arc<dyn Limiter>) -> Self {
        Self { limiter, ..self }
    }

    fn with_model<T>(&self, model: &str, f: impl FnOnce(&mut Model) -> T) -> T {
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if !models.contains_key(model) {
            let aimd = match self.cap {
                Some(_) => Aimd::new(self.cap, now()),
                None => Aimd::slow_start(now()),
            };
            let tokens = TokenAimd::new(self.tokens_per_second, now());
            let pace = watch::Sender::new(Pace {
                rate: aimd.rate(),
                tokens: tokens.rate(),
                not_before: None,
                ramping: aimd.ramping(),
            });
            models.insert(
                model.to_owned(),
                Model {
                    aimd,
                    tokens,
                    pace,
                    tokens_per_call: 0.0,
                    epoch: 0,
                    synced: None,
                },
            );
        }
        let entry = models.get_mut(model).expect("inserted above");
        f(entry)
    }

    /// Waits until `model` may be called, then lets one call of `cost` go. Free while the
    /// model has never been throttled.
    ///
    /// One wait, on the model's key, at the lower of its request pace and its token pace
    /// over the tokens a call uses (the learnt tokens per call). Not one wait for tokens
    /// and then one for the request turn: with C calls queued at the second, a token pace
    /// set while they wait would never reach them, since they passed the first wait when
    /// there was none, and they would go out at the request pace (measured: 60 calls in a
    /// second against a limit of 19).
    ///
    /// A caller waits at the pace it read, until that pace changes: then it drops its place
    /// (the limiter spends nothing for a dropped wait) and waits again at the new pace. A
    /// caller that queued at 1/s thus goes out at 60/s once the rate rises, and one that
    /// queued before a cut honours the cut's pause. No burst: the service counts every
    /// one-second window, and a burst after a quiet spell would put two seconds' worth in one.
    pub async fn acquire(&self, model: &str, cost: Cost) -> Permit {
        self.sync(model);
        let mut pace = self.with_model(model, |m| m.pace.subscribe());
        loop {
            let current = *pace.borrow_and_update();
            let per_call = self.with_model(model, |m| m.tokens_per_call);
            if current.ramping {
                match self.ramp_step(model, cost, &current, &mut pace).await {
                    Step::Went => break,
                    Step::Again => continue,
                    // The ramp ended since the pace was read: at the rate, below.
                    Step::Paced => {}
                }
            }
            let Some(rate) = current.calls_per_second(per_call) else {
                break;
            };
            let turn = async {
                if let Some(at) = current.not_before {
                    tokio::time::sleep_until(at.into()).await;
                }
                self.limiter
                    .acquire(model, Rate::per_second(rate), cost)
                    .await;
            };
            tokio::select! {
                // A turn already granted is used, even if the pace changed at the same time.
                biased;
                () = turn => break,
                // The sender lives as long as `self`, so `changed` does not fail; if it did,
                // the branch would be disabled and the turn awaited at the old pace.
                Ok(()) = pace.changed() => {}
            }
        }
        Permit { sent: now() }
    }

    /// One try at a slow start's gate for a call to `model`: this process's, or with
    /// `--redis` the one every process of the account shares (`shared::ramp`).
    async fn ramp_step(
        &self,
        model: &str,
        cost: Cost,
        current: &Pace,
        pace: &mut watch::Receiver<Pace>,
    ) -> Step {
        // A token cut's pause holds a ramp's calls too.
        if let Some(at) = current.not_before.filter(|at| *at > now()) {
            wait_or_change(at.into(), pace).await;
            return Step::Again;
        }
        let shared = self.shared.as_ref().and_then(|shared| {
            self.with_model(model, |m| m.aimd.shared_rule())
                .map(|rule| (shared, rule))
        });
        if let Some((shared, rule)) = shared {
            return match shared.ramp_turn(model, rule).await {
                Ok(RampTurn::Go { count }) => {
                    self.with_model(model, |m| m.aimd.granted(now(), count));
                    self.token_turn(model, cost, pace).await;
                    Step::Went
                }
                Ok(RampTurn::Wait(wait)) => {
                    wait_or_change(tokio::time::Instant::now() + wait, pace).await;
                    Step::Again
                }
                // Fail closed, as the shared limiter does: the run is stopping, and its
                // callers race this wait against that stop.
                Err(_) => std::future::pending().await,
            };
        }
        match self.with_model(model, |m| m.aimd.turn(now())) {
            Turn::Now => {
                self.token_turn(model, cost, pace).await;
                Step::Went
            }
            Turn::At(at) => {
                wait_or_change(at.into(), pace).await;
                Step::Again
            }
            Turn::Paced => Step::Paced,
        }
    }

    /// After a slow start's gate let a call go: a token pace (`--model-tpm`, or learnt from
    /// a token 429) still spaces it. Waited at the token pace in force, and again at the new
    /// one whenever it changes, as [`Pacing::acquire`] does: calls that passed the gate before
    /// a token cut must not go out at the pace before it (measured: 27 token 429s in a run
    /// where 7 is usual).
    async fn token_turn(&self, model: &str, cost: Cost, pace: &mut watch::Receiver<Pace>) {
        loop {
            let current = *pace.borrow_and_update();
            let per_call = self.with_model(model, |m| m.tokens_per_call);
            let Some(rate) = current.by_tokens(per_call) else {
                return;
            };
            tokio::select! {
                biased;
                () = self.limiter.acquire(model, Rate::per_second(rate), cost) => return,
                Ok(()) = pace.changed() => {}
            }
        }
    }

    /// Teaches the pace of `model` the outcome of a call sent at `sent` (its permit's
    /// [`Permit::sent`]).
    pub fn settle(&self, model: &str, sent: Instant, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.on_success(model, sent),
            Outcome::Throttled(scope) => self.on_throttled(model, sent, scope),
            Outcome::Failed => {}
        }
    }

    /// A call to `model` sent at `sent` succeeded.
    fn on_success(&self, model: &str, sent: Instant) {
        let proposal = self.with_model(model, |m| {
            let now = now();
            let change = m.aimd.on_success(sent, now)?;
            tracing::debug!(model, rate = change.rate, "model pace set");
            m.apply(change, now);
            Some((m.epoch, m.proposal(change)))
        });
        if let Some((epoch, change)) = proposal {
            self.propose(model, epoch, change);
        }
    }

    /// A call to `model` sent at `sent` was answered 429.
    ///
    /// A service that counts refused calls in its window keeps refusing while calls arrive
    /// at anything near the limit: at 90% of it, a full window drains by only 10% a second,
    /// so a cut alone leaves half a second of 429s. A short pause of this model lets the
    /// window drain instead: one window after the first 429 (which follows the unpaced
    /// start's burst), [`aimd::DRAIN`] after a later one. Other models are not paused.
    fn on_throttled(&self, model: &str, sent: Instant, scope: ThrottleScope) {
        let proposal = self.with_model(model, |m| {
            let now = now();
            let change = match scope {
                ThrottleScope::Burst if m.aimd.ramping() => {
                    tracing::debug!(model, "growth-rate 429: the slow start ramps more slowly");
                    m.aimd.on_burst(sent, now)
                }
                ThrottleScope::Burst => m.aimd.on_burst(sent, now),
                // A token limit: the token pace is cut, the request pace left as it is
                // (cutting both would take two cuts' worth off the rate).
                ThrottleScope::Tokens => {
                    if let Some(change) = m.tokens.on_throttled(sent, now) {
                        tracing::debug!(model, tokens = change.rate, "model token pace set");
                        m.apply_tokens(change, now);
                    }
                    None
                }
                _ => m.aimd.on_throttled(sent, now),
            }?;
            tracing::debug!(
                model,
                rate = change.rate,
                scope = scope.as_str(),
                "model throttled: pacing calls"
            );
            m.apply(change, now);
            Some((m.epoch, m.proposal(change)))
        });
        if let Some((epoch, change)) = proposal {
            self.propose(model, epoch, change);
        }
    }

    /// Teaches `model`'s token pacing the tokens an answered call used: its tokens per call,
    /// and its token pace (which grows while in use).
    pub fn learn_tokens(&self, model: &str, tokens: u64) {
        if tokens == 0 {
            return;
        }
        self.with_model(model, |m| {
            let now = now();
            if let Some(change) = m.tokens.on_answer(tokens, now) {
                m.apply_tokens(change, now);
            }
            let tokens = tokens as f64;
            m.tokens_per_call = if m.tokens_per_call == 0.0 {
                tokens
            } else {
                m.tokens_per_call + TOKENS_WEIGHT * (tokens - m.tokens_per_call)
            };
        });
    }

    /// The current rate of `model`, if paced.
    #[cfg(test)]
    fn rate(&self, model: &str) -> Option<f64> {
        self.with_model(model, |m| m.aimd.rate())
    }

    /// The paced models and their rates when the run ended, for the summary.
    pub fn rates(&self) -> std::collections::BTreeMap<String, f64> {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        models
            .iter()
            .filter_map(|(name, m)| m.aimd.paced_rate().map(|r| (name.clone(), r)))
            .collect()
    }

    /// The models whose tokens were paced (after a token 429, or by `--model-tpm`) and
    /// their token rates (tokens a second) when the run ended, for the summary.
    pub fn token_rates(&self) -> std::collections::BTreeMap<String, f64> {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        models
            .iter()
            .filter_map(|(name, m)| m.tokens.rate().map(|r| (name.clone(), r)))
            .collect()
    }
}

/// What became of one try at a slow start's gate.
enum Step {
    /// The call goes.
    Went,
    /// Waited (for a turn, a pause, or a change of pace): try again.
    Again,
    /// Not ramping any more: paced at the rate.
    Paced,
}

/// Waits until `at`, or until the pace changes, whichever comes first.
async fn wait_or_change(at: tokio::time::Instant, pace: &mut watch::Receiver<Pace>) {
    tokio::select! {
        biased;
        () = tokio::time::sleep_until(at) => {}
        Ok(()) = pace.changed() => {}
    }
}

/// Takes in what Redis holds for `model` (`--redis`): the number of processes pacing it,
/// and a rate another process set since this one last looked, adopted as if decided here.
fn reconcile(models: &Mutex<HashMap<String, Model>>, model: &str, seen: Seen) {
    let mut models = models.lock().unwrap_or_else(|p| p.into_inner());
    let Some(m) = models.get_mut(model) else {
        return;
    };
    m.aimd.set_scale(seen.live);
    if seen.epoch <= m.epoch {
        return;
    }
    m.epoch = seen.epoch;
    // Our own proposal, stored: applied here already.
    if seen.changed {
        return;
    }
    if let Some(rate) = seen.rate
        && m.aimd.rate() != Some(rate)
    {
        let now = now();
        let change = m.aimd.adopt(rate, seen.pause, seen.ceiling, now);
        tracing::debug!(model, rate = change.rate, "model pace adopted from Redis");
        m.apply(change, now);
    }
}

#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod tests;
