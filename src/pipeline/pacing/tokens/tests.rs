//! The token pacing decision driven with made-up instants.

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `calls` answers of `tokens` each, evenly over the second before `to` (ms after `t0`).
fn answer_second(aimd: &mut TokenAimd, t0: Instant, to: u64, calls: u64, tokens: u64) {
    for i in 0..calls {
        let at = t0 + ms(to - 1000 + (i + 1) * 1000 / calls);
        aimd.on_answer(tokens, at);
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn unpaced_until_the_first_token_429() {
    let t0 = Instant::now();
    let mut aimd = TokenAimd::new(None, t0);
    answer_second(&mut aimd, t0, 3000, 30, 500);
    assert_eq!(aimd.rate(), None);
}

#[test]
fn the_first_429_paces_just_under_the_tokens_that_got_through() {
    let t0 = Instant::now();
    let mut aimd = TokenAimd::new(None, t0);
    // 20 calls of 500 tokens in the last second: 10,000 tokens a second got through.
    answer_second(&mut aimd, t0, 2000, 20, 500);
    let change = aimd.on_throttled(t0 + ms(1900), t0 + ms(2000)).unwrap();
    assert!(close(change.rate, 10_000.0 * NEAR), "{change:?}");
    assert_eq!(change.pause, PAUSE);
}

#[test]
fn the_429s_of_one_window_cut_once() {
    let t0 = Instant::now();
    let mut aimd = TokenAimd::new(None, t0);
    answer_second(&mut aimd, t0, 2000, 20, 500);
    aimd.on_throttled(t0 + ms(1900), t0 + ms(2000)).unwrap();
    // Calls sent before the cut, or less than a window after it, answer 429 too.
    assert_eq!(aimd.on_throttled(t0 + ms(1950), t0 + ms(2050)), None);
    assert_eq!(aimd.on_throttled(t0 + ms(2900), t0 + ms(3000)), None);
    // A window later a 429 is about the new rate: the pace goes under what got through.
    answer_second(&mut aimd, t0, 3200, 18, 500);
    let change = aimd.on_throttled(t0 + ms(3100), t0 + ms(3200)).unwrap();
    assert!(close(change.rate, 9_000.0 * NEAR), "{change:?}");
}

#[test]
fn the_pace_climbs_back_under_the_ceiling_then_probes_slowly() {
    let t0 = Instant::now();
    let mut aimd = TokenAimd::new(None, t0);
    answer_second(&mut aimd, t0, 2000, 20, 500);
    aimd.on_throttled(t0 + ms(1900), t0 + ms(2000)).unwrap();
    // In the window after the cut: no change.
    answer_second(&mut aimd, t0, 2900, 19, 500);
    assert!(close(aimd.rate().unwrap(), 9_700.0));
    // A second later, the rate in use and at NEAR of the ceiling: a probe of 0.5%.
    let change = aimd.on_answer(500, t0 + ms(3001)).unwrap();
    assert!(close(change.rate, 9_700.0 * 1.005), "{change:?}");
    assert_eq!(aimd.on_answer(500, t0 + ms(3500)), None, "once a second");
    // Well after the last 429 the probe's step grows: the limit may have been raised.
    let mut rate = change.rate;
    for s in 4..=10 {
        answer_second(&mut aimd, t0, s * 1000 + 1, 20, 500);
        rate = aimd.rate().unwrap();
    }
    assert!(rate > 9_700.0 * 1.05, "{rate}");
}

#[test]
fn an_unused_rate_does_not_grow() {
    let t0 = Instant::now();
    let mut aimd = TokenAimd::new(None, t0);
    answer_second(&mut aimd, t0, 2000, 20, 500);
    aimd.on_throttled(t0 + ms(1900), t0 + ms(2000)).unwrap();
    // Seconds later, a trickle of 2 calls a second: far under the pace.
    answer_second(&mut aimd, t0, 6000, 2, 500);
    assert_eq!(aimd.on_answer(500, t0 + ms(6001)), None);
    assert!(close(aimd.rate().unwrap(), 9_700.0));
}

#[test]
fn a_known_limit_paces_from_the_start_and_caps_the_growth() {
    let t0 = Instant::now();
    let mut aimd = TokenAimd::new(Some(10_000.0), t0);
    assert_eq!(aimd.rate(), Some(10_000.0));
    answer_second(&mut aimd, t0, 2000, 20, 500);
    assert_eq!(aimd.on_answer(500, t0 + ms(2001)), None, "at the cap");
    // A 429 at the cap: under what got through, which is no more than the cap.
    let change = aimd.on_throttled(t0 + ms(1950), t0 + ms(2001)).unwrap();
    assert!(close(change.rate, 10_000.0 * NEAR), "{change:?}");
    // The probe never passes the cap.
    for s in 3..=30 {
        answer_second(&mut aimd, t0, s * 1000 + 2, 20, 500);
    }
    assert_eq!(aimd.rate(), Some(10_000.0));
}

#[test]
fn a_first_429_with_too_few_answers_starts_at_the_floor_and_doubles() {
    let t0 = Instant::now();
    let mut aimd = TokenAimd::new(None, t0);
    let change = aimd.on_throttled(t0, t0 + ms(100)).unwrap();
    assert_eq!(change.rate, MIN_RATE);
    // Used in full for the next second: no limit known, so it doubles.
    answer_second(&mut aimd, t0, 1099, 1, 80);
    let change = aimd.on_answer(60, t0 + ms(1100)).unwrap();
    assert_eq!(change.rate, DOUBLING * MIN_RATE);
}
