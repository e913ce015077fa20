//! TEMPORARY signature stub of the client contract, replaced by the real client on merge.
#![allow(dead_code, unused_variables, clippy::all)]
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct ApiKey;
#[derive(Debug)]
pub struct InvalidApiKey;
impl std::fmt::Display for InvalidApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "x")
    }
}
impl std::error::Error for InvalidApiKey {}
impl ApiKey {
    pub fn new(raw: impl Into<String>) -> Result<ApiKey, InvalidApiKey> {
        todo!()
    }
    pub fn fingerprint(&self) -> String {
        todo!()
    }
}
#[derive(Clone)]
pub struct ClientConfig {
    pub base_url: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub upload_timeout: Duration,
}
impl Default for ClientConfig {
    fn default() -> Self {
        todo!()
    }
}
impl ClientConfig {
    pub fn root_from_sdk_base(url: &str) -> String {
        todo!()
    }
}
#[derive(Debug)]
pub struct ClientError;
impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "x")
    }
}
impl std::error::Error for ClientError {}
#[derive(Clone)]
pub struct Client;
impl Client {
    pub fn new(key: ApiKey, config: ClientConfig) -> Result<Client, ClientError> {
        todo!()
    }
    pub fn key_fingerprint(&self) -> String {
        todo!()
    }
    pub async fn get_policy(&self, model: &str) -> Result<Policy, ApiError> {
        todo!()
    }
    pub async fn upload(
        &self,
        policy: &Policy,
        object_key: &str,
        file: &Path,
        content_type: &str,
    ) -> Result<(), ApiError> {
        todo!()
    }
    pub async fn call_model(
        &self,
        api: Api,
        request: &ModelRequest,
    ) -> Result<ModelReply, ApiError> {
        todo!()
    }
}
#[derive(Debug, Clone)]
pub struct Policy {
    pub policy: String,
    pub signature: String,
    pub upload_dir: String,
    pub upload_host: String,
    pub expire_in_seconds: u64,
    pub max_file_size_mb: u64,
    pub capacity_limit_mb: Option<u64>,
    pub oss_access_key_id: String,
    pub x_oss_object_acl: String,
    pub x_oss_forbid_overwrite: String,
    pub request_id: String,
    pub fetched_at: Instant,
}
impl Policy {
    pub fn max_file_size_bytes(&self) -> u64 {
        todo!()
    }
    pub fn object_key(&self, sha256_hex: &str, file_name: &str) -> String {
        todo!()
    }
    pub fn expires_at(&self) -> Instant {
        todo!()
    }
}
pub fn oss_url(object_key: &str) -> String {
    todo!()
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Compatible,
    Native,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
    Audio,
}
impl MediaKind {
    pub fn from_path(path: &Path) -> Option<MediaKind> {
        todo!()
    }
}
pub fn content_type_for(path: &Path) -> &'static str {
    todo!()
}
#[derive(Debug, Clone)]
pub struct Media {
    pub kind: MediaKind,
    pub url: String,
    pub format: Option<String>,
}
#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub model: String,
    pub prompt: String,
    pub system: Option<String>,
    pub media: Option<Media>,
}
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}
#[derive(Debug, Clone)]
pub struct ModelReply {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    pub request_id: Option<String>,
}
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub status: Option<u16>,
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    pub retry_after: Option<Duration>,
}
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "x")
    }
}
impl std::error::Error for ApiError {}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Throttled,
    Server,
    Network,
    Unauthorized,
    PolicyExpired,
    AlreadyExists,
    InvalidOssUrl,
    Rejected,
}
impl ApiError {
    pub fn is_retryable(&self) -> bool {
        todo!()
    }
}
impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        todo!()
    }
}
#[derive(Debug, Clone)]
pub struct CredentialOptions {
    pub qps: NonZeroU32,
    pub burst: NonZeroU32,
    pub reuse: bool,
    pub safety_margin: Duration,
    pub retry: RetryPolicy,
}
impl Default for CredentialOptions {
    fn default() -> Self {
        todo!()
    }
}
#[derive(Clone)]
pub struct Credentials;
impl Credentials {
    pub fn new(client: Client, options: CredentialOptions) -> Credentials {
        todo!()
    }
    pub async fn get(&self, model: &str) -> Result<Arc<Policy>, ApiError> {
        todo!()
    }
    pub fn invalidate(&self, model: &str, stale: &Arc<Policy>) {
        todo!()
    }
    pub fn fetches(&self) -> u64 {
        todo!()
    }
}
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    pub retry_after_ceiling: Duration,
}
impl Default for RetryPolicy {
    fn default() -> Self {
        todo!()
    }
}
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    op: F,
    on_retry: impl FnMut(&ApiError, Duration),
) -> (Result<T, ApiError>, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    todo!()
}
