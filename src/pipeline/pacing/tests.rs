use super::*;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// An AIMD state that found a limit of `limit` a while ago and now runs at `rate`.
fn paced(t0: Instant, limit: u32) -> Aimd {
    let mut a = Aimd::new(None, t0);
    for i in 0..limit {
        a.on_success(t0, t0 + secs(0.1 + f64::from(i) * 0.001));
    }
    a.on_throttled(t0, t0 + secs(0.2));
    a.on_success(t0 + secs(1.3), t0 + secs(1.4));
    a
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
    let provisional = a.on_throttled(t0, t0 + secs(0.06)).unwrap();
    assert!(provisional < 20.0);
    for _ in 0..44 {
        assert_eq!(a.on_throttled(t0, t0 + secs(0.07)), None);
    }
    for i in 0..12 {
        assert_eq!(a.on_success(t0, t0 + secs(0.1 + i as f64 * 0.001)), None);
    }
    // One window later the estimate is made: 95% of the 20 that got through.
    let rate = a.on_success(t0 + secs(1.07), t0 + secs(1.17)).unwrap();
    assert!((rate - 19.0).abs() < 1e-9, "{rate}");
}

#[test]
fn a_burst_of_429s_cuts_once() {
    let t0 = Instant::now();
    let mut a = paced(t0, 20);
    let at = t0 + secs(3.0);
    let cut = a.on_throttled(at, at).unwrap();
    assert!((cut - 19.0 * DECREASE).abs() < 1e-9, "{cut}");
    for i in 0..20 {
        let t = at + secs(i as f64 * 0.04);
        // Sent before the cut, or too soon after it to reflect the new rate.
        assert_eq!(a.on_throttled(t, t), None);
    }
    assert_eq!(a.rate(), Some(cut));
    let later = at + secs(1.1);
    assert!(a.on_throttled(later, later).unwrap() < cut);
}

#[test]
fn the_rate_climbs_fast_to_the_limit_found_then_probes_slowly() {
    let t0 = Instant::now();
    let mut a = paced(t0, 100); // limit found at 100: rate 95
    let at = t0 + secs(2.0);
    a.on_throttled(at, at); // a cut to 85.5
    let mut t = 2.0;
    let mut rates = Vec::new();
    for _ in 0..12 {
        t += 1.01;
        a.on_success(t0 + secs(t), t0 + secs(t));
        rates.push(a.rate().unwrap());
    }
    // The last 429 came at 95: back to 95% of that (90.25) within seconds.
    assert!(
        rates[2] > 89.0,
        "back near the limit within seconds: {rates:?}"
    );
    let last = rates.len() - 1;
    assert!(
        rates[last] - rates[last - 1] <= rates[last - 1] * 0.006,
        "slow probe: {rates:?}"
    );
    // A 429 right after an increase means it overshot: acted on at once.
    let at = t0 + secs(t + 0.1);
    let cut = a.on_throttled(at, at).expect("acted on at once");
    assert!((cut - rates[last] * DECREASE).abs() < 1e-9);
}

#[test]
fn a_known_limit_is_the_start_and_the_ceiling() {
    let t0 = Instant::now();
    let mut a = Aimd::new(Some(20.0), t0);
    assert_eq!(a.rate(), Some(20.0));
    a.on_throttled(t0 + secs(1.0), t0 + secs(1.0));
    let mut t = 1.0;
    for _ in 0..100 {
        t += 1.01;
        a.on_success(t0 + secs(t), t0 + secs(t));
    }
    let high = a.rate().unwrap();
    assert!(high <= 20.0, "never above the user's limit: {high}");
    assert!(high > 18.0, "{high}");
}

#[test]
fn models_are_paced_independently() {
    let pacing = Pacing::new(None);
    pacing.on_success("a", Instant::now());
    pacing.on_throttled("a", Instant::now());
    assert!(pacing.rate("a").is_some());
    assert_eq!(pacing.rate("b"), None, "b never saw a 429");
}

#[test]
fn a_throttled_model_gets_a_limiter_without_burst() {
    let pacing = Pacing::new(Some(5.0));
    let limiter = pacing.with_model("a", |m| m.limiter.clone()).unwrap();
    assert!(limiter.check().is_ok());
    assert!(limiter.check().is_err(), "the next call must wait its turn");
}
