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

use std::collections::HashMap;
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
/// The floor: a model is never paced below one call every ten seconds.
const MIN_RATE: f64 = 0.1;
/// How long after a change the rate is left alone: one of the service's counting windows,
/// so the effect of the last change is seen before the next one.
const SETTLE: Duration = Duration::from_secs(1);

/// The rate after a quiet second: a few percent more (never less than half a call per
/// second, so a low rate does not take minutes to recover), and a slow probe of 1% once the
/// rate is near the last limit found.
pub fn next_rate(rate: f64, ceiling: Option<f64>) -> f64 {
    match ceiling {
        Some(c) if rate >= c * NEAR_CEILING => rate * 1.01,
        // The fast climb stops where the slow probe begins.
        Some(c) => (rate + (rate * 0.05).max(0.5)).min(c * NEAR_CEILING),
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
    /// Successes in the current and the previous one-second bucket.
    bucket_start: Instant,
    this_bucket: u32,
    last_bucket: u32,
}

impl Aimd {
    pub fn new(cap: Option<f64>, now: Instant) -> Self {
        Self {
            rate: cap,
            cap,
            ceiling: None,
            last_increase: now,
            last_decrease: None,
            bucket_start: now,
            this_bucket: 0,
            last_bucket: 0,
        }
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.bucket_start);
        if elapsed >= Duration::from_secs(2) {
            self.last_bucket = 0;
            self.this_bucket = 0;
            self.bucket_start = now;
        } else if elapsed >= Duration::from_secs(1) {
            self.last_bucket = self.this_bucket;
            self.this_bucket = 0;
            self.bucket_start += Duration::from_secs(1);
        }
    }

    /// A call succeeded. Returns the new rate if it changed.
    pub fn on_success(&mut self, now: Instant) -> Option<f64> {
        self.roll(now);
        self.this_bucket = self.this_bucket.saturating_add(1);
        let rate = self.rate?;
        let since = |t: Instant| now.saturating_duration_since(t);
        if since(self.last_increase) < SETTLE || self.last_decrease.is_some_and(|t| since(t) < SETTLE)
        {
            return None;
        }
        let mut next = next_rate(rate, self.ceiling);
        if let Some(cap) = self.cap {
            next = next.min(cap);
        }
        self.last_increase = now;
        (next != rate).then(|| {
            self.rate = Some(next);
            next
        })
    }

    /// The service answered 429 to a call sent at `sent`. Returns the new rate if it changed.
    ///
    /// A 429 to a call sent less than [`SETTLE`] after the last *decrease* says nothing about
    /// the new rate: the service's window still holds calls sent at the old one. Ignoring
    /// those keeps one burst over the limit from cutting the rate again and again. A 429
    /// after an *increase* means the increase overshot, and is acted on at once.
    pub fn on_throttled(&mut self, sent: Instant, now: Instant) -> Option<f64> {
        self.roll(now);
        let (ceiling, next) = match self.rate {
            // First 429: what got through in the last second is the best guess of the limit.
            None => {
                let got_through = f64::from(self.last_bucket.max(self.this_bucket)).max(1.0);
                (got_through, got_through * DECREASE)
            }
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

    pub fn on_success(&self, model: &str) {
        self.with_model(model, |m| {
            if let Some(rate) = m.aimd.on_success(Instant::now()) {
                tracing::debug!(model, rate, "model pace raised");
                m.set_rate(rate);
            }
        });
    }

    /// A call to `model` sent at `sent` was answered 429.
    ///
    /// A service that counts refused calls in its window keeps refusing while calls arrive
    /// at anything near the limit, so a cut alone leaves a tail of 429s. Two things let the
    /// window drain instead. After the first 429, which follows the unpaced start's burst,
    /// this model sends nothing for one window. After a later one, the new limiter starts
    /// empty, which skips one slot: enough, at a rate just under the limit, for the window to
    /// drop below it.
    pub fn on_throttled(&self, model: &str, sent: Instant) {
        self.with_model(model, |m| {
            let first = m.aimd.rate().is_none();
            let now = Instant::now();
            if let Some(rate) = m.aimd.on_throttled(sent, now) {
                tracing::debug!(model, rate, "model throttled: pacing calls");
                m.set_rate(rate);
                if first {
                    m.not_before = Some(now + SETTLE);
                } else if let Some(limiter) = &m.limiter {
                    let _ = limiter.check();
                }
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
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn unthrottled_models_stay_unpaced() {
        let t0 = Instant::now();
        let mut a = Aimd::new(None, t0);
        for i in 0..100 {
            assert_eq!(a.on_success(t0 + secs(i as f64 * 0.05)), None);
        }
        assert_eq!(a.rate(), None);
    }

    #[test]
    fn the_first_429_starts_from_what_got_through() {
        let t0 = Instant::now();
        let mut a = Aimd::new(None, t0);
        for i in 0..20 {
            a.on_success(t0 + secs(0.1 + i as f64 * 0.01));
        }
        let rate = a.on_throttled(t0 + secs(0.4), t0 + secs(0.5)).unwrap();
        assert!((rate - 20.0 * DECREASE).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn a_burst_of_429s_cuts_once_per_second() {
        let t0 = Instant::now();
        let mut a = Aimd::new(Some(40.0), t0);
        let first = a.on_throttled(t0 + secs(1.4), t0 + secs(1.5)).unwrap();
        assert!((first - 40.0 * DECREASE).abs() < 1e-9);
        for i in 0..20 {
            let at = t0 + secs(1.5 + i as f64 * 0.04);
            // Sent before the cut, or too soon after it to reflect the new rate.
            assert_eq!(a.on_throttled(at - secs(0.1), at), None);
        }
        assert_eq!(a.rate(), Some(first));
        assert!(a.on_throttled(t0 + secs(2.6), t0 + secs(2.7)).unwrap() < first);
    }

    #[test]
    fn an_overshooting_increase_is_cut_at_once_and_then_probes_slowly() {
        let t0 = Instant::now();
        let mut a = Aimd::new(Some(100.0), t0);
        a.on_throttled(t0, t0); // limit found at 100: rate 90
        let mut t = 0.0;
        let mut rates = Vec::new();
        for _ in 0..12 {
            t += 1.01;
            a.on_success(t0 + secs(t));
            rates.push(a.rate().unwrap());
        }
        // Fast up to 95% of the limit, then 1% steps.
        assert!(rates[0] > 90.0 && rates[0] <= 95.0, "{rates:?}");
        let last = rates.len() - 1;
        assert!(rates[last] - rates[last - 1] <= rates[last - 1] * 0.011, "{rates:?}");
        // The increase that overshoots is answered by a 429 sent right after it.
        let at = t0 + secs(t + 0.1);
        let cut = a.on_throttled(at, at).expect("acted on at once");
        assert!((cut - rates[last] * DECREASE).abs() < 1e-9);
    }

    #[test]
    fn quiet_seconds_raise_the_rate_up_to_the_cap() {
        let t0 = Instant::now();
        let mut a = Aimd::new(Some(20.0), t0);
        a.on_throttled(t0 + secs(1.0), t0 + secs(1.0));
        let low = a.rate().unwrap();
        let mut t = 1.0;
        for _ in 0..100 {
            t += 1.01;
            a.on_success(t0 + secs(t));
        }
        let high = a.rate().unwrap();
        assert!(high > low);
        assert!(high <= 20.0, "never above the user's limit: {high}");
    }

    #[test]
    fn models_are_paced_independently() {
        let pacing = Pacing::new(None);
        pacing.on_success("a");
        pacing.on_throttled("a", Instant::now());
        assert!(pacing.rate("a").is_some());
        assert_eq!(pacing.rate("b"), None, "b never saw a 429");
    }

    #[test]
    fn a_throttled_model_gets_a_limiter_without_burst() {
        let pacing = Pacing::new(None);
        pacing.on_throttled("a", Instant::now());
        let limiter = pacing.with_model("a", |m| m.limiter.clone()).unwrap();
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err(), "the next call must wait its turn");
        assert!(pacing.with_model("b", |m| m.limiter.is_none()));
    }
}
