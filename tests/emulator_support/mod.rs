//! Shared helpers for the emulator's integration tests: start an emulator on
//! `127.0.0.1:0`, talk to it with a plain `reqwest` client (never `dashbatch::dashscope`),
//! and read its answers.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dashbatch::emulator::{self, EmulatorConfig, Running};
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const MODEL: &str = "qwen-vl-plus";
pub const RESOLVE: (&str, &str) = ("X-DashScope-OssResourceResolve", "enable");

pub struct Emu {
    pub running: Running,
    pub http: reqwest::Client,
}

pub async fn start(config: EmulatorConfig) -> Emu {
    let running = emulator::spawn(config).await.expect("emulator starts");
    Emu {
        running,
        http: reqwest::Client::new(),
    }
}

pub async fn start_default() -> Emu {
    start(EmulatorConfig::default()).await
}

/// A raw HTTP answer, read completely.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("complete body");
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The OSS XML error, checking the content type.
    pub fn oss_error(&self) -> OssError {
        assert_eq!(self.content_type(), "application/xml", "{}", self.body);
        assert!(self.body.starts_with("<?xml"), "{}", self.body);
        quick_xml::de::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not an OSS error ({err}): {}", self.body))
    }

    /// The native error code, checking the whole shape.
    pub fn native_code(&self) -> String {
        let v = self.json();
        assert!(v["message"].is_string(), "{v}");
        assert!(v["request_id"].is_string(), "{v}");
        v["code"].as_str().expect("code").to_owned()
    }

    /// The compatible-mode error `code`, checking the whole shape.
    pub fn compat_code(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some(), "{v}");
        assert!(v["request_id"].is_string(), "{v}");
        e["code"].as_str().expect("code").to_owned()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OssError {
    pub code: String,
    pub message: String,
    pub request_id: String,
    pub host_id: String,
}

impl Emu {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.base_url())
    }

    pub async fn get_policy_raw(&self, api_key: Option<&str>, query: &str) -> Answer {
        let mut request = self.http.get(self.url(&format!("/api/v1/uploads?{query}")));
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        Answer::read(request.send().await.expect("request sent")).await
    }

    /// A successful getPolicy's `data`.
    pub async fn policy(&self, api_key: &str, model: &str) -> Value {
        let answer = self
            .get_policy_raw(Some(api_key), &format!("action=getPolicy&model={model}"))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["data"].clone()
    }

    /// POSTs a form to the policy's `upload_host`: `fields` in order, then the parts of
    /// `files` (name, bytes), then `after`.
    pub async fn post_form(
        &self,
        upload_host: &str,
        fields: &[(String, String)],
        files: &[(&str, Vec<u8>)],
        after: &[(String, String)],
    ) -> Answer {
        let mut form = Form::new();
        for (name, value) in fields {
            form = form.text(name.clone(), value.clone());
        }
        for (name, bytes) in files {
            form = form.part(
                name.to_string(),
                Part::bytes(bytes.clone()).file_name("cat.png"),
            );
        }
        for (name, value) in after {
            form = form.text(name.clone(), value.clone());
        }
        let response = self
            .http
            .post(upload_host)
            .multipart(form)
            .send()
            .await
            .expect("request sent");
        Answer::read(response).await
    }

    /// Uploads `bytes` the way the official SDKs do; returns the answer and the `oss://` URL.
    pub async fn upload(&self, policy: &Value, name: &str, bytes: &[u8]) -> (Answer, String) {
        let key = format!("{}/{name}", s(policy, "upload_dir"));
        let fields = sdk_fields(policy, &key);
        let answer = self
            .post_form(
                s(policy, "upload_host"),
                &fields,
                &[("file", bytes.to_vec())],
                &[],
            )
            .await;
        (answer, format!("oss://{key}"))
    }

    /// getPolicy + upload, asserting success; returns the `oss://` URL.
    pub async fn upload_ok(&self, api_key: &str, model: &str, name: &str, bytes: &[u8]) -> String {
        let policy = self.policy(api_key, model).await;
        let (answer, url) = self.upload(&policy, name, bytes).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        url
    }

    pub async fn stats(&self) -> Value {
        let response = self
            .http
            .get(self.url("/__emulator/stats"))
            .send()
            .await
            .expect("stats");
        Answer::read(response).await.json()
    }

    pub async fn advance_clock(&self, seconds: u64) {
        let response = self
            .http
            .post(self.url(&format!("/__emulator/clock?advance_s={seconds}")))
            .send()
            .await
            .expect("clock");
        assert_eq!(response.status(), 200);
    }

    pub async fn post_json(
        &self,
        path: &str,
        api_key: Option<&str>,
        resolve: bool,
        body: &Value,
    ) -> Answer {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        if resolve {
            request = request.header(RESOLVE.0, RESOLVE.1);
        }
        Answer::read(request.send().await.expect("request sent")).await
    }

    pub async fn compatible(&self, api_key: &str, resolve: bool, body: &Value) -> Answer {
        self.post_json(
            "/compatible-mode/v1/chat/completions",
            Some(api_key),
            resolve,
            body,
        )
        .await
    }

    pub async fn native(&self, api_key: &str, resolve: bool, body: &Value) -> Answer {
        self.post_json(
            "/api/v1/services/aigc/multimodal-generation/generation",
            Some(api_key),
            resolve,
            body,
        )
        .await
    }
}

/// A string field of a getPolicy `data`.
pub fn s<'a>(data: &'a Value, field: &str) -> &'a str {
    data[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {data}"))
}

/// The text fields the official Python SDK sends, in its order, before `file`.
pub fn sdk_fields(policy: &Value, key: &str) -> Vec<(String, String)> {
    [
        ("OSSAccessKeyId", s(policy, "oss_access_key_id")),
        ("Signature", s(policy, "signature")),
        ("policy", s(policy, "policy")),
        ("key", key),
        ("x-oss-object-acl", s(policy, "x_oss_object_acl")),
        (
            "x-oss-forbid-overwrite",
            s(policy, "x_oss_forbid_overwrite"),
        ),
        ("success_action_status", "200"),
        ("x-oss-content-type", "image/png"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Replaces (or, with `None`, removes) a field by exact name.
pub fn with_field(
    fields: &[(String, String)],
    name: &str,
    value: Option<&str>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in fields {
        if k == name {
            if let Some(value) = value {
                out.push((k.clone(), value.to_owned()));
            }
        } else {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

pub fn decode_policy(policy_b64: &str) -> Value {
    let bytes = STANDARD.decode(policy_b64).expect("policy is base64");
    serde_json::from_slice(&bytes).expect("policy is JSON")
}

/// Signs a policy document the way OSS V1 does, with the emulator's configured secret.
pub fn sign(secret: &str, policy_b64: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(policy_b64.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

pub fn encode_policy(doc: &Value) -> String {
    STANDARD.encode(doc.to_string())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The assistant text of a compatible-mode reply.
pub fn compat_text(answer: &Answer) -> String {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_owned()
}

/// The assistant text of a native reply.
pub fn native_text(answer: &Answer) -> String {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["output"]["choices"][0]["message"]["content"][0]["text"]
        .as_str()
        .expect("content")
        .to_owned()
}

/// `{"<code>": n}` maps in the stats, as a HashMap.
pub fn counts(v: &Value) -> HashMap<String, u64> {
    serde_json::from_value(v.clone()).expect("a map of counts")
}
