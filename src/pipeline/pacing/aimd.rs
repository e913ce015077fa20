//! The pacing decision of one model: an AIMD state machine, free of clocks and limiters
//! (every instant is passed in), so a unit test drives it with made-up instants.
//!
//! The service does not say a model's rate limit; it answers 429 past it. But not every 429
//! is about the rate: a busy service also refuses calls in short bursts at any pace. So a
//! 429 is taken as a hypothesis about a limit, and the second after each decision tests it:
//!
//! - A model starts unpaced. Its first 429 pauses it for one window, then the calls sent in
//!   the second before it are counted. If at least [`MIN_CALLS`] went out and a good share
//!   of them were refused ([`LIMIT_SHARE`]), the burst met a limit, and what got through is
//!   that limit (the *ceiling*). Otherwise a fraction of a second with a few refusals says
//!   nothing about a limit: what got through only sets a starting pace, which then doubles
//!   each second until a limit is really met.
//! - A later 429 cuts the rate by [`DECREASE`], at most once a window. When it answers a
//!   call sent after an increase, the increase overshot: the rate goes back to just under
//!   the one before it, so that one cut is enough however large the step was.
//! - The second after a cut is a check. If the lower rate ended the 429s (or most of them),
//!   the cut found a limit. If calls are still refused as often, the 429s were not about
//!   the rate: the ceiling is dropped. What is still refused is learnt as noise, which
//!   429s must then clearly exceed before they cut the rate again.
//! - Each second without a cut raises the rate: half-way to just under the ceiling, then a
//!   slow probe past it. [`PROBE_AFTER`] the last cut the ceiling decays: the probe's step
//!   doubles each second up to [`GROWTH`], so a storm of 429s costs seconds, not minutes.
//!
//! The parts: [`first`] judges a model's first limit, [`check`] the second after each
//! decision (and the noise it learns), [`counts`] keeps what the service counted, and
//! [`shared`] what a pace shared with other processes (`--redis`) adds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ramp::Ramp;
use super::sample::{LastSecond, Tally};

/// Multiplicative decrease on a 429.
pub const DECREASE: f64 = 0.9;
/// Below this share of the ceiling the rate climbs quickly; above it, it holds, then
/// probes slowly. Services that count refused calls in their window (the strict reading)
/// refuse *everything* while a client stays over the limit, so overshooting is expensive
/// and the climb must stop where the limit was last found. The ceiling is the count the
/// service itself made (our calls in the second before the refused one), so evenly spaced
/// calls at 99% of it leave a tenth of a call's interval free per call for jitter, where
/// 0.97 cost issue 11's request-limit run 0.6 rows/s of its 20.
const NEAR_CEILING: f64 = 0.995;
/// After a cut, how long the model sends nothing: two tenths of a window empty a window
/// that was at the limit by 20%, more than the 10% cut needs to stay under it.
pub(super) const DRAIN: Duration = Duration::from_millis(200);
/// The floor. A storm of 429s cuts the rate once a second for as long as it lasts; the
/// floor bounds how far, and so how long the climb back takes: at [`GROWTH`] a second, 20 s
/// from 1/s to 100/s, 10 s more from the old floor of 0.1/s. Below about 5/s a check has
/// too few calls ([`MIN_CHECK_CALLS`]) to clear a ceiling, so a lower floor would also
/// leave the rate to [`FORGET`] alone. The smallest published per-model limits are
/// hundreds of calls a minute, several times this; under a limit below it, the calls over
/// it get 429 and the retry back-off (with its `Retry-After`) spaces them out. Under a
/// `--model-rps` below this, the floor is a tenth of that.
const MIN_RATE: f64 = 1.0;
/// How long after a change the rate is left alone: one of the service's counting windows,
/// so the effect of the last change is seen before the next one.
pub(super) const SETTLE: Duration = Duration::from_secs(1);
/// How long after the last cut the rate holds at [`NEAR_CEILING`] of the ceiling before it
/// probes past it. From then on the ceiling decays: the probe's step starts at 0.5% and
/// doubles each second up to [`GROWTH`], since the limit may have been raised, or the 429s
/// that set it were a passing storm. At a real limit the probe crosses it while the step is
/// still a few percent, which costs a few 429s once in about nine seconds (a probe of 0.5%
/// a second from the cut on crossed a measured limit every three to four); a ceiling left
/// by a storm is climbed past within seconds after it.
const PROBE_AFTER: Duration = Duration::from_secs(6);
/// A probe this far past its ceiling that meets a 429 has found the limit where the
/// ceiling said: the rate goes back under it rather than taking the AIMD cut. Past it, the
/// probe has climbed into what the ceiling does not describe.
const PROBE_NEAR: f64 = 1.05;
/// Once the probe's step reaches [`GROWTH`], the ceiling is forgotten.
const FORGET: Duration = Duration::from_secs(12);
/// Growth a second with no ceiling once a limit has been met in this run. An overshoot
/// costs one cut, from the rate before the step, and the 429s of the tenth of a second or
/// so before the first 429 comes back.
const GROWTH: f64 = 1.25;
/// Growth a second while no limit has been met yet: a starting pace taken from a small
/// sample is likely far too low, and doubling reaches any real rate within seconds.
const SLOW_START: f64 = 2.0;
/// Calls in a slow start's first second (issue 11; see [`Ramp`]): a 429 at no more calls
/// than this in the second before it is taken for noise.
pub const START_RATE: f64 = super::ramp::FLOOR;
/// The slowest ramp a growth-rate 429 leaves: each one shortens the step of the doubling by
/// a quarter (2, 1.75, 1.56, ...), down to this.
const MIN_RAMP: f64 = 1.1;
/// What is left of the ramp's step after a growth-rate 429.
const RAMP_SLOWDOWN: f64 = 0.75;
/// The longest a slow start's first 429 (or a counted cut) pauses the model: one window,
/// after which it holds nothing sent before the pause. The pause is shorter when the calls
/// it knows of allow ([`Aimd::drained`]). Half a window was enough while the ramp at most
/// doubled a rate that held; the ramp's gate sends a window's allowance in its first half,
/// so more calls go past a limit before its first 429 comes back, and a strict limit counts
/// each of them (measured: a half-second cap left the check second refused, the ceiling
/// dropped, and 17% of a run's calls refused).
const FIRST_PAUSE: Duration = Duration::from_millis(1000);
/// How long a slow start's first limit holds before the first probe past it. That ceiling
/// is the service's own count, met by a ramp that met nothing before, and the check of the
/// second after it confirms it; as good as one a probe met again ([`MAX_HOLD`]). A run of a
/// few dozen seconds then never probes (measured: the probe twelve seconds in cost issue
/// 11's request-limit run 0.2 of its 19 rows/s). A ceiling a fault burst set is not left to
/// the probe: the check and the 429s at counts accepted before drop it (simulated: the same
/// calls over 24 seeds of fault bursts, 30 s each, with a hold of 12 s or of 60 s).
const FIRST_HOLD: Duration = MAX_HOLD;
/// Calls' intervals a model pauses after a lone 429 at a ceiling it holds under
/// ([`Aimd::jostled_at_ceiling`]): the refused call holds a place in a strict window for a
/// second, and the pause gives it back, with one to spare.
const JOSTLE_SLOTS: f64 = 2.0;
/// A second lone 429 at the ceiling this soon after the last says the margin under it is
/// too thin for the jitter of this network ([`Aimd::jostled`]).
const JOSTLE_MEMORY: Duration = Duration::from_secs(10);
/// Steps in which [`Aimd::drained`] looks for the end of a pause.
const PAUSE_STEP: Duration = Duration::from_millis(10);
/// The longest hold below a ceiling: each probe that meets the limit where it was found
/// doubles the hold from [`PROBE_AFTER`], up to this (a limit that stays put costs one
/// overshoot a minute, not one every ten seconds).
const MAX_HOLD: Duration = Duration::from_secs(60);
/// Calls a sample needs before its share of 429s means anything: a first burst before what
/// got through is taken for a limit, the last second before its share overrides a check.
const MIN_CALLS: u32 = 10;
/// Share of a first burst refused that says the burst met a limit. Fault bursts are a
/// tenth or two of the calls; an unpaced start at 64 calls against a limit of 20 is 69%.
const LIMIT_SHARE: f64 = 0.25;
/// Calls a check needs before its verdict counts.
const MIN_CHECK_CALLS: u32 = 5;
/// A share of refusals this high, unless the learnt noise explains it, is the rate's doing
/// (still over the limit).
const RATE_DRIVEN: f64 = 0.5;
/// Once noise is learnt, 429s cut the rate only past this multiple of it...
const NOISE_MARGIN: f64 = 2.0;
/// ...plus this many calls: noise comes in bursts (the emulator's are 3 to 7 calls), so a
/// few calls' worth above the average is still noise...
const NOISE_BURST: f64 = 3.0;
/// ...and only noise of at least this share is tolerated at all...
const NOISE_MIN: f64 = 0.02;
/// Share of the last second's calls refused at counts accepted before (and at least
/// [`NOISE_BURST`] of them) that says a ceiling is noise's: the emulator's fault bursts are
/// a fifth of the calls; 5% of calls refused at random stay well under it.
const STRAY_SHARE: f64 = 0.15;
/// ...and at most this share is ever taken for noise: a limit that refuses only the calls
/// over it (not the strict reading) refuses half the calls of a rate twice over it, and
/// that must still cut.
const NOISE_MAX: f64 = 0.25;
/// Weight of the checks so far in the noise estimate, at each new check. The estimate
/// pools their calls rather than averaging their shares: one second holds few calls, and
/// noise comes in bursts, so single seconds swing between none and half refused.
const NOISE_MEMORY: f64 = 0.8;
/// The last second's counts are a fair sample of the calls made once the model has sent
/// this long since its last pause (a cut's pause is [`DRAIN`], so the sample after it
/// qualifies).
const FULL_SPAN: Duration = Duration::from_millis(800);

/// A change of pace: the new rate, and how long to send nothing first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    pub rate: f64,
    pub pause: Duration,
}

/// The rate after a second without a cut: quickly back towards the last limit found (`c`,
/// found `age` ago), then a probe past it, slow at first; with no ceiling, multiplicatively.
///
/// `shared`: the pace is shared with other processes (`--redis`), which each time their
/// probes by their own clocks: the step stays at its first size, since steps that double by
/// each process's own count compounded (measured: 40 to 44 a second within a second and a
/// half, against a limit of 40).
fn next_rate(
    rate: f64,
    ceiling: Option<(f64, Duration)>,
    limit_seen: bool,
    ramp: f64,
    shared: bool,
) -> f64 {
    match ceiling {
        // Just under the limit last found: held there, then probed past.
        Some((c, age)) if age < PROBE_AFTER && rate >= c * NEAR_CEILING => rate,
        Some((c, age)) if rate >= c * NEAR_CEILING => {
            let doublings = if shared {
                0.0
            } else {
                (age - PROBE_AFTER).as_secs_f64()
            };
            rate * (1.0 + (0.005 * doublings.exp2()).min(GROWTH - 1.0))
        }
        // Below the limit last found: half the way back up each second, stopping where the
        // slow probe begins.
        Some((c, _)) => (rate + ((c * NEAR_CEILING - rate) / 2.0).max(0.5)).min(c * NEAR_CEILING),
        None if limit_seen => rate * GROWTH.min(ramp),
        None => rate * ramp,
    }
}

/// Where the limit was last found, and when.
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    rate: f64,
    at: Instant,
}

/// Outcomes of calls sent in `[from, to)`, counted as they answer.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
    tally: Tally,
}

/// The second after a decision, and the share of calls refused that led to it.
#[derive(Debug, Clone, Copy)]
struct Check {
    window: Window,
    before: f64,
}

impl Check {
    /// The second from `from` on.
    fn from(from: Instant, before: f64) -> Self {
        Self {
            window: Window {
                from,
                to: from + SETTLE,
                tally: Tally::default(),
            },
            before,
        }
    }

    /// The second that starts a window after a decision made at `at`.
    fn after(at: Instant, before: f64) -> Self {
        Self::from(at + SETTLE, before)
    }
}

/// The AIMD state of one model, free of clocks and limiters so it can be tested alone.
#[derive(Debug, Clone)]
pub struct Aimd {
    /// Calls per second; `None` while the model has not been throttled.
    rate: Option<f64>,
    /// A rate the user gave (`--model-rps`): the start, and a ceiling.
    cap: Option<f64>,
    /// Where 429s that the rate caused were last seen.
    ceiling: Option<Ceiling>,
    /// Whether the last verdict was a cut ending the 429s: a limit is real, so climbs past
    /// a forgotten ceiling are gentle.
    limit_seen: bool,
    /// Calls of the checks that were still refused at the lower rate, and all their calls,
    /// decayed by [`NOISE_MEMORY`] at each check: their ratio is the share of calls
    /// refused whatever the rate.
    noise_throttled: f64,
    noise_calls: f64,
    last_increase: Instant,
    /// The rate before the last increase: it was held a window without a cut.
    held: f64,
    /// `None` until the first cut.
    last_decrease: Option<Instant>,
    /// The end of the last pause: the counts of the last second are partial before
    /// [`FULL_SPAN`] after it.
    active_since: Instant,
    /// The first 429's burst, counted until one window after it: the calls sent in the
    /// window before it (`to` is the first 429, `from` a window earlier).
    first_burst: Option<Window>,
    /// The second after a decision, whose calls tell whether the 429s were about the rate.
    check: Option<Check>,
    /// Send times of the last second's successes, kept only while unpaced, so that the
    /// ones answered before the first 429 count towards its burst too.
    unpaced_ok: VecDeque<Instant>,
    answers: LastSecond,
    /// Send times of the answered calls of the last two seconds (bounded by twice the
    /// rate), whatever their outcome: the service counts each call in its window, so the
    /// calls sent in the second before a refused one are the count it refused at.
    sends: VecDeque<Instant>,
    /// The largest counts successful calls were accepted at ([`Self::window_before`] their
    /// send), with their send times, over the last two seconds: decreasing counts.
    accepted: VecDeque<(Instant, u32)>,
    /// When the 429s of the last second at counts accepted before were answered.
    stray: VecDeque<Instant>,
    /// No 429 of a request or token limit yet: the first one is judged as a first burst.
    fresh: bool,
    /// The rate before the first burst (0 if unpaced): it held without a 429, so the
    /// pace after a burst that met no limit starts no lower.
    before_burst: f64,
    /// Growth a second while no limit is met: [`SLOW_START`], less after growth-rate 429s.
    ramp: f64,
    /// How many processes share this model's pace (`--redis`, see `shared::pace`): the calls
    /// this one counts stand for this many times as many, when it judges throughput.
    scale: f64,
    /// How long the rate holds under a new ceiling before it probes past it.
    hold: Duration,
    /// A slow start's gate, until its first limit: calls go when it lets them, not at the
    /// rate.
    gate: Option<Ramp>,
    /// When the last lone 429 at the ceiling came ([`Aimd::jostled`]).
    jostled_at: Option<Instant>,
    /// With a gate shared through Redis: this process's grants of the last two seconds, each
    /// with the count of every process's calls in the second it closed (`shared::ramp`).
    grants: VecDeque<(Instant, u32)>,
}

/// When a call may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Not a slow start (any more): at the rate.
    Paced,
    /// Now: the ramp counted it.
    Now,
    /// Not before this instant: ask again then.
    At(Instant),
}

impl Aimd {
    pub fn new(cap: Option<f64>, now: Instant) -> Self {
        Self {
            rate: cap,
            cap,
            ceiling: None,
            limit_seen: false,
            noise_throttled: 0.0,
            noise_calls: 0.0,
            last_increase: now,
            held: cap.unwrap_or(MIN_RATE),
            last_decrease: None,
            active_since: now,
            first_burst: None,
            check: None,
            unpaced_ok: VecDeque::new(),
            answers: LastSecond::new(now),
            sends: VecDeque::new(),
            accepted: VecDeque::new(),
            stray: VecDeque::new(),
            fresh: cap.is_none(),
            before_burst: 0.0,
            ramp: SLOW_START,
            scale: 1.0,
            hold: PROBE_AFTER,
            gate: None,
            jostled_at: None,
            grants: VecDeque::new(),
        }
    }

    /// A model with no known limit, started slowly: its calls go when the [`Ramp`] lets them
    /// (at most [`START_RATE`] in the first second, then twice the second before, with a
    /// margin in time), until its first 429, which is judged as an unpaced start's first burst is
    /// (what got through in the second before it). Until then the rate is only a reference
    /// (the start rate) for the decisions that take one.
    pub fn slow_start(now: Instant) -> Self {
        Self {
            rate: Some(START_RATE),
            held: START_RATE,
            gate: Some(Ramp::default()),
            ..Self::new(None, now)
        }
    }

    /// Whether calls go through the slow start's gate rather than at the rate.
    pub fn ramping(&self) -> bool {
        self.gate.is_some()
    }

    /// A turn for one call at `now`.
    pub fn turn(&mut self, now: Instant) -> Turn {
        match self.gate.as_mut().map(|r| r.take(now)) {
            None => Turn::Paced,
            Some(None) => Turn::Now,
            Some(Some(at)) => Turn::At(at),
        }
    }

    /// The rate, if a 429 or `--model-rps` set it (a slow start's ramp is not a pace
    /// worth reporting).
    pub fn paced_rate(&self) -> Option<f64> {
        self.rate.filter(|_| self.cap.is_some() || !self.fresh)
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// A call sent at `sent` succeeded. Returns the change of pace, if any.
    pub fn on_success(&mut self, sent: Instant, now: Instant) -> Option<Change> {
        self.answers.add(now, false);
        self.record_send(sent);
        self.record_accepted(sent);
        if self.first_burst.is_some() {
            return self.count_first_burst(sent, now, false);
        }
        // A call accepted at a count well past a ceiling that no check has confirmed yet: a
        // limit refuses every call from its count on, so the 429 that set the ceiling was a
        // busy service's, and the climb goes on (measured: a fault burst met during a slow
        // start held `--fault-rate 0.2` under 23 calls a second for ten seconds). Counts are
        // this process's own, so not with a shared pace.
        if self.scale <= 1.0
            && !self.limit_seen
            && self
                .ceiling
                .is_some_and(|c| f64::from(self.window_before(sent)) >= c.rate + NOISE_BURST)
        {
            self.ceiling = None;
        }
        self.judge_check(sent, false);
        if self.fresh {
            // Successes of the last second, for the first burst (bounded by that second).
            self.unpaced_ok.push_back(sent);
            while self
                .unpaced_ok
                .front()
                .is_some_and(|t| sent.saturating_duration_since(*t) >= SETTLE)
            {
                self.unpaced_ok.pop_front();
            }
        }
        // Unpaced (before an unpaced start's first 429), or ramping (the gate sets the
        // pace): nothing to change.
        let rate = self.rate.filter(|_| self.gate.is_none())?;
        // A shared pace keeps its ceiling and probes past it one small step a second (see
        // `next_rate`): forgotten, it would grow by a quarter a second, each process's
        // proposal on top of the others'.
        if self.scale <= 1.0
            && self
                .ceiling
                .is_some_and(|c| now.saturating_duration_since(c.at) >= FORGET)
        {
            self.ceiling = None;
        }
        let since = |t: Instant| now.saturating_duration_since(t);
        if since(self.last_increase) < SETTLE
            || self.last_decrease.is_some_and(|t| since(t) < SETTLE)
        {
            return None;
        }
        // A rate the model does not use is not binding: raising it proves nothing, and a
        // rate far above the calls made would take many cuts to come down to a limit.
        if self.load(now).is_some_and(|(_, calls)| calls < rate / 2.0) {
            return None;
        }
        let ceiling = self
            .ceiling
            .map(|c| (c.rate, now.saturating_duration_since(c.at)));
        // (A slow start climbs through its gate, and leaves it before it gets here.)
        let next = next_rate(rate, ceiling, self.limit_seen, self.ramp, self.scale > 1.0);
        let next = self.capped(next);
        self.last_increase = now;
        self.held = rate;
        (next != rate).then(|| {
            self.rate = Some(next);
            Change {
                rate: next,
                pause: Duration::ZERO,
            }
        })
    }

    /// The service answered 429 to a call sent at `sent`. Returns the change of pace, if any.
    ///
    /// A 429 to a call sent less than [`SETTLE`] after the last *decrease* says nothing about
    /// the new rate: the service's window still holds calls sent at the old one. Ignoring
    /// those keeps one burst over the limit from cutting the rate again and again. A 429
    /// after an *increase* means the increase overshot, and is acted on at once: back to
    /// just under the rate before it. A 429 within the learnt noise, or in the second that
    /// checks the last decision (unless most calls are refused), does not cut.
    pub fn on_throttled(&mut self, sent: Instant, now: Instant) -> Option<Change> {
        self.answers.add(now, true);
        self.record_send(sent);
        if self.first_burst.is_some() {
            return self.count_first_burst(sent, now, true);
        }
        self.judge_check(sent, true);
        // Refused at a count the service accepted a moment ago: no limit's doing, and no
        // reason to slow down (measured: such 429s held `--fault-rate 0.2` at under 20
        // calls a second for seconds). The open check still counts it as a 429.
        let most_refused = {
            let recent = self.answers.tally(now);
            recent.calls() >= MIN_CALLS && recent.share() >= RATE_DRIVEN
        };
        // Not with a shared pace (`--redis`): this process's counts are its share of the
        // pace's calls, which moves from second to second, so "under a count accepted a
        // moment ago" says nothing there (measured: taken as noise, 26% of 4 processes'
        // calls were refused).
        let alone = self.scale <= 1.0;
        if alone && self.rate.is_some() && !most_refused && self.accepted_before(sent) {
            self.stray.push_back(now);
            while self
                .stray
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= SETTLE)
            {
                self.stray.pop_front();
            }
            // Several in a second, and a good share of its calls, are a busy service's
            // burst, not the odd call that jitter pushed over a limit: the ceiling the rate is
            // held under says nothing about a limit either, if calls are refused as often
            // under it. Dropped, so the rate climbs on (a limit is met again at a count never
            // accepted, and cut as any). A few percent refused at random leave it.
            let stray = self.stray.len() as f64;
            let calls = f64::from(self.answers.tally(now).calls());
            if stray >= NOISE_BURST && stray >= STRAY_SHARE * calls && self.ceiling.is_some() {
                self.ceiling = None;
                self.limit_seen = false;
                self.hold = PROBE_AFTER;
            }
            return None;
        }
        if self.fresh && self.rate.is_some() {
            // At no more calls than the start rate sends, which is far under any published
            // limit: noise (measured: a ceiling taken from it held `--fault-rate 0.2` at 9
            // calls a second for seconds), unless most calls are refused (a limit under the
            // start rate). The ramp goes on.
            if self.shared_window_before(sent) <= START_RATE && !most_refused {
                return None;
            }
            return Some(self.first_limit(sent, now));
        }
        if self.fresh {
            return Some(self.start_first_burst(now));
        }
        // Unpaced (before an unpaced start's first 429): nothing to change.
        let rate = self.rate?;
        if self
            .last_decrease
            .is_some_and(|t| sent.saturating_duration_since(t) < SETTLE)
        {
            return None;
        }
        let recent = self.answers.tally(now);
        let sampled = recent.calls() >= MIN_CALLS;
        if self.tolerates(recent) {
            return None;
        }
        if let Some(check) = &self.check {
            // Counted into the open check, which decides once its second is over; unless
            // most of its calls are refused already: a cut that fell short.
            let so_far = check.window.tally;
            if so_far.calls() < MIN_CALLS || so_far.share() < RATE_DRIVEN {
                return None;
            }
        }
        // Sent before the last such pause and refused in its wake: the same jostle (the
        // refused call's place in a strict window may refuse the next call as well). Not
        // three in a second: that is a burst of a busy service's, for the cut and the check
        // after it to learn as noise (simulated: swallowed whole, such bursts kept a
        // ceiling they had set, and a 30-second run made 517 calls where it had made 3,559).
        if recent.throttled <= 2
            && self
                .jostled_at
                .is_some_and(|t| sent < t && now.saturating_duration_since(t) < SETTLE)
        {
            return None;
        }
        if alone && recent.throttled == 1 && self.jostled_at_ceiling(sent, rate) {
            return Some(self.jostled(rate, recent.share(), now));
        }
        // The share that led to the cut, for its check; unknown (0) from a small sample.
        let before = if sampled { recent.share() } else { 0.0 };
        // Answering a call sent after the last increase: the increase overshot, and the
        // rate before it, held a window without a 429, was under the limit. Back to that,
        // or just under the count refused if lower (the pause drains what the step
        // added); else the AIMD cut.
        let overshoot = sent >= self.last_increase && self.held < rate;
        // A probe past the ceiling met the limit: back to just under the ceiling, the rate
        // that held before the probe, not the AIMD cut (which then took three seconds to
        // climb back). The call refused may have been sent before the probe's latest step,
        // at an earlier one that was already over the limit.
        // Only while the probe is a few percent past the ceiling: a rate that climbed far
        // past it has met something else (or noise), and is cut as any.
        // And only under a ceiling a check confirmed: one taken from a burst's guess may lie
        // over the limit, and going back to it would never cut below it.
        // Alone: with a shared pace, the checks that confirm a ceiling judge this process's
        // share of the calls, too few to trust with this.
        let probe = self
            .ceiling
            .filter(|c| self.scale <= 1.0 && self.limit_seen && rate <= c.rate * PROBE_NEAR)
            .map(|c| c.rate * NEAR_CEILING)
            .filter(|near| rate > *near);
        let next = match probe {
            Some(near) => near.min(self.held),
            None if overshoot => self.held,
            None => rate * DECREASE,
        };
        Some(self.cut(next, overshoot || probe.is_some(), rate, before, sent, now))
    }

    /// A growth-rate 429 (`Throttling.BurstRate`, `limit_burst_rate`) to a call sent at
    /// `sent`: the rate grew too fast, not too far. The ramp slows (its step halves, to
    /// [`MIN_RAMP`]) and the rate goes back to the one before the step, which held; no
    /// ceiling is set and nothing pauses, since a pause would shrink the very window the
    /// service measures the next one's growth against.
    pub fn on_burst(&mut self, sent: Instant, now: Instant) -> Option<Change> {
        if let Some(ramp) = &mut self.gate {
            // The gate grew faster than the service allows: it grows more slowly from now.
            ramp.slow_down();
            self.answers.add(now, true);
            self.record_send(sent);
            return None;
        }
        let Some(rate) = self.rate.filter(|_| self.first_burst.is_none()) else {
            // Unpaced, or in a first burst: counted there like any 429.
            return self.on_throttled(sent, now);
        };
        self.answers.add(now, true);
        self.record_send(sent);
        self.judge_check(sent, true);
        if self
            .last_decrease
            .is_some_and(|t| sent.saturating_duration_since(t) < SETTLE)
        {
            return None;
        }
        self.ramp = (1.0 + (self.ramp - 1.0) * RAMP_SLOWDOWN).max(MIN_RAMP);
        let next = if sent >= self.last_increase && self.held < rate {
            self.held
        } else {
            rate * DECREASE
        };
        let next = self.capped(next);
        self.rate = Some(next);
        self.held = next;
        self.last_decrease = Some(now);
        Some(Change {
            rate: next,
            pause: Duration::ZERO,
        })
    }

    /// Successes and calls a second over the last second, once that is a fair sample; for
    /// all the processes that share the pace (see [`Aimd::set_scale`]).
    fn load(&self, now: Instant) -> Option<(f64, f64)> {
        (now.saturating_duration_since(self.active_since) >= FULL_SPAN).then(|| {
            let (ok, calls) = self.answers.per_second(now);
            (ok * self.scale, calls * self.scale)
        })
    }

    /// A decrease from `rate` to `next`. The limit lies at or under the rate, and, if the
    /// rate had just been raised, over the one before; what got through in the last second
    /// says where: the new ceiling.
    fn cut(
        &mut self,
        next: f64,
        overshoot: bool,
        rate: f64,
        share: f64,
        sent: Instant,
        now: Instant,
    ) -> Change {
        let below = if self.held < rate { self.held } else { rate };
        // The count the service refused at, once enough calls were answered to tell; else
        // the successes of the last second.
        let counted = Some(self.window_before(sent)).filter(|n| *n >= MIN_CALLS);
        let got = counted.map_or_else(|| self.load(now).map_or(rate, |(got, _)| got), f64::from);
        let found = got.clamp(below, rate);
        let next = self.capped(if overshoot {
            next.min(found * NEAR_CEILING)
        } else {
            next
        });
        // With the count known, the pause lasts until the window it left admits the new
        // pace; else a fixed drain.
        let pause = match counted {
            Some(_) => {
                let in_flight = rate * now.saturating_duration_since(sent).as_secs_f64();
                self.drained(found, next, in_flight, now)
            }
            None => DRAIN,
        };
        // A probe that met the limit where it was last found: the limit stays put, so the
        // next probe can wait longer. Any other cut starts the hold afresh.
        let confirmed = self.limit_seen
            && self
                .ceiling
                .is_some_and(|c| rate >= c.rate * NEAR_CEILING && (found - c.rate).abs() <= 1.0);
        self.hold = if confirmed {
            (self.hold * 2).min(MAX_HOLD)
        } else {
            PROBE_AFTER
        };
        self.ceiling = Some(Ceiling {
            rate: found,
            // The hold and the probe count from here ([`next_rate`]).
            at: now + (self.hold - PROBE_AFTER),
        });
        self.rate = Some(next);
        self.held = next;
        self.last_decrease = Some(now);
        self.active_since = now + pause;
        self.check = Some(Check::after(now, share));
        Change { rate: next, pause }
    }

    fn capped(&self, rate: f64) -> f64 {
        let floor = self.cap.map_or(MIN_RATE, |cap| (cap / 10.0).min(MIN_RATE));
        self.cap.map_or(rate, |cap| rate.min(cap)).max(floor)
    }
}

mod check;
mod counts;
mod first;
mod shared;

#[cfg(test)]
mod tests;
