//! The pacer on tokio's paused clock: every instant below is exact.

use std::time::Duration;

use super::aimd::SETTLE;
use super::*;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn models_are_paced_independently() {
    let pacing = Pacing::new(None, None);
    pacing.on_success("a", Instant::now());
    pacing.on_throttled("a", Instant::now(), ThrottleScope::Requests);
    assert!(pacing.rate("a").is_some());
    // Issue 11: a model starts at the slow start's rate; b's is untouched by a's 429.
    assert_eq!(
        pacing.rate("b"),
        Some(aimd::START_RATE),
        "b never saw a 429"
    );
    assert_eq!(
        pacing.rates().get("b"),
        None,
        "a ramp is not reported as a pace"
    );
}

#[test]
fn the_outcome_of_a_call_is_read_from_its_result() {
    use crate::dashscope::ErrorKind;
    let ok: Result<(), ApiError> = Ok(());
    assert_eq!(Outcome::of(ok.as_ref()), Outcome::Ok);
    let mut err = ApiError::service(ErrorKind::Throttled, "Throttling.BurstRate", "slow down");
    assert_eq!(
        Outcome::of(Err::<(), _>(&err)),
        Outcome::Throttled(ThrottleScope::Burst)
    );
    err.kind = ErrorKind::Server;
    assert_eq!(Outcome::of(Err::<(), _>(&err)), Outcome::Failed);
}

/// Acquires and drops one permit of `model`; returns how long after `t0` it was granted.
async fn granted(pacing: &Pacing, model: &str, t0: tokio::time::Instant) -> Duration {
    let _permit = pacing.acquire(model, Cost::REQUEST).await;
    t0.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_paced_model_spaces_its_calls_without_burst() {
    let pacing = Pacing::new(Some(5.0), None);
    let t0 = tokio::time::Instant::now();
    assert_eq!(granted(&pacing, "a", t0).await, Duration::ZERO);
    assert_eq!(
        granted(&pacing, "a", t0).await,
        secs(0.2),
        "the next call must wait its turn"
    );
    // An unpaced model is not held up.
    assert_eq!(granted(&Pacing::new(None, None), "b", t0).await, secs(0.2));
}

#[tokio::test(start_paused = true)]
async fn calls_queued_during_a_1_per_second_pause_go_out_at_the_new_pace() {
    // The case: the first burst paces the model at the floor (1/s) and pauses it;
    // calls pile up; a window later the pace climbs to 60/s. The calls already queued must
    // go out at 60/s, not drain at the 1/s they queued at.
    const QUEUED: usize = 40;
    let pacing = Arc::new(Pacing::new(None, None));
    let t0 = tokio::time::Instant::now();
    pacing.with_model("m", |m| {
        let change = m.aimd.adopt(1.0, SETTLE, None, now());
        m.apply(change, now())
    });
    let (sent, mut sends) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..QUEUED {
        let (pacing, sent) = (Arc::clone(&pacing), sent.clone());
        tokio::spawn(async move {
            let _permit = pacing.acquire("m", Cost::REQUEST).await;
            sent.send(t0.elapsed()).unwrap();
        });
    }
    drop(sent);
    // At 1/s after the pause: one call at 1 s, 2 s, 3 s.
    for expected in [1.0, 2.0, 3.0] {
        assert_eq!(sends.recv().await, Some(secs(expected)));
    }
    pacing.with_model("m", |m| {
        let change = m.aimd.adopt(60.0, Duration::ZERO, None, now());
        m.apply(change, now())
    });
    let mut last = secs(3.0);
    let mut rest = 0;
    while let Some(at) = sends.recv().await {
        // At the new pace, not faster: tokio's timers round up to the millisecond.
        assert!(at - last >= secs(1.0 / 60.0 - 0.001), "{last:?} -> {at:?}");
        last = at;
        rest += 1;
    }
    assert_eq!(rest, QUEUED - 3);
    // 37 calls at 60/s take 0.62 s (0.65 s with the rounding); at 1/s they took 37 s.
    assert!(
        last <= secs(3.0 + 0.7),
        "the last queued call went at {last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cut_holds_back_calls_already_queued_for_its_pause() {
    let pacing = Arc::new(Pacing::new(None, None));
    let t0 = tokio::time::Instant::now();
    let set = |rate: f64, pause: f64| {
        pacing.with_model("m", |m| {
            let change = m.aimd.adopt(rate, secs(pause), None, now());
            m.apply(change, now())
        })
    };
    set(1.0, 0.0);
    assert_eq!(granted(&pacing, "m", t0).await, Duration::ZERO);
    let queued = tokio::spawn({
        let pacing = Arc::clone(&pacing);
        async move { granted(&pacing, "m", t0).await }
    });
    tokio::time::sleep(secs(0.5)).await;
    // A cut with a pause of 2 s, half-way through the queued call's wait.
    set(0.9, 2.0);
    assert_eq!(queued.await.unwrap(), secs(2.5));
}

#[tokio::test(start_paused = true)]
async fn a_known_token_limit_paces_calls_by_their_learnt_tokens() {
    // --model-tpm 600: 10 tokens a second. Calls of 5 tokens: two calls a second, evenly
    // spaced, whatever the request pace allows.
    let pacing = Pacing::new(None, Some(600));
    let t0 = tokio::time::Instant::now();
    // Nothing learnt yet: the first call is not held for tokens.
    assert_eq!(granted(&pacing, "a", t0).await, Duration::ZERO);
    pacing.learn_tokens("a", 5);
    let first = granted(&pacing, "a", t0).await;
    let mut last = first;
    for _ in 0..20 {
        last = granted(&pacing, "a", t0).await;
    }
    // 20 calls of 5 tokens after the first, at 10 tokens/s: 10 s.
    assert!(
        last - first >= secs(9.9) && last - first <= secs(10.1),
        "21 calls of 5 tokens at 10 tokens/s: from {first:?} to {last:?}"
    );
    // Another model has its own tokens.
    assert_eq!(granted(&pacing, "b", t0).await, last);
}

#[tokio::test(start_paused = true)]
async fn a_token_429_paces_the_models_tokens_not_its_requests() {
    // Requests paced far above what the tokens allow, so only the token pace can bind.
    let pacing = Pacing::new(Some(1000.0), None);
    // A second of answers: 20 calls of 500 tokens, 10,000 tokens got through.
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(50)).await;
        pacing.learn_tokens("m", 500);
    }
    pacing.settle("m", now(), Outcome::Throttled(ThrottleScope::Tokens));
    assert_eq!(
        pacing.rate("m"),
        Some(1000.0),
        "the request pace is left alone"
    );
    // Paced at 97% of that, 9,700 tokens a second, after a short pause: one call of
    // 500 tokens every 500 / 9,700 s.
    let t0 = tokio::time::Instant::now();
    let first = granted(&pacing, "m", t0).await;
    assert_eq!(first, secs(0.1), "the cut pauses the model");
    let second = granted(&pacing, "m", t0).await;
    let gap = (second - first).as_secs_f64();
    assert!(
        (gap - 500.0 / 9_700.0).abs() < 1e-3,
        "calls {gap} s apart, not at the token pace"
    );
    let paced = pacing.token_rates().get("m").copied().unwrap_or_default();
    assert!(
        (paced - 9_700.0).abs() < 1e-6,
        "the summary's token pace: {paced}"
    );
    assert_eq!(pacing.token_rates().get("other"), None);
}

#[tokio::test(start_paused = true)]
async fn calls_already_queued_take_up_a_token_pace_set_while_they_wait() {
    // Requests paced at 100/s; 40 calls queue for their turns. Then a token 429 sets a
    // token pace of 9,700 tokens/s, 19.4 calls of 500 tokens a second: the calls still
    // queued go at that pace, not at the request pace they queued at.
    let pacing = Arc::new(Pacing::new(Some(100.0), None));
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(50)).await;
        pacing.learn_tokens("m", 500);
    }
    let t0 = tokio::time::Instant::now();
    let queued: Vec<_> = (0..40)
        .map(|_| {
            let pacing = Arc::clone(&pacing);
            tokio::spawn(async move { granted(&pacing, "m", t0).await })
        })
        .collect();
    tokio::time::sleep(secs(0.05)).await;
    pacing.settle("m", now(), Outcome::Throttled(ThrottleScope::Tokens));
    let mut times = Vec::new();
    for call in queued {
        times.push(call.await.unwrap());
    }
    times.sort();
    let after: Vec<_> = times.iter().filter(|t| **t > secs(0.05)).collect();
    assert!(after.len() >= 30, "{times:?}");
    for pair in after.windows(2) {
        let gap = (*pair[1] - *pair[0]).as_secs_f64();
        assert!(
            gap >= 500.0 / 9_700.0 - 1e-3,
            "queued calls {gap} s apart, faster than the token pace: {times:?}"
        );
    }
}
