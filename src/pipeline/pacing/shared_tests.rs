//! Two (or three) processes' worth of pacing state against one real redis-server
//! (`--redis`): a cut seen by several is stored once, and the others adopt it as their own.
//! Skipped with a printed reason where redis-server is not installed.

use std::time::Duration;

use super::*;
use crate::limit::RedisLimiter;
use crate::shared::{RedisUrl, Shared, SharedOptions};

#[allow(dead_code)]
#[path = "../../../tests/common/redis.rs"]
mod redis_server;

use redis_server::RedisServer;

const MODEL: &str = "qwen-vl-plus";

/// One process's pacing: its own connection, the shared limiter and the shared pace.
async fn process(server: &RedisServer) -> Pacing {
    let options = SharedOptions {
        url: RedisUrl::parse(&server.url()).unwrap(),
        timeout: Duration::from_secs(5),
    };
    let shared = Shared::connect(&options, "fp").await.unwrap();
    Pacing::new(Some(40.0), None)
        .with_limiter(Arc::new(RedisLimiter::new(shared.clone(), "pace")))
        .with_shared(SharedPace::new(shared))
}

impl Pacing {
    fn epoch(&self, model: &str) -> u64 {
        self.with_model(model, |m| m.epoch)
    }
}

/// Polls `done` with a deadline, letting `p` pace a call each round (which is when it
/// reads the shared pace).
async fn until(p: &Pacing, what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        let _ = p.acquire(MODEL, Cost::REQUEST).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const REFUSED: Outcome = Outcome::Throttled(ThrottleScope::Requests);

#[tokio::test]
async fn a_cut_seen_by_two_processes_is_stored_once_and_adopted_by_the_others() {
    let Some(server) = RedisServer::start("shared_pace_one_cut") else {
        return;
    };
    let (a, b, c) = (
        process(&server).await,
        process(&server).await,
        process(&server).await,
    );
    let (state, procs) = SharedPace::new(
        Shared::connect(
            &SharedOptions {
                url: RedisUrl::parse(&server.url()).unwrap(),
                timeout: Duration::from_secs(5),
            },
            "fp",
        )
        .await
        .unwrap(),
    )
    .keys(MODEL);
    // Each paces a call (and so reads the shared pace: none yet).
    let sent_a = a.acquire(MODEL, Cost::REQUEST).await.sent();
    let sent_b = b.acquire(MODEL, Cost::REQUEST).await.sent();
    let sent_c = c.acquire(MODEL, Cost::REQUEST).await.sent();
    until(&a, "three processes count in", || {
        server.cli(&["ZCARD", &procs]) == "3"
    })
    .await;

    // The same burst of 429s reaches A and B. A's cut is stored first.
    a.settle(MODEL, sent_a, REFUSED);
    assert_eq!(a.rate(MODEL), Some(36.0));
    until(&a, "A's cut is stored", || a.epoch(MODEL) == 1).await;
    // B had not read it yet: it cuts too, decided at epoch 0, and its proposal is refused.
    b.settle(MODEL, sent_b, REFUSED);
    until(&b, "B learns the epoch", || b.epoch(MODEL) == 1).await;
    assert_eq!(b.rate(MODEL), Some(36.0));
    assert_eq!(
        server.cli(&["HGET", &state, "epoch"]),
        "1",
        "one cut stored"
    );
    assert_eq!(server.cli(&["HGET", &state, "rate"]), "36");

    // C adopts the cut as its own: a 429 to its call sent before it cuts nothing more.
    until(&c, "C adopts the cut", || c.rate(MODEL) == Some(36.0)).await;
    c.settle(MODEL, sent_c, REFUSED);
    assert_eq!(
        c.rate(MODEL),
        Some(36.0),
        "the same burst does not cut twice"
    );
    // Nor does B's own later answer to a call sent before the cut.
    b.settle(MODEL, sent_b, REFUSED);
    assert_eq!(b.rate(MODEL), Some(36.0));
    // Neither changed its rate, so neither proposed anything.
    assert_eq!(server.cli(&["HGET", &state, "epoch"]), "1");
    assert!(
        server.cli(&["PTTL", &state]).parse::<i64>().unwrap() > 0,
        "the key expires"
    );
}
