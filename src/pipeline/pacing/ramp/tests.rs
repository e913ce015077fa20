use super::*;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Sends through `ramp` whenever it allows, for `seconds`: the send times, from `t0`.
fn saturate(ramp: &mut Ramp, t0: Instant, seconds: f64) -> Vec<f64> {
    let mut sent = vec![];
    let mut t = t0;
    while t < t0 + secs(seconds) {
        match ramp.take(t) {
            None => sent.push((t - t0).as_secs_f64()),
            Some(at) => {
                assert!(at > t, "asked again at {at:?}, not after {t:?}");
                t = at;
            }
        }
    }
    sent
}

/// Calls in `(t - 1, t]`.
fn window(sent: &[f64], t: f64) -> usize {
    sent.iter().filter(|s| **s > t - 1.0 && **s <= t).count()
}

/// The documented growth limit, floor 10 and growth 2 (the emulator's
/// `--burst-floor 10 --burst-growth 2`), checked at every call as the service would.
fn over_growth_limit(sent: &[f64]) -> Vec<f64> {
    sent.iter()
        .copied()
        .filter(|&t| {
            let before = window(sent, t - 1.0) as f64;
            window(sent, t) as f64 > 10f64.max((2.0 * before).floor())
        })
        .collect()
}

#[test]
fn a_ramp_stays_under_a_growth_limit_and_takes_most_of_what_it_allows() {
    let t0 = Instant::now();
    let sent = saturate(&mut Ramp::default(), t0, 6.0);
    assert_eq!(over_growth_limit(&sent), Vec::<f64>::new());
    let first_second = sent.iter().filter(|s| **s < 1.0).count();
    assert_eq!(first_second, 10, "{sent:?}");
    // A rate that doubled once a second from 9, its first step at 1.5 s, had sent 31 calls
    // by 2.5 s; a count margin (a floor of 9, a growth of 1.9, one call less) 37. With a
    // margin in time the gate sends near what floor 10 and growth 2 accept: 43.
    let by = |t: f64| sent.iter().filter(|s| **s <= t).count();
    assert!(by(2.5) >= 42, "{} calls by 2.5 s: {sent:?}", by(2.5));
    // And keeps growing, a little under the limit's factor each second (the margin narrows
    // the second each allowance is taken from): over 150 calls in the sixth second (the
    // count margin: 126).
    assert!(window(&sent, 6.0) >= 150, "{}", window(&sent, 6.0));
}

/// Arrival times: each send moved later by a seeded amount in `[0, jitter]`, in order.
fn arrivals(sent: &[f64], jitter: f64, seed: u64) -> Vec<f64> {
    // xorshift64*, as the pacing simulations draw.
    let mut x = (seed << 1) | 1;
    let mut roll = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut at: Vec<f64> = sent.iter().map(|s| s + jitter * roll()).collect();
    at.sort_by(f64::total_cmp);
    at
}

#[test]
fn jitter_within_the_margin_never_puts_a_ramp_over_a_growth_limit() {
    // The service counts arrivals. A gate that sends a call the instant another leaves its
    // window (as a gate without the margin does) meets a growth 429 whenever the older
    // call's network delay is the longer of the two.
    let t0 = Instant::now();
    let sent = saturate(&mut Ramp::default(), t0, 6.0);
    let jitter = MARGIN.as_secs_f64();
    for seed in 1..=20 {
        let at = arrivals(&sent, jitter, seed);
        assert_eq!(over_growth_limit(&at), Vec::<f64>::new(), "seed {seed}");
    }
}

#[test]
fn a_ramp_spreads_each_window_rather_than_bursting_it() {
    let t0 = Instant::now();
    let sent = saturate(&mut Ramp::default(), t0, 3.0);
    // The first second's 10 calls are spaced at 2 x 10 a second, not sent at once.
    let gaps: Vec<f64> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[..9].iter().all(|g| *g > 0.04), "{gaps:?}");
}

#[test]
fn a_growth_rate_429_slows_the_ramp() {
    let t0 = Instant::now();
    let mut fast = Ramp::default();
    let mut slow = Ramp::default();
    slow.slow_down();
    let (fast, slow) = (saturate(&mut fast, t0, 5.0), saturate(&mut slow, t0, 5.0));
    assert!(
        window(&slow, 5.0) * 10 < window(&fast, 5.0) * 8,
        "{} vs {}",
        window(&slow, 5.0),
        window(&fast, 5.0)
    );
    // At worst 1.1 a second, never stalled.
    let mut slowest = Ramp::default();
    for _ in 0..20 {
        slowest.slow_down();
    }
    let sent = saturate(&mut slowest, t0, 5.0);
    assert!(window(&sent, 4.99) >= 9, "{sent:?}");
}
