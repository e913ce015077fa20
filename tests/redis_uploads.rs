//! The shared upload cache (`--redis`, the second level): its keys and lock against a real
//! redis-server, and two processes of the real binary with the same files, which upload
//! each file once between them. Skipped with a printed reason where redis-server is missing.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::redis::RedisServer;
use common::*;
use dashbatch::emulator::EmulatorConfig;
use dashbatch::shared::{Claim, RedisUrl, Shared, SharedOptions, SharedUploads};
use tokio::process::Command;

const KEY: &str = "sk-redis.KEYCANARY55";
const MODEL: &str = "qwen-vl-plus";

async fn connect(server: &RedisServer) -> Shared {
    let options = SharedOptions {
        url: RedisUrl::parse(&server.url()).unwrap(),
        timeout: Duration::from_secs(5),
    };
    Shared::connect(&options, "fp").await.unwrap()
}

#[tokio::test]
async fn one_process_holds_the_lock_the_other_waits_for_its_url() {
    let Some(server) = RedisServer::start("shared_uploads_lock") else {
        return;
    };
    let shared = connect(&server).await;
    // Two processes' worth: each its own handle on the same Redis and account.
    let a = SharedUploads::new(shared.clone(), "acct");
    let b = SharedUploads::new(connect(&server).await, "acct");
    let sha = [7u8; 32];

    let Claim::Upload(lock) = a.claim(MODEL, &sha).await.unwrap() else {
        panic!("the first claim takes the lock");
    };
    // B waits while A holds the lock; A's publish gives B the URL.
    let waiting = tokio::spawn(async move { b.claim(MODEL, &sha).await.unwrap() });
    let (url_key, lock_key) = a.keys(MODEL, &sha);
    assert_eq!(server.cli(&["EXISTS", &lock_key]), "1");
    assert!(!waiting.is_finished());
    let now = dashbatch::upload_cache::unix_now();
    a.publish(lock, "oss://dir/abc.png", now - 3600)
        .await
        .unwrap();
    match waiting.await.unwrap() {
        Claim::Found { url, at } => {
            assert_eq!(url, "oss://dir/abc.png");
            assert_eq!(at, now - 3600);
        }
        Claim::Upload(_) => panic!("B uploads again"),
    }
    assert_eq!(
        server.cli(&["EXISTS", &lock_key]),
        "0",
        "the lock is released"
    );
    // The URL expires when it is no longer worth reusing: 46 h after its upload.
    let pttl: u64 = server.cli(&["PTTL", &url_key]).parse().unwrap();
    let expected = (46 - 1) * 3600 * 1000;
    assert!(
        pttl <= expected && pttl > expected - 60_000,
        "PTTL {pttl}, expected about {expected}"
    );

    // A URL with no reuse life left is not stored at all.
    let old = [8u8; 32];
    let Claim::Upload(lock) = a.claim(MODEL, &old).await.unwrap() else {
        panic!("no URL stored: the claim takes the lock");
    };
    a.publish(lock, "oss://dir/old.png", 1_000).await.unwrap();
    let (old_key, old_lock) = a.keys(MODEL, &old);
    assert_eq!(server.cli(&["EXISTS", &old_key]), "0");
    assert_eq!(server.cli(&["EXISTS", &old_lock]), "0");
    assert!(url_key.starts_with("dashbatch:v1:fp:upload:acct:0707"));
    assert!(url_key.ends_with(&format!(":{MODEL}")));
}

#[tokio::test]
async fn a_lock_whose_holder_died_expires_and_another_takes_it() {
    let Some(server) = RedisServer::start("shared_uploads_dead_holder") else {
        return;
    };
    let ttl = Duration::from_millis(300);
    let a = SharedUploads::new(connect(&server).await, "acct").with_lock_ttl(ttl);
    let b = SharedUploads::new(connect(&server).await, "acct").with_lock_ttl(ttl);
    let sha = [9u8; 32];
    // A takes the lock and "dies": never renews, publishes or releases it.
    let Claim::Upload(_dead) = a.claim(MODEL, &sha).await.unwrap() else {
        panic!("the first claim takes the lock");
    };
    let claim = tokio::time::timeout(Duration::from_secs(30), b.claim(MODEL, &sha))
        .await
        .expect("the lock expires and B takes it")
        .unwrap();
    assert!(matches!(claim, Claim::Upload(_)), "{claim:?}");

    // A holder that is alive renews its lock for as long as its upload runs.
    let sha = [10u8; 32];
    let Claim::Upload(lock) = a.claim(MODEL, &sha).await.unwrap() else {
        panic!("the first claim takes the lock");
    };
    let (_, lock_key) = a.keys(MODEL, &sha);
    a.holding(&lock, tokio::time::sleep(ttl * 4)).await;
    assert_eq!(
        server.cli(&["EXISTS", &lock_key]),
        "1",
        "renewed past its TTL"
    );
    a.release(lock).await.unwrap();
    assert_eq!(server.cli(&["EXISTS", &lock_key]), "0");
}

#[tokio::test]
async fn a_rejected_url_is_removed_only_while_it_is_the_stored_one() {
    let Some(server) = RedisServer::start("shared_uploads_forget") else {
        return;
    };
    let a = SharedUploads::new(connect(&server).await, "acct");
    let sha = [3u8; 32];
    let (url_key, _) = a.keys(MODEL, &sha);
    let now = dashbatch::upload_cache::unix_now();
    let Claim::Upload(lock) = a.claim(MODEL, &sha).await.unwrap() else {
        panic!("lock");
    };
    a.publish(lock, "oss://dir/fresh.png", now).await.unwrap();
    // Another process rejected an older URL: the fresh one stays.
    a.forget(MODEL, &sha, "oss://dir/old.png").await.unwrap();
    assert_eq!(
        server.cli(&["HGET", &url_key, "url"]),
        "oss://dir/fresh.png"
    );
    a.forget(MODEL, &sha, "oss://dir/fresh.png").await.unwrap();
    assert_eq!(server.cli(&["EXISTS", &url_key]), "0");
}

fn dashbatch(base_url: &str, manifest: &Path, redis: &str) -> Command {
    let mut cmd = sealed_run(KEY, base_url, manifest);
    cmd.args(["--redis", redis, "-q"]);
    cmd
}

/// Two processes, each with its own folder (manifest, results, local cache), with the same
/// 12 files: between them, each file is uploaded once. A third run afterwards, in a fresh
/// folder, finds every URL in Redis and uploads nothing.
#[tokio::test]
async fn two_processes_with_the_same_files_upload_each_once() {
    let Some(server) = RedisServer::start("two_processes_one_upload") else {
        return;
    };
    // Uploads take a while, so that both processes want each file at once.
    let em = start(EmulatorConfig {
        upload_latency: Duration::from_millis(150),
        ..EmulatorConfig::default()
    })
    .await;
    const FILES: u64 = 12;
    let job = |tag: &str| {
        let mut job = Job::new();
        for i in 0..FILES {
            let f = job.file(&format!("m/{tag}-{i}.png"), &bytes(i + 500, 64));
            job.row(&format!("{tag}{i},{MODEL},{f},prompt {i}"));
        }
        job
    };
    let jobs = [job("a"), job("b")];
    let children: Vec<_> = jobs
        .iter()
        .map(|job| {
            dashbatch(&em.base_url(), &job.manifest(), &server.url())
                .args(["--concurrency", "4"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("each run ends within 120 s")
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut outcomes = HashSet::new();
    for job in &jobs {
        for r in results(&job.output()) {
            assert_eq!(r["status"], "ok", "{r:?}");
            outcomes.insert(r["upload"].clone());
        }
    }
    let s = stats(&em).await;
    assert_eq!(s["uploads"], FILES, "{s}");
    assert!(outcomes.contains("cached"), "{outcomes:?}");

    // A third folder finds every URL in Redis, uploads nothing, and records the hits locally.
    let third = job("c");
    let out = dashbatch(&em.base_url(), &third.manifest(), &server.url())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(stats(&em).await["uploads"], FILES);
    let local = std::fs::read_to_string(third.dir.path().join(".dashbatch/uploads.jsonl"))
        .expect("the Redis hits are in the local cache");
    assert_eq!(local.lines().count(), FILES as usize, "{local}");
    assert!(
        results(&third.output())
            .iter()
            .all(|r| r["upload"] == "cached")
    );
}
