//! getPolicy: the credential's shape and signature, its errors, and the 100 QPS limit.

mod emulator_support;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashbatch::emulator::EmulatorConfig;
use emulator_support::*;
use futures::future::join_all;
use serde_json::json;

#[tokio::test]
async fn credential_has_every_field_and_a_valid_signed_policy() {
    let config = EmulatorConfig::default();
    let secret = config.oss_access_key_secret.clone();
    let emu = start(config).await;
    let before = Utc::now();
    let answer = emu
        .get_policy_raw(Some("sk-demo"), "action=getPolicy&model=qwen-vl-plus")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    let request_id = body["request_id"].as_str().expect("request_id");
    let data = &body["data"];

    assert_eq!(data["expire_in_seconds"], 300);
    assert_eq!(data["max_file_size_mb"], 1024);
    assert!(data["capacity_limit_mb"].as_u64().is_some());
    assert_eq!(data["x_oss_object_acl"], "private");
    assert_eq!(data["x_oss_forbid_overwrite"], "true");
    assert!(!s(data, "oss_access_key_id").is_empty());
    assert_eq!(s(data, "upload_host"), emu.running.base_url());

    // dashscope-instant/<32 hex>/<YYYY-MM-DD>/<request_id>
    let dir: Vec<&str> = s(data, "upload_dir").split('/').collect();
    assert_eq!(dir.len(), 4, "{dir:?}");
    assert_eq!(dir[0], "dashscope-instant");
    assert_eq!(dir[1].len(), 32);
    assert!(dir[1].bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(chrono::NaiveDate::parse_from_str(dir[2], "%Y-%m-%d").is_ok());
    assert_eq!(dir[3], request_id);

    let policy = s(data, "policy");
    assert_eq!(s(data, "signature"), sign(&secret, policy));
    let doc = decode_policy(policy);
    assert_eq!(
        doc["conditions"],
        json!([
            ["content-length-range", 0, 1024u64 * 1024 * 1024],
            ["starts-with", "$key", s(data, "upload_dir")],
            {"bucket": "dashscope-file-mgr"},
            {"x-oss-object-acl": "private"},
            {"x-oss-forbid-overwrite": "true"}
        ])
    );
    let expiration = doc["expiration"].as_str().expect("expiration");
    assert!(
        expiration.ends_with('Z') && expiration.len() == 24,
        "{expiration}"
    );
    let expiration: DateTime<Utc> = expiration.parse().expect("ISO-8601");
    let ttl = expiration - before;
    assert!(
        ttl.num_seconds() >= 299 && ttl.num_seconds() <= 301,
        "{ttl}"
    );
}

#[tokio::test]
async fn keys_of_one_account_share_its_directory_and_accounts_differ() {
    let emu = start_default().await;
    let account_of =
        |data: serde_json::Value| s(&data, "upload_dir").split('/').nth(1).map(str::to_owned);
    let alice1 = account_of(emu.policy("sk-alice.key1", MODEL).await);
    let alice2 = account_of(emu.policy("sk-alice.key2", MODEL).await);
    let bob = account_of(emu.policy("sk-bob", MODEL).await);
    assert_eq!(alice1, alice2);
    assert_ne!(alice1, bob);
}

#[tokio::test]
async fn bad_keys_get_401_invalid_api_key() {
    let emu = start_default().await;
    let query = "action=getPolicy&model=qwen-vl-plus";
    for key in [
        None,
        Some("nonsense"),
        Some("sk-"),
        Some("sk-.x"),
        Some("sk-a b"),
    ] {
        let answer = emu.get_policy_raw(key, query).await;
        assert_eq!(answer.status, 401, "{key:?}: {}", answer.body);
        assert_eq!(answer.native_code(), "InvalidApiKey");
    }
    // Not a bearer token at all.
    let response = emu
        .http
        .get(emu.url(&format!("/api/v1/uploads?{query}")))
        .header("Authorization", "Basic c2stZGVtbw==")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn bad_parameters_get_400_invalid_parameter() {
    let emu = start_default().await;
    for query in [
        "action=getSomething&model=qwen-vl-plus",
        "model=qwen-vl-plus",
        "action=getPolicy",
        "action=getPolicy&model=",
        "action=getPolicy&model=no-such-model",
    ] {
        let answer = emu.get_policy_raw(Some("sk-demo"), query).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert_eq!(answer.native_code(), "InvalidParameter", "{query}");
    }
    assert_eq!(emu.stats().await["credential_calls"], 0);
}

#[tokio::test]
async fn configured_models_and_size_overrides_are_served() {
    let mut config = EmulatorConfig {
        models: vec!["m-small".into(), "m-big".into()],
        max_file_size_mb: 50,
        policy_ttl_s: 60,
        ..EmulatorConfig::default()
    };
    config
        .max_file_size_mb_per_model
        .insert("m-small".into(), 2);
    let emu = start(config).await;
    let small = emu.policy("sk-demo", "m-small").await;
    assert_eq!(small["max_file_size_mb"], 2);
    assert_eq!(small["expire_in_seconds"], 60);
    assert_eq!(
        decode_policy(s(&small, "policy"))["conditions"][0],
        json!(["content-length-range", 0, 2 * 1024 * 1024])
    );
    assert_eq!(emu.policy("sk-demo", "m-big").await["max_file_size_mb"], 50);
    let answer = emu
        .get_policy_raw(Some("sk-demo"), "action=getPolicy&model=qwen-vl-plus")
        .await;
    assert_eq!(answer.status, 400);
}

/// Fires `n` getPolicy requests at once, alternating between `keys`; returns the statuses.
async fn burst(emu: &Emu, keys: &[&str], model: &str, n: usize) -> Vec<Answer> {
    let query = format!("action=getPolicy&model={model}");
    join_all((0..n).map(|i| emu.get_policy_raw(Some(keys[i % keys.len()]), &query))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_101st_request_in_a_second_is_throttled_per_account_and_model() {
    let emu = start_default().await;
    // Two keys of one account share one window.
    let started = Instant::now();
    let answers = burst(&emu, &["sk-carol.a", "sk-carol.b"], MODEL, 300).await;
    let elapsed = started.elapsed();
    let ok = answers.iter().filter(|a| a.status == 200).count() as u64;
    let throttled: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(ok + throttled.len() as u64, 300, "only 200s and 429s");
    let stats = emu.stats().await;
    let max_in_window = stats["credential_max_in_window"].as_u64().expect("count");
    if elapsed < Duration::from_secs(1) {
        // Every request arrived within one second of the first, so the window saw them
        // all: exactly the first 100 pass, and all 300 count.
        assert_eq!(ok, 100, "burst took {elapsed:?}");
        assert_eq!(max_in_window, 300, "burst took {elapsed:?}");
    } else {
        // A slow machine spread the burst over more than one window: only the weaker
        // properties hold.
        assert!(ok >= 100, "{ok}");
        assert!(max_in_window >= 101, "{stats}");
    }
    assert!(!throttled.is_empty());
    for answer in &throttled {
        assert_eq!(answer.native_code(), "Throttling.RateQuota");
        assert_eq!(
            answer.json()["message"],
            "Requests rate limit exceeded, please try again later."
        );
    }
    assert_eq!(stats["credential_calls"], ok);
    assert_eq!(stats["credential_throttled"], throttled.len() as u64);

    // Other accounts and other models have their own windows.
    emu.policy("sk-dave", MODEL).await;
    emu.policy("sk-carol.a", "qwen-vl-max").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_count_in_the_window_and_the_limit_is_configurable() {
    let emu = start(EmulatorConfig {
        credential_qps: 5,
        ..EmulatorConfig::default()
    })
    .await;
    // A model that does not exist is judged first and never fills a window.
    let answers = burst(&emu, &["sk-erin"], "no-such-model", 40).await;
    assert!(answers.iter().all(|a| a.status == 400));
    let stats = emu.stats().await;
    assert_eq!(stats["credential_max_in_window"], 0, "{stats}");
    // For a real model, refused requests count too.
    let started = Instant::now();
    let answers = burst(&emu, &["sk-erin"], MODEL, 40).await;
    let elapsed = started.elapsed();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let throttled = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!(ok + throttled, 40);
    let stats = emu.stats().await;
    let max_in_window = stats["credential_max_in_window"].as_u64().expect("count");
    if elapsed < Duration::from_secs(1) {
        assert_eq!(ok, 5, "burst took {elapsed:?}");
        assert_eq!(max_in_window, 40, "burst took {elapsed:?}");
    } else {
        assert!(ok >= 5, "{ok}");
        assert!(max_in_window >= 6, "{stats}");
    }
    assert_eq!(stats["credential_calls"], ok as u64);
    assert_eq!(stats["credential_throttled"], throttled as u64);
}

#[tokio::test]
async fn control_endpoints_validate_their_input_and_unknown_paths_are_404() {
    let emu = start_default().await;
    for query in ["", "?advance_s=-5", "?advance_s=soon"] {
        let response = emu
            .http
            .post(emu.url(&format!("/__emulator/clock{query}")))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 400, "{query}");
    }
    let answer = Answer::read(
        emu.http
            .get(emu.url("/api/v1/nothing"))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.native_code(), "NotFound");
    let stats = emu.stats().await;
    for key in [
        "credential_calls",
        "credential_throttled",
        "credential_max_in_window",
        "uploads",
        "upload_bytes",
        "chat_calls",
        "faults_injected",
        "streams",
        "chat_throttled_rate",
        "chat_throttled_burst",
        "chat_throttled_tokens",
        "refused_arrears",
        "refused_denied",
        "refused_not_found",
        "refused_moderation",
        "refused_stream_only",
    ] {
        assert_eq!(stats[key], 0, "{key}");
    }
    assert_eq!(stats["upload_errors"], json!({}));
    assert_eq!(stats["chat_errors"], json!({}));
    // The document is flat and has exactly the documented fields.
    let mut fields: Vec<&str> = stats
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "chat_calls",
            "chat_errors",
            "chat_throttled_burst",
            "chat_throttled_rate",
            "chat_throttled_tokens",
            "credential_calls",
            "credential_max_in_window",
            "credential_throttled",
            "faults_injected",
            "refused_arrears",
            "refused_denied",
            "refused_moderation",
            "refused_not_found",
            "refused_stream_only",
            "streams",
            "upload_bytes",
            "upload_errors",
            "uploads",
        ]
    );
}

#[tokio::test]
async fn a_listener_on_a_wildcard_address_names_the_host_the_client_used() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(dashbatch::emulator::serve(
        listener,
        EmulatorConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let response = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{port}/api/v1/uploads?action=getPolicy&model={MODEL}"
        ))
        .bearer_auth("sk-demo")
        .send()
        .await
        .expect("sent");
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(
        body["data"]["upload_host"],
        format!("http://127.0.0.1:{port}")
    );
    let _ = stop.send(());
    server.await.expect("joined").expect("served");
}

/// `POST /__emulator/clock`, returning the status and the JSON body.
async fn advance(emu: &Emu, seconds: u64) -> (u16, serde_json::Value) {
    let response = emu
        .http
        .post(emu.url(&format!("/__emulator/clock?advance_s={seconds}")))
        .send()
        .await
        .expect("sent");
    let answer = Answer::read(response).await;
    (answer.status, answer.json())
}

/// getPolicy, upload and a model call all work at the given emulator time.
async fn round_trip_works(emu: &Emu, name: &str) {
    let bytes = name.as_bytes();
    let url = emu.upload_ok("sk-demo", MODEL, name, bytes).await;
    let body = json!({
        "model": MODEL,
        "input": {"messages": [{"role": "user", "content": [{"image": url}, {"text": "?"}]}]},
    });
    let text = native_text(&emu.native("sk-demo", true, &body).await);
    assert!(text.contains(&sha256_hex(bytes)), "{text}");
}

#[tokio::test]
async fn the_clock_stops_at_the_end_of_year_9999_and_nothing_panics() {
    // The longest TTL there is: the expiry is capped too, and still written as ISO-8601.
    let emu = start(EmulatorConfig {
        policy_ttl_s: u64::MAX,
        ..EmulatorConfig::default()
    })
    .await;
    round_trip_works(&emu, "before.png").await;

    // An advance past the cap is refused with a message, and the clock does not move.
    let (status, before) = advance(&emu, 0).await;
    assert_eq!(status, 200);
    for seconds in [u64::MAX, u64::MAX / 1000, 300 * 365 * 86_400 * 1000] {
        let (status, body) = advance(&emu, seconds).await;
        assert_eq!(status, 400, "{seconds}: {body}");
        let message = body["error"].as_str().expect("a message");
        assert!(message.contains("9999-12-31"), "{message}");
    }
    let (_, after) = advance(&emu, 0).await;
    assert_eq!(
        &before["now"].as_str().expect("now")[..10],
        &after["now"].as_str().expect("now")[..10]
    );
    round_trip_works(&emu, "refused.png").await;

    // Right up to the cap is allowed, and everything still works there.
    let now: DateTime<Utc> = after["now"]
        .as_str()
        .expect("now")
        .parse()
        .expect("ISO-8601");
    let end: DateTime<Utc> = "9999-12-31T15:00:00Z".parse().expect("ISO-8601");
    let (status, body) = advance(&emu, (end - now).num_seconds() as u64).await;
    assert_eq!(status, 200, "{body}");
    let moved: DateTime<Utc> = body["now"]
        .as_str()
        .expect("now")
        .parse()
        .expect("ISO-8601");
    assert!((moved - end).num_seconds().abs() <= 2, "{body}");
    let data = emu.policy("sk-demo", MODEL).await;
    assert_eq!(
        decode_policy(s(&data, "policy"))["expiration"],
        "9999-12-31T15:59:59.999Z"
    );
    assert_eq!(s(&data, "upload_dir").split('/').nth(2), Some("9999-12-31"));
    round_trip_works(&emu, "at-the-end.png").await;
    let (status, _) = advance(&emu, 7200).await;
    assert_eq!(status, 400);
    round_trip_works(&emu, "still.png").await;
}

#[tokio::test]
async fn wrong_methods_get_405_in_each_endpoints_own_shape() {
    let emu = start_default().await;
    let send = |method: reqwest::Method, path: &str| {
        let request = emu
            .http
            .request(method, emu.url(path))
            .bearer_auth("sk-demo");
        async move { Answer::read(request.send().await.expect("sent")).await }
    };
    let allow = |answer: &Answer| answer.headers["allow"].to_str().expect("ASCII").to_owned();

    // The upload host speaks OSS XML.
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let answer = send(method.clone(), "/").await;
        assert_eq!(answer.status, 405, "{method}");
        let error = answer.oss_error();
        assert_eq!(error.code, "MethodNotAllowed");
        assert_eq!(
            error.message,
            "The specified method is not allowed against this resource."
        );
        assert!(!error.request_id.is_empty());
        assert_eq!(allow(&answer), "POST");
    }

    // getPolicy and the native API speak native JSON.
    for (method, path, allowed) in [
        (reqwest::Method::POST, "/api/v1/uploads", "GET, HEAD"),
        (reqwest::Method::DELETE, "/api/v1/uploads", "GET, HEAD"),
        (
            reqwest::Method::GET,
            "/api/v1/services/aigc/multimodal-generation/generation",
            "POST",
        ),
    ] {
        let answer = send(method, path).await;
        assert_eq!(answer.status, 405, "{path}");
        assert_eq!(answer.content_type(), "application/json", "{path}");
        assert_eq!(answer.native_code(), "MethodNotAllowed", "{path}");
        assert_eq!(allow(&answer), allowed);
    }

    // Compatible mode speaks OpenAI-shaped JSON.
    let answer = send(reqwest::Method::GET, "/compatible-mode/v1/chat/completions").await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.content_type(), "application/json");
    assert_eq!(answer.compat_code(), "method_not_allowed");
    assert_eq!(allow(&answer), "POST");

    // The control endpoints answer in their own JSON.
    for (method, path) in [
        (reqwest::Method::GET, "/__emulator/clock"),
        (reqwest::Method::POST, "/__emulator/stats"),
        (reqwest::Method::POST, "/__emulator/config"),
    ] {
        let answer = send(method, path).await;
        assert_eq!(answer.status, 405, "{path}");
        assert!(
            answer.json()["error"].is_string(),
            "{path}: {}",
            answer.body
        );
    }
    // None of this counts as an upload or a model call.
    let stats = emu.stats().await;
    assert_eq!(stats["upload_errors"], json!({}));
    assert_eq!(stats["chat_errors"], json!({}));
}
