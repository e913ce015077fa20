//! The Redis limiter's GCRA script alone, against a real redis-server: its arithmetic (with
//! the time passed in, so every figure is exact), cost, burst, expiry, and the key names;
//! and the slow start's shared gate.
//! Skipped with a printed reason where redis-server is not installed.

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use dashbatch::dashscope::ApiKey;
use dashbatch::limit::{Cost, GCRA_SCRIPT, Limiter, Rate, RedisLimiter};
use dashbatch::shared::{RedisUrl, Shared, SharedOptions};
use redis::aio::MultiplexedConnection;

/// A test's key, never in any Redis key.
const RAW_KEY: &str = "sk-redis.KEYCANARY77";

async fn connection(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// One call of the script at `now_us` (µs), returning the µs to wait (0: granted).
async fn take(
    conn: &mut MultiplexedConnection,
    key: &str,
    per_second: f64,
    burst: u32,
    cost: u32,
    now_us: Option<u64>,
) -> u64 {
    let period = 1e6 / per_second;
    let script = redis::Script::new(GCRA_SCRIPT);
    let mut call = script.key(key);
    call.arg(period.to_string()).arg(burst).arg(cost);
    if let Some(now) = now_us {
        call.arg(now);
    }
    call.invoke_async(conn).await.unwrap()
}

/// The test key and a `Shared` handle on `server`, as a run with `--redis` makes them.
async fn connect(server: &RedisServer) -> (ApiKey, Shared) {
    let key = ApiKey::new(RAW_KEY).unwrap();
    let options = SharedOptions {
        url: RedisUrl::parse(&server.url()).unwrap(),
        timeout: Duration::from_secs(5),
    };
    let shared = Shared::connect(&options, &key.fingerprint()).await.unwrap();
    (key, shared)
}

/// An instant in µs, far from zero like `TIME`'s.
const T0: u64 = 1_700_000_000_000_000;

#[tokio::test]
async fn the_kth_grant_at_rate_r_comes_k_minus_1_over_r_after_the_first() {
    let Some(server) = RedisServer::start("gcra_arithmetic") else {
        return;
    };
    let mut conn = connection(&server).await;
    // 10/s: one unit each 100 ms. At each grant's instant, the next asks in vain and is
    // told to wait exactly one period.
    for k in 0..5 {
        let at = T0 + k * 100_000;
        assert_eq!(
            take(&mut conn, "a", 10.0, 1, 1, Some(at)).await,
            0,
            "grant {k}"
        );
        assert_eq!(
            take(&mut conn, "a", 10.0, 1, 1, Some(at)).await,
            100_000,
            "after grant {k}"
        );
        // Half way, half the period is left.
        assert_eq!(
            take(&mut conn, "a", 10.0, 1, 1, Some(at + 50_000)).await,
            50_000
        );
    }
}

/// Rates whose period is not a whole number of µs (a cut from 40/s to 36/s, 14.25/s, ...)
/// at an instant the size of `TIME`'s: the first call on an idle key is granted. Once the
/// script took `now + period - now` for the period, doubles 0.25 µs apart made it exceed
/// the room, and the key answered "wait 1 µs" for ever: a run under --redis stalled after
/// its first 429 cut.
#[tokio::test]
async fn a_period_with_a_fraction_of_a_microsecond_is_granted_on_an_idle_key() {
    let Some(server) = RedisServer::start("gcra_fractional_period") else {
        return;
    };
    let mut conn = connection(&server).await;
    for (i, rate) in [36.0, 14.25, 32.4, 72.2, 9.5, 3.8].into_iter().enumerate() {
        let key = format!("frac{i}");
        assert_eq!(
            take(&mut conn, &key, rate, 1, 1, Some(T0 + 3)).await,
            0,
            "{rate}/s"
        );
        // And by Redis's own clock.
        let key = format!("time{i}");
        assert_eq!(take(&mut conn, &key, rate, 1, 1, None).await, 0, "{rate}/s");
    }
}

#[tokio::test]
async fn a_burst_goes_at_once_and_a_cost_counts_as_that_many_units() {
    let Some(server) = RedisServer::start("gcra_burst_cost") else {
        return;
    };
    let mut conn = connection(&server).await;
    // Burst 3 at 4/s (250 ms): three at once after a quiet spell, then one period.
    for i in 0..3 {
        assert_eq!(
            take(&mut conn, "b", 4.0, 3, 1, Some(T0)).await,
            0,
            "unit {i}"
        );
    }
    assert_eq!(take(&mut conn, "b", 4.0, 3, 1, Some(T0)).await, 250_000);

    // A cost of 3 at 10/s goes at once from empty (a cost over the burst goes once nothing
    // is owed) and then owes 3 periods.
    assert_eq!(take(&mut conn, "c", 10.0, 1, 3, Some(T0)).await, 0);
    assert_eq!(take(&mut conn, "c", 10.0, 1, 1, Some(T0)).await, 300_000);
    // A refusal spends nothing: asking again at the same instant gets the same answer.
    assert_eq!(take(&mut conn, "c", 10.0, 1, 1, Some(T0)).await, 300_000);
    // The rate of the call being served applies: at 20/s what is owed halves.
    assert_eq!(take(&mut conn, "c", 20.0, 1, 1, Some(T0)).await, 150_000);
}

#[tokio::test]
async fn a_key_expires_when_its_bucket_is_full_again() {
    let Some(server) = RedisServer::start("gcra_expiry") else {
        return;
    };
    let mut conn = connection(&server).await;
    // The script's own clock (TIME). At 10/s one unit is owed for 100 ms: the key lives
    // that long (+1 ms), not for ever.
    assert_eq!(take(&mut conn, "slow", 10.0, 1, 1, None).await, 0);
    let pttl: i64 = server.cli(&["PTTL", "slow"]).parse().unwrap();
    assert!((1..=101).contains(&pttl), "PTTL {pttl}");
    // Three units owed at 10/s: 300 ms (+1).
    assert_eq!(take(&mut conn, "cost", 10.0, 1, 3, None).await, 0);
    let pttl: i64 = server.cli(&["PTTL", "cost"]).parse().unwrap();
    assert!((201..=301).contains(&pttl), "PTTL {pttl}");
    // At 1000/s the key is gone within about 2 ms: polled, with a deadline.
    assert_eq!(take(&mut conn, "fast", 1000.0, 1, 1, None).await, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.cli(&["EXISTS", "fast"]) != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the key never expired"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn keys_carry_the_version_the_fingerprint_and_the_model_never_the_key() {
    let Some(server) = RedisServer::start("gcra_keys") else {
        return;
    };
    let (key, shared) = connect(&server).await;
    // Slow rates, so that the keys outlive the test's look at them.
    let credentials = RedisLimiter::new(shared.clone(), "credentials");
    let pace = RedisLimiter::new(shared.clone(), "pace");
    let slow = Rate::per_second(0.01);
    credentials
        .acquire("qwen-vl-max", slow, Cost::REQUEST)
        .await;
    pace.acquire("qwen-vl-max", slow, Cost::REQUEST).await;
    pace.acquire("qwen-vl-max\ttokens", slow, Cost::tokens(5))
        .await;

    let mut keys: Vec<String> = server.cli(&["--scan"]).lines().map(str::to_owned).collect();
    keys.sort();
    let fp = key.fingerprint();
    assert_eq!(
        keys,
        [
            format!("dashbatch:v1:{fp}:credentials:qwen-vl-max"),
            format!("dashbatch:v1:{fp}:pace.tokens:qwen-vl-max"),
            format!("dashbatch:v1:{fp}:pace:qwen-vl-max"),
        ]
    );
    let secret = RAW_KEY.trim_start_matches("sk-");
    for k in &keys {
        assert!(!k.contains(secret), "{k}");
        let pttl: i64 = server.cli(&["PTTL", k]).parse().unwrap();
        assert!(pttl > 0, "{k} has no expiry ({pttl})");
    }
    assert!(!format!("{shared:?}").contains(secret));
}

/// Fail closed: with Redis gone past `--redis-timeout-s`, an acquisition never completes,
/// and the run is told (the hook the pipeline stops on), naming the URL.
#[tokio::test]
async fn with_redis_gone_an_acquisition_waits_and_the_run_is_told_once_the_timeout_passes() {
    let Some(mut server) = RedisServer::start("gcra_lost") else {
        return;
    };
    let options = SharedOptions {
        url: RedisUrl::parse(&server.url()).unwrap(),
        timeout: Duration::from_secs(1),
    };
    let shared = Shared::connect(&options, "fp").await.unwrap();
    let (told, mut lost) = tokio::sync::mpsc::unbounded_channel();
    shared.on_lost(move |lost| {
        let _ = told.send(lost.to_string());
    });
    let limiter = RedisLimiter::new(shared.clone(), "pace");
    let rate = Rate::per_second(1000.0);
    limiter.acquire("m", rate, Cost::REQUEST).await;

    server.kill();
    let acquire = limiter.acquire("m", rate, Cost::REQUEST);
    tokio::pin!(acquire);
    let message = tokio::select! {
        () = &mut acquire => panic!("granted without Redis"),
        message = lost.recv() => message.unwrap(),
    };
    assert!(message.contains(&server.url()), "{message}");
    assert!(message.contains("--redis-timeout-s"), "{message}");
    // Still not granted, and a later acquisition fails closed at once too.
    assert!(futures::poll!(&mut acquire).is_pending());
    let later = limiter.acquire("other", rate, Cost::REQUEST);
    tokio::pin!(later);
    assert!(futures::poll!(&mut later).is_pending());
}

/// A slow start's gate shared by processes (`shared::ramp`): two processes' calls count in
/// one window, so together they take the floor in the first second, not twice it; a grant
/// answers the count of every process's calls; the keys expire.
#[tokio::test]
async fn the_shared_ramp_counts_every_processs_calls_in_one_window() {
    use dashbatch::shared::{RampRule, RampTurn, SharedPace};
    let Some(server) = RedisServer::start("ramp_window") else {
        return;
    };
    let (_, shared) = connect(&server).await;
    let (one, two) = (SharedPace::new(shared.clone()), SharedPace::new(shared));
    // A spread so wide that spacing never holds a call back here: only the window does.
    let rule = RampRule {
        floor: 9.0,
        growth: 2.0,
        spread: 1e6,
        margin: Duration::from_millis(10),
    };
    let mut counts = vec![];
    for turn in 0..9 {
        let process = if turn % 2 == 0 { &one } else { &two };
        match process.ramp_turn("qwen-vl-max", rule).await.unwrap() {
            RampTurn::Go { count } => counts.push(count),
            RampTurn::Wait(wait) => panic!("turn {turn} told to wait {wait:?}"),
        }
    }
    assert_eq!(counts, (1..=9).collect::<Vec<u32>>());
    // The tenth call, from either process, waits for the first to leave the window, widened
    // by the margin: most of a second, since the nine went within milliseconds.
    for process in [&one, &two] {
        match process.ramp_turn("qwen-vl-max", rule).await.unwrap() {
            RampTurn::Wait(wait) => assert!(
                wait > Duration::from_millis(500) && wait <= Duration::from_millis(1011),
                "{wait:?}"
            ),
            go => panic!("over the floor: {go:?}"),
        }
    }
    // Spacing: at a spread of 1 and a floor of 10, calls go 100 ms apart.
    let spaced = RampRule {
        floor: 10.0,
        growth: 2.0,
        spread: 1.0,
        margin: Duration::from_millis(10),
    };
    assert!(matches!(
        one.ramp_turn("qwen-vl-plus", spaced).await.unwrap(),
        RampTurn::Go { count: 1 }
    ));
    match two.ramp_turn("qwen-vl-plus", spaced).await.unwrap() {
        RampTurn::Wait(wait) => assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        ),
        go => panic!("not spaced: {go:?}"),
    }
    // The margin widens the window: with 400 ms of it, a full floor waits for the oldest
    // call to be 1.4 s old, not 1 s.
    let wide = RampRule {
        floor: 1.0,
        margin: Duration::from_millis(400),
        ..rule
    };
    assert!(matches!(
        one.ramp_turn("qwen-vl-ocr", wide).await.unwrap(),
        RampTurn::Go { count: 1 }
    ));
    match two.ramp_turn("qwen-vl-ocr", wide).await.unwrap() {
        RampTurn::Wait(wait) => assert!(
            wait > Duration::from_millis(1300) && wait <= Duration::from_millis(1401),
            "{wait:?}"
        ),
        go => panic!("over the floor: {go:?}"),
    }
    let secret = RAW_KEY.trim_start_matches("sk-");
    for k in server.cli(&["--scan"]).lines() {
        assert!(!k.contains(secret), "{k}");
        let pttl: i64 = server.cli(&["PTTL", k]).parse().unwrap();
        assert!(pttl > 0 && pttl <= 3000, "{k}: {pttl}");
    }
}
