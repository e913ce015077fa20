//! Realism: per-endpoint latency with jitter, and seeded fault injection, as one middleware
//! in front of every service endpoint (not the `/__emulator` control endpoints).
//!
//! A fault is one of: 500 InternalError, 503, a dropped connection (the handler runs, its
//! side effects happen, then the response body breaks off after the headers, as when a
//! reply is lost), a slow response, or a burst of throttling (this request and the next
//! few on the same endpoint). Each is spoken in the endpoint's own error shape; OSS has no
//! 429 and throttles with 503 `TotalQpsLimitExceeded`.
//!
//! The sequence is a pure function of the seed and the request's arrival index (an atomic
//! counter fed through SplitMix64), so no lock is taken and a seed always yields the same
//! mix. Which concurrent request gets which index depends on scheduling.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::errors::{ApiError, OssError, Shape};
use super::oss::oss_request_id;
use super::policy;
use super::state::State;
use super::stats::bump;

/// Responses are small JSON or XML; a larger one is not cut, just passed through.
const MAX_TRUNCATED_BODY: usize = 1024 * 1024;

/// When a request reached the emulator, on the emulator's clock.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub chrono::DateTime<chrono::Utc>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Credential,
    Upload,
    Compatible,
    Native,
}

impl Endpoint {
    fn of(method: &Method, path: &str) -> Option<Self> {
        match (method, path) {
            (&Method::GET, "/api/v1/uploads") => Some(Self::Credential),
            (&Method::POST, "/") => Some(Self::Upload),
            (&Method::POST, "/compatible-mode/v1/chat/completions") => Some(Self::Compatible),
            (&Method::POST, "/api/v1/services/aigc/multimodal-generation/generation") => {
                Some(Self::Native)
            }
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Internal,
    Unavailable,
    Drop,
    Slow,
    Throttle,
}

#[derive(Debug)]
pub struct Faults {
    rate: f64,
    seed: u64,
    /// Arrival index of the next request: the position in the seeded sequence.
    next: AtomicU64,
    /// Remaining requests of a throttling burst, per endpoint.
    bursts: [AtomicU32; 4],
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Faults {
    pub fn new(rate: f64, seed: u64) -> Self {
        Self {
            rate: if rate.is_finite() {
                rate.clamp(0.0, 1.0)
            } else {
                0.0
            },
            seed,
            next: AtomicU64::new(0),
            bursts: Default::default(),
        }
    }

    /// The fault, if any, for the next request on `endpoint`.
    pub fn roll(&self, endpoint: Endpoint) -> Option<Fault> {
        if self.rate <= 0.0 {
            return None;
        }
        let burst = &self.bursts[endpoint.index()];
        if burst
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Some(Fault::Throttle);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let h = splitmix64(self.seed ^ splitmix64(n));
        let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
        if unit >= self.rate {
            return None;
        }
        let pick = splitmix64(h);
        let fault = match pick % 5 {
            0 => Fault::Internal,
            1 => Fault::Unavailable,
            2 => Fault::Drop,
            3 => Fault::Slow,
            _ => Fault::Throttle,
        };
        if fault == Fault::Throttle {
            // This request and 2..=6 more.
            burst.store(2 + ((pick >> 8) % 5) as u32, Ordering::Relaxed);
        }
        Some(fault)
    }
}

fn latency_of(state: &State, endpoint: Endpoint) -> Duration {
    let config = &state.config;
    let base = match endpoint {
        Endpoint::Credential => config.credential_latency,
        Endpoint::Upload => config.upload_latency,
        Endpoint::Compatible | Endpoint::Native => config.chat_latency,
    };
    let jitter_us = u64::try_from(config.latency_jitter.as_micros()).unwrap_or(u64::MAX);
    let jitter = if jitter_us == 0 {
        Duration::ZERO
    } else {
        Duration::from_micros(rand::random_range(0..=jitter_us))
    };
    base + jitter
}

/// The middleware: latency, then perhaps a fault, then the handler.
pub async fn realism(
    AxumState(state): AxumState<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(endpoint) = Endpoint::of(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    // Before any emulated delay: policy expiry is judged at arrival.
    let arrived = Arrival(state.clock.now());
    let mut request = request;
    request.extensions_mut().insert(arrived);
    let latency = latency_of(&state, endpoint);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Some(fault) = state.faults.roll(endpoint) else {
        return next.run(request).await;
    };
    bump(&state.stats.faults_injected);
    tracing::debug!(?endpoint, ?fault, "injecting a fault");
    match fault {
        Fault::Slow => {
            tokio::time::sleep(state.config.fault_slow).await;
            next.run(request).await
        }
        Fault::Drop => truncate(next.run(request).await).await,
        Fault::Internal | Fault::Unavailable | Fault::Throttle => {
            // The handler never runs, so it cannot count this request in the credential
            // window; count it here (the other faults run the handler, which does).
            if endpoint == Endpoint::Credential {
                policy::record_faulted(&state, request.headers(), request.uri());
            }
            error_response(&state, endpoint, fault)
        }
    }
}

fn error_response(state: &State, endpoint: Endpoint, fault: Fault) -> Response {
    let shape = match endpoint {
        Endpoint::Upload => {
            let err = match fault {
                Fault::Internal => OssError::internal(),
                Fault::Unavailable => OssError::unavailable(),
                _ => OssError::qps_exceeded(),
            };
            state.stats.upload_error(err.code);
            return err.response(&oss_request_id());
        }
        Endpoint::Credential | Endpoint::Native => Shape::Native,
        Endpoint::Compatible => Shape::Compatible,
    };
    let err = match fault {
        Fault::Internal => ApiError::internal(),
        Fault::Unavailable => ApiError::unavailable(),
        _ => ApiError::throttled(),
    };
    if endpoint != Endpoint::Credential {
        state.stats.chat_error(err.code_in(shape));
    }
    err.response(shape, &State::request_id().to_string())
}

/// Keeps the status and headers, sends half the body, then breaks the stream: hyper aborts
/// the connection and the client sees a truncated body.
async fn truncate(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_TRUNCATED_BODY)
        .await
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    parts.headers.remove(header::CONTENT_LENGTH);
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "emulated dropped connection",
        )),
    ];
    Response::from_parts(parts, Body::from_stream(futures::stream::iter(chunks)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_never_faults() {
        let faults = Faults::new(0.0, 1);
        assert!((0..1000).all(|_| faults.roll(Endpoint::Credential).is_none()));
    }

    #[test]
    fn same_seed_same_sequence_and_every_kind_appears() {
        let a = Faults::new(0.3, 42);
        let b = Faults::new(0.3, 42);
        let seq_a: Vec<_> = (0..2000).map(|_| a.roll(Endpoint::Native)).collect();
        let seq_b: Vec<_> = (0..2000).map(|_| b.roll(Endpoint::Native)).collect();
        assert_eq!(seq_a, seq_b);
        for kind in [
            Fault::Internal,
            Fault::Unavailable,
            Fault::Drop,
            Fault::Slow,
            Fault::Throttle,
        ] {
            assert!(seq_a.contains(&Some(kind)), "{kind:?} never injected");
        }
        let faulted = seq_a.iter().filter(|f| f.is_some()).count();
        assert!(
            (400..1000).contains(&faulted),
            "{faulted} faults at rate 0.3"
        );
    }
}
