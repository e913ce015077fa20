//! The AIMD decision driven with made-up instants, alone and in a simulated run.

use std::collections::VecDeque;

use super::*;
use crate::pipeline::pacing::aimd::Turn;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// An AIMD state whose unpaced start met a limit of `limit`: three times as many calls at
/// once, `limit` of them through. Returns it with the time the estimate was made.
fn paced(t0: Instant, limit: u32) -> (Aimd, Instant) {
    let mut a = Aimd::new(None, t0);
    for i in 0..limit {
        a.on_success(t0, t0 + secs(0.1 + f64::from(i) * 0.001));
    }
    for _ in limit..limit * 3 {
        a.on_throttled(t0, t0 + secs(0.2));
    }
    let at = t0 + secs(1.3);
    let change = a.on_success(at, at).expect("the estimate");
    assert!((change.rate - f64::from(limit) * NEAR_CEILING).abs() < 1e-9);
    (a, at)
}

#[test]
fn unthrottled_models_stay_unpaced() {
    let t0 = Instant::now();
    let mut a = Aimd::new(None, t0);
    for i in 0..100 {
        let t = t0 + secs(i as f64 * 0.05);
        assert_eq!(a.on_success(t, t), None);
    }
    assert_eq!(a.rate(), None);
}

#[test]
fn the_limit_is_estimated_from_what_got_through_the_first_burst() {
    let t0 = Instant::now();
    let mut a = Aimd::new(None, t0);
    // 64 calls at once; 20 get through. Some answers come before the first 429, some
    // after it: all 20 count.
    for i in 0..8 {
        a.on_success(t0, t0 + secs(0.05 + i as f64 * 0.001));
    }
    let first = a.on_throttled(t0, t0 + secs(0.06)).unwrap();
    assert_eq!(
        first.pause, SETTLE,
        "a window's pause while the burst answers"
    );
    assert!(first.rate < 20.0);
    for _ in 0..43 {
        assert_eq!(a.on_throttled(t0, t0 + secs(0.07)), None);
    }
    for i in 0..12 {
        assert_eq!(a.on_success(t0, t0 + secs(0.1 + i as f64 * 0.001)), None);
    }
    // One window later the estimate is made: just under the 20 that got through, and 20
    // is the ceiling.
    let rate = a.on_success(t0 + secs(1.07), t0 + secs(1.17)).unwrap().rate;
    assert!((rate - 20.0 * NEAR_CEILING).abs() < 1e-9, "{rate}");
    assert_eq!(a.ceiling.map(|c| c.rate), Some(20.0));
}

#[test]
fn a_few_429s_in_a_fraction_of_a_second_set_no_limit() {
    // The audit's case: a fault burst 10 ms into an unpaced run, after 25 quick successes.
    let t0 = Instant::now();
    let mut a = Aimd::new(None, t0);
    for i in 0..25 {
        let t = t0 + secs(i as f64 * 0.0004);
        a.on_success(t, t);
    }
    let at = t0 + secs(0.01);
    a.on_throttled(at, at).unwrap();
    for i in 0..4 {
        a.on_throttled(at, at + secs(0.001 * f64::from(i)));
    }
    for i in 0..60 {
        a.on_success(at, at + secs(0.002 + 0.0001 * f64::from(i)));
    }
    let start = a.on_success(at + secs(1.0), at + secs(1.01)).unwrap().rate;
    assert!(start >= 0.95 * 85.0 - 1e-9, "what got through: {start}");
    assert!(
        a.ceiling.is_none(),
        "no ceiling from 5 refusals in 90 calls"
    );
    // With no 429s, the pace doubles each second (calls keep up with it).
    let mut t = 1.01;
    let mut rate = start;
    for _ in 0..5 {
        for _ in 0..(rate as usize) {
            t += 1.0 / rate;
            let at = t0 + secs(t);
            if let Some(c) = a.on_success(at, at) {
                rate = c.rate;
            }
        }
    }
    assert!(rate >= start * 16.0, "{start} -> {rate}");
}

/// Successes at the pace `a` sets, from `from` to `to` seconds after `t0`: the calls keep up
/// with the pace, each answered at once. Returns the rate after each whole second.
fn succeed(a: &mut Aimd, t0: Instant, from: f64, to: f64) -> Vec<f64> {
    let mut t = from;
    let mut mark = from.floor() + 1.0;
    let mut rates = Vec::new();
    loop {
        t += 1.0 / a.rate().expect("paced");
        if t >= to {
            return rates;
        }
        let at = t0 + secs(t);
        a.on_success(at, at);
        while t >= mark {
            rates.push(a.rate().unwrap());
            mark += 1.0;
        }
    }
}

#[test]
fn a_burst_of_429s_cuts_once() {
    let t0 = Instant::now();
    let (mut a, at) = paced(t0, 20);
    // Held just under the ceiling, then a probe past it.
    let end = PROBE_AFTER.as_secs_f64() + 1.7;
    succeed(&mut a, at, 0.0, end);
    // The 429 answers a call sent after the last increase: the increase overshot, and the
    // rate goes back to the one before it, or just under the count refused.
    let before = a.held;
    assert!(
        before < a.rate().unwrap(),
        "the rate was raised since the estimate"
    );
    let at = at + secs(end);
    let cut = a.on_throttled(at, at).unwrap();
    // A probe that meets the limit found it where the ceiling (20) said: back under it.
    assert!(
        cut.rate <= before && cut.rate >= 20.0 * NEAR_CEILING - 1e-9,
        "{before} {cut:?}"
    );
    assert!(cut.pause <= FIRST_PAUSE, "{cut:?}");
    for i in 0..20 {
        let t = at + secs(i as f64 * 0.04);
        // Sent before the cut, or too soon after it to reflect the new rate.
        assert_eq!(a.on_throttled(t, t), None);
    }
    assert_eq!(a.rate(), Some(cut.rate));
    // Most calls refused a window later: the cut fell short, and the next one comes.
    let later = |i: u32| at + secs(1.0 + 0.01 * f64::from(i));
    for i in 0..MIN_CALLS - 1 {
        assert_eq!(a.on_throttled(later(i), later(i)), None, "too few to tell");
    }
    let next = a.on_throttled(later(MIN_CALLS), later(MIN_CALLS)).unwrap();
    assert!(next.rate < cut.rate);
}

#[test]
fn an_isolated_429_cuts_by_the_aimd_step_and_the_rate_climbs_back() {
    let t0 = Instant::now();
    let (mut a, at) = paced(t0, 100); // limit found at 100: rate 95
    // Past the second after the estimate, which checks it.
    succeed(&mut a, at, 0.0, 1.2);
    // A ceiling no check confirmed: a lone 429 at its count may be a limit's that moved
    // (at a confirmed one it is jitter, see the next test).
    a.limit_seen = false;
    // Sent before the last increase: the cut is from the rate.
    let before = a.rate().unwrap();
    let at = t0 + secs(2.5);
    let cut = a.on_throttled(a.last_increase - secs(0.01), at).unwrap();
    assert!((cut.rate - before * DECREASE).abs() < 1e-9, "{cut:?}");
    // Up to PROBE_AFTER since the cut.
    let rates = succeed(&mut a, t0, 2.7, 6.5);
    // What got through before the 429 was the rate: back to 95% of that within seconds.
    assert!(
        rates[3] >= 0.94 * before,
        "back near the limit within seconds: {before} -> {rates:?}"
    );
    // A 429 right after an increase means it overshot: acted on at once, back to just
    // under the rate before the increase.
    succeed(&mut a, t0, 6.5, 6.55);
    let at = t0 + secs(6.55);
    let before = a.held;
    let cut = a.on_throttled(at, at).expect("acted on at once");
    assert!(
        (cut.rate - before * NEAR_CEILING).abs() < 1e-9,
        "{before} {cut:?}"
    );
}

/// A pace whose first limit (20) a check confirmed, held just under it 3 s on: with the
/// instant the estimate was made, and the rate.
fn held_under_a_confirmed_ceiling(t0: Instant) -> (Aimd, Instant, f64) {
    let (mut a, at) = paced(t0, 20);
    // Past the second after the estimate, which confirms it.
    succeed(&mut a, at, 0.0, 3.0);
    let rate = a.rate().unwrap();
    assert!((rate - 20.0 * NEAR_CEILING).abs() < 1e-9, "{rate}");
    (a, at, rate)
}

#[test]
fn a_lone_429_at_a_confirmed_ceiling_pauses_two_calls_and_keeps_the_rate() {
    let (mut a, at, rate) = held_under_a_confirmed_ceiling(Instant::now());
    let t = at + secs(3.0);
    let sent = t - secs(0.05);
    assert!(a.window_before(sent) >= 19, "{}", a.window_before(sent));
    let change = a.on_throttled(sent, t).expect("a pause");
    assert_eq!(change.rate, rate);
    assert_eq!(change.pause, Duration::from_secs_f64(JOSTLE_SLOTS / rate));
    // The call sent after the refused one, before the pause, refused in its wake: the same.
    let t = t + secs(0.05);
    assert_eq!(a.on_throttled(sent + secs(0.03), t), None);
    assert_eq!(a.rate(), Some(rate));
    // Another a few seconds later: the margin is too thin for this jitter, and widens.
    succeed(&mut a, at, 3.1, 6.0);
    let t = at + secs(6.0);
    let sent = t - secs(0.05);
    let change = a.on_throttled(sent, t).expect("a wider margin");
    assert!(
        (change.rate - rate * NEAR_CEILING).abs() < 1e-9,
        "{change:?}"
    );
    assert!((a.ceiling().unwrap() - 20.0 * NEAR_CEILING).abs() < 1e-9);
    // The second after it is checked: a 429 in it says the 429s come whatever the rate
    // (a busy service's), and the ceiling is dropped.
    let check = a.check.expect("a check").window;
    assert!(
        check.from > t && check.to == check.from + SETTLE,
        "{check:?}"
    );
    let mut at = check.from;
    assert_eq!(a.on_throttled(at, at), None, "counted into the check");
    // Successes through the second and one past it, which closes the check.
    while at < check.to {
        at += secs(1.0 / change.rate);
        a.on_success(at, at);
    }
    assert!(a.ceiling().is_none(), "the ceiling is dropped");
}

#[test]
fn a_second_lone_429_whose_check_sees_none_keeps_the_wider_margin() {
    let (mut a, at, rate) = held_under_a_confirmed_ceiling(Instant::now());
    let t = at + secs(3.0);
    a.on_throttled(t - secs(0.05), t).expect("a pause");
    succeed(&mut a, at, 3.1, 6.0);
    let t = at + secs(6.0);
    let change = a.on_throttled(t - secs(0.05), t).expect("a wider margin");
    assert!(
        (change.rate - rate * NEAR_CEILING).abs() < 1e-9,
        "{change:?}"
    );
    // No 429 in the checked second: the limit is confirmed where it now is.
    succeed(&mut a, at, 6.1, 8.5);
    assert!((a.ceiling().unwrap() - 20.0 * NEAR_CEILING).abs() < 1e-9);
    assert!(a.limit_seen && a.check.is_none());
    assert!(a.rate().unwrap() >= change.rate, "not cut");
}

#[test]
fn past_the_ceiling_the_rate_holds_then_probes_slowly_then_the_ceiling_decays() {
    let step = |age: f64| {
        next_rate(100.0, Some((100.0, secs(age))), true, SLOW_START, false) / 100.0 - 1.0
    };
    let after = PROBE_AFTER.as_secs_f64();
    assert_eq!(step(0.0), 0.0, "held just under the ceiling at first");
    assert_eq!(step(after - 0.1), 0.0);
    assert!((step(after) - 0.005).abs() < 1e-12);
    assert!(
        (step(after + 3.0) - 0.04).abs() < 1e-12,
        "doubling each second"
    );
    assert!(
        (step(60.0) - (GROWTH - 1.0)).abs() < 1e-12,
        "then full growth"
    );
    // Below the ceiling: half-way up each second, whatever its age.
    let half_way = 50.0 + (100.0 * NEAR_CEILING - 50.0) / 2.0;
    assert!(
        (next_rate(50.0, Some((100.0, secs(60.0))), true, SLOW_START, false) - half_way).abs()
            < 1e-9
    );
    // No ceiling: slow start until a limit has been met, then gentler growth.
    assert!((next_rate(50.0, None, false, SLOW_START, false) - 100.0).abs() < 1e-9);
    assert!((next_rate(50.0, None, true, SLOW_START, false) - 50.0 * GROWTH).abs() < 1e-9);
}

#[test]
fn a_shared_pace_probes_past_its_ceiling_one_small_step_a_second() {
    // Each process of a shared pace times its probe by its own clock; steps that doubled
    // compounded. Shared, the step stays at its first size however old the ceiling.
    for age in [PROBE_AFTER.as_secs_f64(), 10.0, 60.0] {
        let next = next_rate(100.0, Some((100.0, secs(age))), true, SLOW_START, true);
        assert!((next / 100.0 - 1.005).abs() < 1e-12, "{age}: {next}");
    }
}

#[test]
fn a_shared_pace_keeps_its_ceiling_whatever_this_processs_checks_say() {
    // Four processes share the pace: a check that finds this process's few calls still
    // refused does not drop the ceiling (alone it would, and the pace would double).
    let t0 = Instant::now();
    let mut a = Aimd::slow_start(t0);
    a.set_scale(4);
    let change = a.adopt(39.8, Duration::ZERO, Some(40.0), t0);
    assert_eq!(change.rate, 39.8);
    assert!(!a.ramping(), "another process's first limit ends the ramp");
    assert_eq!(a.ceiling(), Some(40.0), "and its ceiling is this one's");
    // A cut, then its check second with as many refused: the ceiling stays.
    let at = t0 + secs(3.0);
    for i in 0..12 {
        let t = at + secs(0.05 * f64::from(i));
        a.on_success(t, t);
    }
    let cut = at + secs(0.7);
    a.on_throttled(cut, cut);
    for i in 0..20 {
        let t = cut + secs(1.0 + 0.05 * f64::from(i));
        if i % 2 == 0 {
            a.on_throttled(t, t);
        } else {
            a.on_success(t, t);
        }
    }
    assert!(a.ceiling().is_some(), "{:?}", a.ceiling());
    // Seconds later, still there, and every increase stays within a small step of it.
    let mut t = cut + secs(3.0);
    while t < cut + secs(40.0) {
        a.on_success(t, t);
        t += secs(1.0 / a.rate().unwrap());
    }
    assert!(a.ceiling().is_some());
    assert!(a.rate().unwrap() < 40.0 * 1.25, "{:?}", a.rate());
}

#[test]
fn a_ceiling_is_forgotten_after_a_quiet_spell() {
    let t0 = Instant::now();
    let (mut a, at) = paced(t0, 100);
    let rates = succeed(&mut a, at, 0.0, FORGET.as_secs_f64() + 3.0);
    let last = *rates.last().unwrap();
    assert!(last > 95.0 * GROWTH, "{rates:?}");
}

#[test]
fn a_known_limit_is_the_start_and_the_ceiling() {
    let t0 = Instant::now();
    let mut a = Aimd::new(Some(20.0), t0);
    assert_eq!(a.rate(), Some(20.0));
    a.on_throttled(t0 + secs(1.0), t0 + secs(1.0));
    let rates = succeed(&mut a, t0, 1.2, 100.0);
    let high = a.rate().unwrap();
    assert!(
        rates.iter().all(|r| *r <= 20.0),
        "never above the user's limit: {rates:?}"
    );
    assert!(high > 18.0, "{high}");
}

#[test]
fn a_known_limit_below_the_floor_is_kept() {
    let t0 = Instant::now();
    let mut a = Aimd::new(Some(0.5), t0);
    let cut = a.on_throttled(t0 + secs(1.0), t0 + secs(1.0)).unwrap();
    assert!((cut.rate - 0.5 * DECREASE).abs() < 1e-9, "{cut:?}");
}

// A virtual run: `concurrency` workers call one model through the pacer, each call answered
// `latency` after it is sent, the service deciding at arrival. Deterministic: no clock, no
// randomness beyond a seeded generator.

/// The service: `true` means the call arriving at `t` seconds is answered 429.
type Service<'a> = &'a mut dyn FnMut(f64) -> bool;

struct Sim {
    t0: Instant,
    aimd: Aimd,
    concurrency: usize,
    latency: f64,
    /// Send time and outcome of each call in flight; one latency for all keeps them in
    /// answer order.
    in_flight: VecDeque<(f64, bool)>,
    /// When the pacer lets the next call go.
    next_send: f64,
    now: f64,
    ok: u64,
    throttled: u64,
    /// The rate (`None`: unpaced) at each whole virtual second.
    rates: Vec<Option<f64>>,
    /// The service's 429s are growth-rate ones (`Throttling.BurstRate`).
    burst: bool,
}

impl Sim {
    fn new(concurrency: usize, latency: f64) -> Self {
        let t0 = Instant::now();
        Self {
            t0,
            aimd: Aimd::new(None, t0),
            concurrency,
            latency,
            in_flight: VecDeque::new(),
            next_send: 0.0,
            now: 0.0,
            ok: 0,
            throttled: 0,
            rates: Vec::new(),
            burst: false,
        }
    }

    /// The same, started as a model with no known limit is: slowly.
    fn slow(concurrency: usize, latency: f64) -> Self {
        let mut sim = Self::new(concurrency, latency);
        sim.aimd = Aimd::slow_start(sim.t0);
        sim
    }

    /// Share of calls refused so far.
    fn share(&self) -> f64 {
        self.throttled as f64 / (self.ok + self.throttled).max(1) as f64
    }

    fn at(&self, t: f64) -> Instant {
        self.t0 + secs(t)
    }

    fn run_until(&mut self, end: f64, service: Service) {
        loop {
            while self.rates.len() as f64 <= self.now {
                self.rates.push(self.aimd.rate());
            }
            let answer = self.in_flight.front().map(|(sent, _)| sent + self.latency);
            let send = (self.in_flight.len() < self.concurrency).then_some(self.next_send);
            let (t, is_send) = match (answer, send) {
                (Some(a), Some(s)) if s < a => (s, true),
                (Some(a), _) => (a, false),
                (None, Some(s)) => (s, true),
                (None, None) => unreachable!("a free worker or a call in flight"),
            };
            let t = t.max(self.now);
            if t >= end {
                self.now = end;
                return;
            }
            self.now = t;
            if is_send {
                // A slow start's gate lets the call go now, or says when.
                if let Turn::At(at) = self.aimd.turn(self.at(t)) {
                    self.next_send = (at - self.t0).as_secs_f64();
                    continue;
                }
                self.in_flight.push_back((t, service(t)));
                self.next_send = match self.aimd.rate().filter(|_| !self.aimd.ramping()) {
                    Some(rate) => t + 1.0 / rate,
                    None => t,
                };
                continue;
            }
            let (sent, throttled) = self.in_flight.pop_front().unwrap();
            let (sent, now) = (self.at(sent), self.at(t));
            let change = if throttled {
                self.throttled += 1;
                if self.burst {
                    self.aimd.on_burst(sent, now)
                } else {
                    self.aimd.on_throttled(sent, now)
                }
            } else {
                self.ok += 1;
                self.aimd.on_success(sent, now)
            };
            if let Some(change) = change {
                // The next call goes once the pause is over: close to the limiter, which
                // re-times what is owed at the new rate.
                self.next_send = t + change.pause.as_secs_f64();
            }
        }
    }

    /// The lowest rate from second `from` on (unpaced counts as infinite).
    fn lowest_rate_from(&self, from: usize) -> f64 {
        self.rates[from..]
            .iter()
            .map(|r| r.unwrap_or(f64::INFINITY))
            .fold(f64::INFINITY, f64::min)
    }
}

/// A limit of `limit` calls in any one-second window that counts refused calls too, as
/// the emulator does (the strict reading).
fn strict_limit(limit: usize) -> impl FnMut(f64) -> bool {
    let mut window = VecDeque::new();
    move |t| {
        while window.front().is_some_and(|a| t - a >= 1.0) {
            window.pop_front();
        }
        window.push_back(t);
        window.len() > limit
    }
}

/// A growth-rate limit as the emulator's `--burst-floor N --burst-growth G`: in any 1 s
/// window at most max(N, G × the calls taken in the second before it).
fn growth_limit(floor: f64, growth: f64) -> impl FnMut(f64) -> bool {
    let mut taken: VecDeque<f64> = VecDeque::new();
    move |t| {
        while taken.front().is_some_and(|a| t - a >= 2.0) {
            taken.pop_front();
        }
        let window = taken.iter().filter(|a| t - **a < 1.0).count() as f64;
        let before = taken.len() as f64 - window;
        let refused = window + 1.0 > floor.max(growth * before);
        if !refused {
            taken.push_back(t);
        }
        refused
    }
}

/// xorshift64*: a seeded stream of uniform numbers in [0, 1), a different one for each seed
/// (the state must be odd: `seed | 1` gave seeds 2k and 2k + 1 the same stream).
fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut x = (seed << 1) | 1;
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn a_real_limit_is_found_and_held() {
    // The `load pacing` scenario: 64 workers, 100 ms calls, a strict limit of 20/s.
    let mut sim = Sim::new(64, 0.1);
    sim.run_until(20.0, &mut strict_limit(20));
    let (ok, throttled) = (sim.ok, sim.throttled);
    let mut service = strict_limit(20);
    sim.run_until(120.0, &mut service);
    let rows_per_s = (sim.ok - ok) as f64 / 100.0;
    let share =
        (sim.throttled - throttled) as f64 / (sim.ok + sim.throttled - ok - throttled) as f64;
    assert!(rows_per_s >= 18.0, "{rows_per_s} rows/s: {:?}", sim.rates);
    assert!(share <= 0.05, "{share} of calls 429: {:?}", sim.rates);
    assert!(sim.lowest_rate_from(20) > 15.0, "{:?}", sim.rates);
}

#[test]
fn a_real_limit_under_random_429s_is_still_held() {
    // 5% of calls refused at random on top of a strict limit of 50/s: the noise is
    // tolerated, the limit is not.
    let mut sim = Sim::new(64, 0.1);
    let mut roll = uniform(3);
    let mut limit = strict_limit(50);
    let mut service = |t| limit(t) || roll() < 0.05;
    sim.run_until(20.0, &mut service);
    let (ok, throttled) = (sim.ok, sim.throttled);
    sim.run_until(120.0, &mut service);
    let rows_per_s = (sim.ok - ok) as f64 / 100.0;
    let share =
        (sim.throttled - throttled) as f64 / (sim.ok + sim.throttled - ok - throttled) as f64;
    assert!(rows_per_s >= 40.0, "{rows_per_s} rows/s: {:?}", sim.rates);
    assert!(share <= 0.1, "{share} of calls 429: {:?}", sim.rates);
}

#[test]
fn the_rate_recovers_within_seconds_after_a_storm() {
    let mut sim = Sim::new(64, 0.1);
    let mut limit = strict_limit(100);
    sim.run_until(30.0, &mut limit);
    let before = sim.aimd.rate().expect("paced by the limit");
    assert!(before > 80.0, "{:?}", sim.rates);
    // Five seconds of nothing but 429s, then nothing but successes.
    sim.run_until(35.0, &mut |_| true);
    let low = sim.aimd.rate().unwrap();
    assert!(
        low < before * 0.8,
        "the storm cut the rate: {:?}",
        sim.rates
    );
    sim.run_until(50.0, &mut |_| false);
    let after = sim.aimd.rate().unwrap();
    assert!(
        after >= before * 0.9,
        "{before} -> {after}: {:?}",
        sim.rates
    );
}

#[test]
fn random_429s_without_a_limit_do_not_collapse_the_pace() {
    // 5% of calls refused at random, whatever the rate; the workers could make 640 calls/s.
    let mut sim = Sim::new(64, 0.1);
    let mut roll = uniform(7);
    sim.run_until(60.0, &mut |_| roll() < 0.05);
    let calls_per_s = (sim.ok + sim.throttled) as f64 / 60.0;
    assert!(calls_per_s >= 400.0, "{calls_per_s}/s: {:?}", sim.rates);
    assert!(sim.lowest_rate_from(10) >= 300.0, "{:?}", sim.rates);
}

#[test]
fn bursts_of_429s_like_the_emulators_faults_do_not_collapse_the_pace() {
    // `--fault-rate 0.2`: 4% of calls start a burst of 3 to 7 429s; 17% of calls refused.
    let mut sim = Sim::new(64, 0.1);
    sim.run_until(60.0, &mut fault_bursts(11));
    let calls_per_s = (sim.ok + sim.throttled) as f64 / 60.0;
    assert!(calls_per_s >= 300.0, "{calls_per_s}/s: {:?}", sim.rates);
    assert!(sim.lowest_rate_from(20) >= 200.0, "{:?}", sim.rates);
}

/// Takes every turn the gate gives from `from` to `to` seconds, each call answered at once;
/// the number of calls.
fn saturate(a: &mut Aimd, t0: Instant, from: f64, to: f64) -> usize {
    let (mut t, end, mut calls) = (t0 + secs(from), t0 + secs(to), 0);
    while t < end {
        match a.turn(t) {
            Turn::Now => {
                calls += 1;
                a.on_success(t, t);
            }
            Turn::At(at) => t = at,
            Turn::Paced => panic!("left the ramp"),
        }
    }
    calls
}

#[test]
fn a_slow_start_goes_through_its_gate_until_its_first_limit() {
    let t0 = Instant::now();
    let mut a = Aimd::slow_start(t0);
    assert!(a.ramping());
    assert_eq!(a.paced_rate(), None, "a ramp is not a pace to report");
    // Nothing refused: the gate's count grows, the rate is never set.
    let first = saturate(&mut a, t0, 0.0, 1.0);
    let third = saturate(&mut a, t0, 1.0, 3.0);
    assert_eq!(first, START_RATE as usize);
    assert!(third >= 40, "{third} calls in the second and third seconds");
    assert_eq!(a.rate(), Some(START_RATE));
    // A 429 at the count the gate reached: the limit, just under it, paced from now on.
    let at = t0 + secs(3.0);
    let change = a.on_throttled(at, at).expect("a limit met");
    assert!(!a.ramping());
    assert_eq!(a.turn(at), Turn::Paced);
    assert!(change.rate >= 20.0, "{change:?}");
    assert_eq!(a.paced_rate(), Some(change.rate));
}

#[test]
fn a_growth_rate_429_slows_the_ramp_and_sets_no_rate() {
    let t0 = Instant::now();
    let mut calm = Aimd::slow_start(t0);
    let mut refused = Aimd::slow_start(t0);
    saturate(&mut calm, t0, 0.0, 2.0);
    saturate(&mut refused, t0, 0.0, 2.0);
    // One growth-rate 429: no change of pace, no pause, still ramping, but slower.
    let at = t0 + secs(2.0);
    assert_eq!(refused.on_burst(at, at), None);
    assert!(refused.ramping());
    let (calm, refused) = (
        saturate(&mut calm, t0, 2.0, 5.0),
        saturate(&mut refused, t0, 2.0, 5.0),
    );
    assert!(refused * 10 < calm * 9, "{refused} vs {calm}");
}

#[test]
fn a_slow_start_meets_a_request_limit_with_few_429s_the_first_second_included() {
    // The goal: an unknown limit of 20/s, C = 64, 50 ms calls, 30 s. An unpaced
    // start sends 64 calls at once, and most of the first second's are refused.
    let mut slow = Sim::slow(64, 0.05);
    slow.run_until(30.0, &mut strict_limit(20));
    let mut unpaced = Sim::new(64, 0.05);
    unpaced.run_until(30.0, &mut strict_limit(20));
    let (rows_per_s, share) = (slow.ok as f64 / 30.0, slow.share());
    eprintln!(
        "slow start: {rows_per_s:.1} rows/s, {:.1}% 429s; unpaced: {:.1} rows/s, {:.1}% 429s",
        share * 100.0,
        unpaced.ok as f64 / 30.0,
        unpaced.share() * 100.0
    );
    assert!(share <= 0.02, "{share} of calls 429: {:?}", slow.rates);
    assert!(share < unpaced.share(), "{share} vs {}", unpaced.share());
    // 18.0 before the first step waited two seconds: a start that a growth limit of floor
    // 10 accepts gives 18 calls in the first two seconds where this limit would take 40
    // (docs/performance.md), which costs about 0.4 rows/s over 30 s.
    assert!(rows_per_s >= 17.5, "{rows_per_s} rows/s: {:?}", slow.rates);
}

#[test]
fn a_slow_start_follows_a_growth_limit_with_few_429s() {
    // `--burst-floor 10 --burst-growth 2`, C = 64, 50 ms calls, 2,000 rows. The ideal ramp
    // takes 10, 20, 40, 80, ... calls a second, which the 64 workers cap at 1,280 a second:
    // 10+20+40+80+160+320+640 = 1,270 in 7 s, the remaining 730 in under 1 s more.
    let mut sim = Sim::slow(64, 0.05);
    sim.burst = true;
    let mut service = growth_limit(10.0, 2.0);
    let mut end = 1.0;
    while sim.ok < 2000 && end < 120.0 {
        sim.run_until(end, &mut service);
        end += 0.25;
    }
    let ideal = 8.0;
    eprintln!(
        "growth limit: 2000 rows in {end:.2}s (ideal ramp {ideal}s), {:.1}% 429s, rates {:?}",
        sim.share() * 100.0,
        sim.rates
    );
    assert!(sim.ok >= 2000, "{:?}", sim.rates);
    assert!(
        end <= ideal * 1.5,
        "{end}s, over 1.5x the ideal ramp: {:?}",
        sim.rates
    );
    assert!(
        sim.share() <= 0.02,
        "{} of calls 429: {:?}",
        sim.share(),
        sim.rates
    );
}

/// The emulator's `--fault-rate 0.2` 429s: 4% of calls start a burst of 3 to 7 refusals,
/// whatever the rate (about a fifth of all calls refused).
fn fault_bursts(seed: u64) -> impl FnMut(f64) -> bool {
    let mut roll = uniform(seed);
    let mut burst = 0;
    move |_| {
        if burst > 0 {
            burst -= 1;
            return true;
        }
        if roll() < 0.04 {
            burst = 2 + (roll() * 5.0) as usize;
            return true;
        }
        false
    }
}

#[test]
fn a_slow_start_does_600_rows_under_a_request_limit_of_20_near_the_limit() {
    // Issue 11's goal as `load pacing --rows 600` runs it: C = 64, 100 ms calls, an unknown
    // strict limit of 20/s; the goal is 19 rows/s with at most 2% of calls refused. The
    // process's own start and end (about 0.3 s, measured) come on top of the virtual time.
    // This simulation gave 17.2 rows/s before the first 429 of a slow start set its ceiling
    // from the service's own count (the harness measured 17.1), 18.7 after that (the
    // harness 18.6 to 18.9), and 18.8 since the ramp goes through a gate rather than a
    // doubling rate (the harness 18.8 to 19.0), 18.98 since the first limit holds a minute
    // before its first probe (the harness 19.1 in five runs of six), and 19.13 since the
    // ramp's margin for jitter is in time rather than in calls (the harness 19.2 to 19.3):
    // a start that a growth limit of floor 10 accepts still costs most of the 1.6 s that
    // 19 rows/s leaves (docs/performance.md).
    let mut sim = Sim::slow(64, 0.1);
    let mut service = strict_limit(20);
    let mut end = 0.0;
    while sim.ok < 600 && end < 60.0 {
        end += 0.01;
        sim.run_until(end, &mut service);
    }
    let rows_per_s = 600.0 / (end + 0.3);
    eprintln!(
        "600 rows in {end:.2}s: {rows_per_s:.2} rows/s, {:.1}% 429s, rates {:?}",
        sim.share() * 100.0,
        sim.rates
    );
    assert!(rows_per_s >= 19.1, "{rows_per_s} rows/s: {:?}", sim.rates);
    assert!(
        sim.share() <= 0.02,
        "{} of calls 429: {:?}",
        sim.share(),
        sim.rates
    );
}

#[test]
fn a_slow_start_under_fault_bursts_is_not_held_back_by_them() {
    // The noise scenario (`--fault-rate 0.2`, no limit, C = 32, 100 ms calls): the workers
    // could make 320 calls a second. Fault bursts met during the ramp must not leave a
    // ceiling that holds the pace down for seconds.
    // Before: 78 to 204 calls in the first 10 s, a ceiling taken from a fault burst held
    // the pace under 20 a second for seconds. Still left: a burst met early in the ramp, at
    // a count near the start rate, looks exactly like a low limit (every call in flight is
    // refused either way), and its ceiling holds the pace down for a few seconds, until the
    // 429s at counts accepted before drop it. Which seeds meet it moves with the ramp's
    // timing: three in eight here made 143 to 396 calls (the others 678 to 1,401, 6,864 in
    // all) with the ramp's count margin, five in eight 106 to 254 with its time margin (the
    // others 1,068 to 1,398, 4,456 in all), while 24 seeds of 30 s made the same calls
    // (152,728 and 152,725) and the harness's noise run over five fault seeds gained
    // (mean 65.8 to 69.0 rows/s). Counted over eight seeds, the total must stay far above
    // the old runs' best (1,632).
    let mut total = 0;
    for seed in 11..=18 {
        let mut sim = Sim::slow(32, 0.1);
        sim.run_until(10.0, &mut fault_bursts(seed));
        let calls = sim.ok + sim.throttled;
        eprintln!("seed {seed}: {calls} calls in 10 s, rates {:?}", sim.rates);
        total += calls;
    }
    assert!(total >= 4000, "{total} calls in 8 runs of 10 s");
}

#[test]
fn with_a_shared_pace_the_first_ceiling_counts_every_process() {
    // `--redis`: this process sends a quarter of a shared pace's calls. The service's count
    // in the second before the first 429 is four times what this process saw.
    let first_ceiling = |processes: u32| {
        let t0 = Instant::now();
        let mut a = Aimd::slow_start(t0);
        a.set_scale(processes);
        // 12 calls a second of this process's own, answered, for two seconds.
        for i in 0..24 {
            let sent = t0 + secs(f64::from(i) / 12.0);
            a.on_success(sent, sent + secs(0.05));
        }
        let sent = t0 + secs(2.0);
        a.on_throttled(sent, sent + secs(0.05)).map(|c| c.rate)
    };
    let alone = first_ceiling(1).expect("a limit met");
    let shared = first_ceiling(4).expect("a limit met");
    assert!((11.0..=12.0).contains(&alone), "{alone}");
    assert!((44.0..=48.0).contains(&shared), "{shared}");
}
