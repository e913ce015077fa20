//! The HTTP plumbing shared by every call: configuration, the `reqwest::Client`, the
//! `Authorization` header, and turning a response into bytes (read under the call's
//! [`BodyLimit`]) or a classified [`ApiError`] with the key scrubbed from it.
//!
//! Each public call (`get_policy` in [`super::policy`], `upload` in [`super::upload`],
//! `call_model` in [`super::model`]) makes exactly one attempt. Retrying is the caller's
//! job (see [`super::retry()`]), so that there is one retry layer, never two multiplying.
//!
//! Deliberately not here: rate limiting and caching ([`super::credentials`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};

use super::auth::ApiKey;
use super::body::{self, BodyLimit, ERROR_BODY_LIMIT, Read};
use super::error::ApiError;
use super::model::Streaming;

/// Where the service is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The service root, e.g. `https://dashscope.aliyuncs.com`, without `/api/v1`.
    pub base_url: String,
    pub connect_timeout: Duration,
    /// Whole-request limit for getPolicy and non-streamed model calls (headers and body); for
    /// a streamed call, the longest silence before its headers and between its events.
    pub request_timeout: Duration,
    /// Whole-request limit for one upload; files can be up to 1 GB.
    pub upload_timeout: Duration,
    /// An upload fails once the host has taken none of the body, and (after the last piece)
    /// not answered, for this long: a stalled host, apart from a slow one that moves.
    pub upload_stall_timeout: Duration,
    /// When a model call asks for its answer as a stream of events.
    pub stream: Streaming,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            base_url: Self::DEFAULT_BASE_URL.to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            upload_timeout: Self::DEFAULT_UPLOAD_TIMEOUT,
            upload_stall_timeout: Self::DEFAULT_UPLOAD_STALL_TIMEOUT,
            stream: Streaming::Auto,
        }
    }
}

/// The defaults, named so that `run`'s settings (`config::settings`) take theirs from here
/// and the library and the CLI cannot disagree.
impl ClientConfig {
    /// The real service's root.
    pub const DEFAULT_BASE_URL: &str = "https://dashscope.aliyuncs.com";
    /// Video understanding can take a minute or more before the first byte, and a long
    /// answer streams for minutes more.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
    /// 1 GB at ~2 MB/s, the slow end of an uplink, is ~9 minutes.
    pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
    /// A minute without progress is far beyond a healthy link's pauses; the kernel's send
    /// buffer (a few MB) drains within it on any link over ~1 Mbit/s.
    pub const DEFAULT_UPLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(60);

    /// Accepts `DASHSCOPE_HTTP_BASE_URL`'s form (`…/api/v1`, with or without a trailing
    /// slash) and strips it to the service root. A root passes through unchanged (minus
    /// trailing slashes). Compatible mode's `…/compatible-mode/v1` is stripped too, since
    /// users paste that one from the OpenAI-style examples.
    pub fn root_from_sdk_base(url: &str) -> String {
        let url = url.trim().trim_end_matches('/');
        let root = url
            .strip_suffix("/api/v1")
            .or_else(|| url.strip_suffix("/compatible-mode/v1"))
            .unwrap_or(url);
        root.trim_end_matches('/').to_owned()
    }
}

/// A client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "invalid base URL {url:?}: {reason} (hint: use the service root, e.g. https://dashscope.aliyuncs.com)"
    )]
    InvalidBaseUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// One API key, one account. Cheap to clone: everything lives behind one `Arc`, and
/// `reqwest::Client` shares its connection pool across clones.
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    /// Without a trailing slash.
    pub(super) root: String,
    /// `Bearer <key>`, marked sensitive so hyper/reqwest debug output shows `Sensitive`.
    pub(super) auth: HeaderValue,
    pub(super) key: ApiKey,
    pub(super) fingerprint: String,
    pub(super) config: ClientConfig,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("root", &self.inner.root)
            .field("key", &self.inner.key)
            .field("fingerprint", &self.inner.fingerprint)
            .finish()
    }
}

impl Client {
    pub fn new(key: ApiKey, config: ClientConfig) -> Result<Client, ClientError> {
        let root = ClientConfig::root_from_sdk_base(&config.base_url);
        let parsed = reqwest::Url::parse(&root).map_err(|e| ClientError::InvalidBaseUrl {
            url: config.base_url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::InvalidBaseUrl {
                url: config.base_url.clone(),
                reason: "the scheme must be http or https".to_owned(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            // No redirects: none of these endpoints redirects, and following one would be the
            // only way the Authorization header could travel somewhere we did not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dashbatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let auth = bearer(&key)?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                root,
                auth,
                fingerprint: key.fingerprint(),
                key,
                config,
            }),
        })
    }

    /// The key's fingerprint ([`ApiKey::fingerprint`]): identifies the account in caches.
    pub fn key_fingerprint(&self) -> String {
        self.inner.fingerprint.clone()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// `{root}{path}`; `path` starts with `/`.
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{}", self.inner.root, path)
    }

    /// The raw key, for scrubbing what a response quotes back. Never for output.
    pub(super) fn secret(&self) -> &str {
        self.inner.key.expose()
    }

    /// Sends one request and returns the 2xx status, headers and body, or the classified
    /// error (network trouble included). The key is scrubbed from every error field.
    ///
    /// A 2xx body over `limit` is [`ErrorKind::BodyTooLarge`](super::ErrorKind::BodyTooLarge),
    /// failing before any byte is read when Content-Length already says so. An error body is
    /// read up to [`ERROR_BODY_LIMIT`] and classified from that start.
    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        limit: BodyLimit,
    ) -> Result<(u16, HeaderMap, Bytes), ApiError> {
        let secret = self.secret();
        let mut response = request
            .send()
            .await
            .map_err(|e| ApiError::from_transport(&e).redact(secret))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let ok = (200..300).contains(&status);
        let cap = if ok { limit.bytes() } else { ERROR_BODY_LIMIT };
        let host = response.url().origin().ascii_serialization();
        let too_large = |what_happened: String| {
            let message = format!(
                "the {} from {host} {what_happened} (hint: a genuine answer is far smaller; \
                 check that the service URL points at DashScope, whose credentials name the \
                 upload host)",
                limit.what()
            );
            ApiError::body_too_large(status, &headers, message).redact(secret)
        };
        let shown_cap = body::human(cap as u64);
        if ok && let Some(announced) = response.content_length().filter(|&n| n > cap as u64) {
            return Err(too_large(format!(
                "announces {}, over the {shown_cap} dashbatch reads for it; nothing was read",
                body::human(announced)
            )));
        }
        // A body cut short surfaces here as a transport (body) error: Network, retryable.
        let read = body::read_capped(&mut response, cap)
            .await
            .map_err(|e| ApiError::from_transport(&e).redact(secret))?;
        match read {
            Read::Whole(body) if ok => Ok((status, headers, body)),
            Read::Cut(_) if ok => Err(too_large(format!(
                "went on past the {shown_cap} dashbatch reads for it; it stopped reading there"
            ))),
            Read::Whole(body) => Err(self.classify(status, &headers, &body)),
            // The cut can split a key quoted back: drop its start, so that redaction (which
            // matches whole keys) leaves nothing of it.
            Read::Cut(body) => {
                let body = body::drop_partial_secret(body, secret);
                Err(self.classify(status, &headers, &body))
            }
        }
    }

    /// Sends a request whose answer is a stream of events and returns the 2xx status,
    /// headers and the body to read ([`StreamBody`]), or the classified error as [`send`]
    /// gives it. `request` must not carry a whole-request timeout: the request timeout
    /// applies to the wait for the headers here, and then to each silence in the body
    /// (a long answer streams for longer than any one silence).
    ///
    /// [`send`]: Client::send
    pub(super) async fn open_stream(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, HeaderMap, StreamBody), ApiError> {
        let secret = self.secret();
        let idle = self.inner.config.request_timeout;
        let mut response = tokio::time::timeout(idle, request.send())
            .await
            .map_err(|_| silent(idle, "before the answer's headers"))?
            .map_err(|e| ApiError::from_transport(&e).redact(secret))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if !(200..300).contains(&status) {
            let read = body::read_capped(&mut response, ERROR_BODY_LIMIT)
                .await
                .map_err(|e| ApiError::from_transport(&e).redact(secret))?;
            let body = match read {
                Read::Whole(body) => body,
                Read::Cut(body) => body::drop_partial_secret(body, secret),
            };
            return Err(self.classify(status, &headers, &body));
        }
        let body = StreamBody {
            response,
            read: 0,
            idle,
            status,
            headers: headers.clone(),
        };
        Ok((status, headers, body))
    }

    /// A non-2xx answer, classified, with the key scrubbed out.
    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> ApiError {
        ApiError::from_response(status, headers, body, SystemTime::now()).redact(self.secret())
    }
}

/// A streamed answer's body, read chunk by chunk under the model answer's cap
/// ([`BodyLimit::Model`], over the whole stream) and the request timeout (per silence).
pub(super) struct StreamBody {
    response: reqwest::Response,
    read: usize,
    idle: Duration,
    status: u16,
    headers: HeaderMap,
}

impl StreamBody {
    /// The next piece of the body, `None` at its end. A silence longer than the request
    /// timeout is a `timeout`, a cut connection a `body` error (both `Network`, retried).
    pub(super) async fn chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        let next = tokio::time::timeout(self.idle, self.response.chunk())
            .await
            .map_err(|_| silent(self.idle, "between two events of the stream"))?
            .map_err(|e| ApiError::from_transport(&e))?;
        let Some(chunk) = next else {
            return Ok(None);
        };
        self.read += chunk.len();
        let cap = BodyLimit::Model.bytes();
        if self.read > cap {
            let host = self.response.url().origin().ascii_serialization();
            let message = format!(
                "the streamed {} from {host} went on past the {} dashbatch reads for it; it \
                 stopped reading there (hint: a genuine answer is far smaller)",
                BodyLimit::Model.what(),
                body::human(cap as u64)
            );
            return Err(ApiError::body_too_large(
                self.status,
                &self.headers,
                message,
            ));
        }
        Ok(Some(chunk))
    }
}

/// The request timeout ran out with nothing heard `when`.
fn silent(idle: Duration, when: &str) -> ApiError {
    ApiError::local(
        super::ErrorKind::Network,
        crate::failure::FailureCode::Timeout,
        format!(
            "nothing arrived {when} for {} s (hint: --request-timeout-s sets this wait)",
            idle.as_secs_f64()
        ),
    )
}

fn bearer(key: &ApiKey) -> Result<HeaderValue, ClientError> {
    // ApiKey only admits visible ASCII, so this cannot fail; the error text never quotes it.
    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        .map_err(|_| ClientError::Http("the API key is not a valid header value".to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_from_sdk_base_strips_the_api_suffix() {
        let root = "https://dashscope.aliyuncs.com";
        for input in [
            "https://dashscope.aliyuncs.com/api/v1",
            "https://dashscope.aliyuncs.com/api/v1/",
            " https://dashscope.aliyuncs.com/api/v1// ",
            "https://dashscope.aliyuncs.com",
            "https://dashscope.aliyuncs.com/",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
        ] {
            assert_eq!(ClientConfig::root_from_sdk_base(input), root, "{input:?}");
        }
        assert_eq!(
            ClientConfig::root_from_sdk_base("http://127.0.0.1:8080/api/v1"),
            "http://127.0.0.1:8080"
        );
        // Only a suffix is stripped, not an inner segment.
        assert_eq!(
            ClientConfig::root_from_sdk_base("http://h/api/v1/proxy"),
            "http://h/api/v1/proxy"
        );
    }

    #[test]
    fn new_rejects_bad_base_urls() {
        let key = ApiKey::new("sk-test").unwrap();
        for bad in ["not a url", "ftp://example.com"] {
            let config = ClientConfig {
                base_url: bad.to_owned(),
                ..ClientConfig::default()
            };
            assert!(matches!(
                Client::new(key.clone(), config),
                Err(ClientError::InvalidBaseUrl { .. })
            ));
        }
    }

    #[test]
    fn authorization_header_is_sensitive_and_debug_hides_the_key() {
        let key = ApiKey::new("sk-verysecret").unwrap();
        let client = Client::new(key, ClientConfig::default()).unwrap();
        assert!(client.inner.auth.is_sensitive());
        assert!(!format!("{:?}", client.inner.auth).contains("verysecret"));
        let debug = format!("{client:?}");
        assert!(!debug.contains("verysecret"), "{debug}");
        assert_eq!(client.key_fingerprint().len(), 16);
    }
}
