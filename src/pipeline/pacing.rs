//! Adaptive pacing of model calls, per model (one run = one key = one account, so per model
//! is per (account, model), which is how DashScope counts its limits).
//!
//! The service does not say a model's rate limit; it answers 429 past it. A model starts
//! unpaced. Its first 429 sets a rate from the calls that succeeded in the last second, and
//! from then on AIMD steers it: each 429 cuts the rate by [`DECREASE`] (at most once per
//! second, since one burst over the limit brings many 429s at once), and each second without
//! one adds [`increase_step`]. A governor limiter spaces the calls evenly at that rate.
//!
//! Each model has its own state, so one throttled model never slows another, and nothing
//! pauses the whole run (unlike a global back-off after any 429). `--model-rps` sets a known
//! limit up front; AIMD then stays at or below it.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Multiplicative decrease on a 429.
pub const DECREASE: f64 = 0.9;
/// Below this share of the last rate that met a 429, the rate climbs quickly; above it, it
/// probes slowly. Services that count refused calls in their window (the strict reading)
/// refuse *everything* while a client stays over the limit, so overshooting is expensive
/// and the climb must slow down where the limit was last found.
const NEAR_CEILING: f64 = 0.95;
/// After a cut, how long the model sends nothing: two tenths of a window empty a window
/// that was at the limit by 20%, more than the 10% cut needs to stay under it.
const DRAIN: Duration = Duration::from_millis(200);
/// The floor: a model is never paced below one call every ten seconds.
const MIN_RATE: f64 = 0.1;
/// How long after a change the rate is left alone: one of the service's counting windows,
/// so the effect of the last change is seen before the next one.
const SETTLE: Duration = Duration::from_secs(1);

/// The rate after a quiet second: quickly back towards the last limit found, then a slow
/// probe of 0.5% a second past it (the limit may have been raised).
pub fn next_rate(rate: f64, ceiling: Option<f64>) -> f64 {
    match ceiling {
        Some(c) if rate >= c * NEAR_CEILING => rate * 1.005,
        // Below the limit last found: half the way back up each second, stopping where the
        // slow probe begins.
        Some(c) => (rate + ((c * NEAR_CEILING - rate) / 2.0).max(0.5)).min(c * NEAR_CEILING),
        None => rate + (rate * 0.05).max(0.5),
    }
}

/// The AIMD state of one model, free of clocks and limiters so it can be tested alone.
#[derive(Debug, Clone)]
pub struct Aimd {
    /// Calls per second; `None` while the model has not been throttled.
    rate: Option<f64>,
    /// A rate the user gave (`--model-rps`): the start, and a ceiling.
    cap: Option<f64>,
    /// The rate at which the last 429 came: where the limit was last found.
    ceiling: Option<f64>,
    last_increase: Instant,
    /// `None` until the first cut.
    last_decrease: Option<Instant>,
    /// Set from the first 429 until the estimate of the limit is made, one window later.
    first_429: Option<Instant>,
    /// Successes of calls sent in the window before the first 429: the limit, as seen.
    burst_successes: u32,
    /// Send times of the last second's successes, kept only while unpaced, so that the
    /// ones answered before the first 429 count towards the estimate too.
    recent: VecDeque<Instant>,
}

impl Aimd {
    pub fn new(cap: Option<f64>, now: Instant) -> Self {
        Self {
            rate: cap,
            cap,
            ceiling: None,
            last_increase: now,
            last_decrease: None,
            first_429: None,
            burst_successes: 0,
            recent: VecDeque::new(),
        }
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// A call sent at `sent` succeeded. Returns the new rate if it changed.
    pub fn on_success(&mut self, sent: Instant, now: Instant) -> Option<f64> {
        if let Some(first) = self.first_429 {
            if sent <= first && first.saturating_duration_since(sent) < SETTLE {
                self.burst_successes = self.burst_successes.saturating_add(1);
            }
            if now.saturating_duration_since(first) < SETTLE {
                return None;
            }
            // One window after the first 429 every call of the burst has answered: the
            // ones that got through are the limit, as far as this client can see it.
            self.first_429 = None;
            let limit = f64::from(self.burst_successes.max(1));
            self.ceiling = Some(limit);
            let next = self.capped(limit * NEAR_CEILING);
            self.rate = Some(next);
            self.last_increase = now;
            return Some(next);
        }
        let Some(rate) = self.rate else {
            self.recent.push_back(sent);
            while self
                .recent
                .front()
                .is_some_and(|t| sent.saturating_duration_since(*t) >= SETTLE)
            {
                self.recent.pop_front();
            }
            return None;
        };
        let since = |t: Instant| now.saturating_duration_since(t);
        if since(self.last_increase) < SETTLE
            || self.last_decrease.is_some_and(|t| since(t) < SETTLE)
        {
            return None;
        }
        let next = self.capped(next_rate(rate, self.ceiling));
        self.last_increase = now;
        (next != rate).then(|| {
            self.rate = Some(next);
            next
        })
    }

    fn capped(&self, rate: f64) -> f64 {
        self.cap.map_or(rate, |cap| rate.min(cap)).max(MIN_RATE)
    }

    /// The service answered 429 to a call sent at `sent`. Returns the new rate if it changed.
    ///
    /// A 429 to a call sent less than [`SETTLE`] after the last *decrease* says nothing about
    /// the new rate: the service's window still holds calls sent at the old one. Ignoring
    /// those keeps one burst over the limit from cutting the rate again and again. A 429
    /// after an *increase* means the increase overshot, and is acted on at once.
    pub fn on_throttled(&mut self, sent: Instant, now: Instant) -> Option<f64> {
        let (ceiling, next) = match self.rate {
            // First 429, after an unpaced start: the limit is not known yet. Pace gently
            // while [`Self::on_success`] counts what got through, one window from now.
            None => {
                self.first_429 = Some(now);
                self.burst_successes = self
                    .recent
                    .drain(..)
                    .filter(|t| now.saturating_duration_since(*t) < SETTLE)
                    .count() as u32;
                self.recent = VecDeque::new(); // give the memory back: paced from now on
                let guess = f64::from(self.burst_successes.max(1));
                (guess, guess * DECREASE)
            }
            Some(_) if self.first_429.is_some() => return None,
            Some(_)
                if self
                    .last_decrease
                    .is_some_and(|t| sent.saturating_duration_since(t) < SETTLE) =>
            {
                return None;
            }
            Some(rate) => (rate, rate * DECREASE),
        };
        let next = next.max(MIN_RATE);
        self.ceiling = Some(ceiling);
        self.last_decrease = Some(now);
        self.rate = Some(next);
        Some(next)
    }
}

/// One model's pacer: its AIMD state and the limiter that enforces the current rate.
///
/// governor's quota is fixed per limiter, so a rate change installs a new limiter. Callers
/// already waiting on the old one must not then go out at the old pace *as well as* the new
/// callers at the new one (two limiters at once would double the rate): `generation` lets a
/// caller that got through an old limiter notice the change and queue on the new one.
struct Model {
    aimd: Aimd,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    generation: u64,
    /// No call before this instant: set after the first 429, see [`Pacing::on_throttled`].
    not_before: Option<Instant>,
}

impl Model {
    fn set_rate(&mut self, rate: f64) {
        self.limiter = Some(limiter(rate));
        self.generation += 1;
    }
}

/// The pacers of all models of a run.
pub struct Pacing {
    cap: Option<f64>,
    /// Locked briefly per call to clone the limiter's Arc or to record an outcome; never held
    /// across an await.
    models: Mutex<HashMap<String, Model>>,
}

impl Pacing {
    /// `model_rps`: a known per-model limit, or `None` to discover it from 429s.
    pub fn new(model_rps: Option<f64>) -> Self {
        Self {
            cap: model_rps.filter(|r| *r > 0.0),
            models: Mutex::new(HashMap::new()),
        }
    }

    fn with_model<T>(&self, model: &str, f: impl FnOnce(&mut Model) -> T) -> T {
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if !models.contains_key(model) {
            let aimd = Aimd::new(self.cap, Instant::now());
            let limiter = aimd.rate().map(limiter);
            models.insert(
                model.to_owned(),
                Model {
                    aimd,
                    limiter,
                    generation: 0,
                    not_before: None,
                },
            );
        }
        let entry = models.get_mut(model).expect("inserted above");
        f(entry)
    }

    /// Waits until `model` may be called. Free while the model has never been throttled.
    pub async fn until_ready(&self, model: &str) {
        loop {
            let (generation, limiter, not_before) =
                self.with_model(model, |m| (m.generation, m.limiter.clone(), m.not_before));
            let Some(limiter) = limiter else {
                return;
            };
            if let Some(at) = not_before {
                tokio::time::sleep_until(at.into()).await;
            }
            limiter.until_ready().await;
            if self.with_model(model, |m| m.generation) == generation {
                return;
            }
        }
    }

    /// A call to `model` sent at `sent` succeeded.
    pub fn on_success(&self, model: &str, sent: Instant) {
        self.with_model(model, |m| {
            if let Some(rate) = m.aimd.on_success(sent, Instant::now()) {
                tracing::debug!(model, rate, "model pace raised");
                m.set_rate(rate);
            }
        });
    }

    /// A call to `model` sent at `sent` was answered 429.
    ///
    /// A service that counts refused calls in its window keeps refusing while calls arrive
    /// at anything near the limit: at 90% of it, a full window drains by only 10% a second,
    /// so a cut alone leaves half a second of 429s. A short pause of this model lets the
    /// window drain instead: one window after the first 429 (which follows the unpaced
    /// start's burst), [`DRAIN`] after a later one. Other models are not paused.
    pub fn on_throttled(&self, model: &str, sent: Instant) {
        self.with_model(model, |m| {
            let first = m.aimd.rate().is_none();
            let now = Instant::now();
            if let Some(rate) = m.aimd.on_throttled(sent, now) {
                tracing::debug!(model, rate, "model throttled: pacing calls");
                m.set_rate(rate);
                m.not_before = Some(now + if first { SETTLE } else { DRAIN });
            }
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
            .filter_map(|(name, m)| m.aimd.rate().map(|r| (name.clone(), r)))
            .collect()
    }
}

/// Evenly spaced calls at `rate` per second, with no burst: a burst is exactly what a
/// per-second window on the service side punishes.
fn limiter(rate: f64) -> Arc<DefaultDirectRateLimiter> {
    let period = Duration::from_secs_f64(1.0 / rate.max(MIN_RATE));
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(quota))
}

#[cfg(test)]
mod tests;
