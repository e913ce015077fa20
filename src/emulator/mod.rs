//! A local emulator of DashScope's temporary file storage and its multimodal model APIs.
//!
//! Written from the service's public documentation alone, independently of
//! the client in `crate::dashscope`, which it never imports: a misreading in one shows up as
//! a failure against the other.
//!
//! One listener serves everything:
//! - `GET /api/v1/uploads?action=getPolicy&model=M`: upload credentials (`policy`).
//! - `POST /`: OSS PostObject, the upload host (`oss`).
//! - `POST /compatible-mode/v1/chat/completions` and
//!   `POST /api/v1/services/aigc/multimodal-generation/generation`: model calls (`model`).
//! - `GET /__emulator/stats`, `GET /__emulator/config`, `POST /__emulator/clock?advance_s=N`,
//!   `POST /__emulator/arrears?account=A[&paid=true]`: control (`control`).
//!
//! # Layout
//! - `state`: the shared state and the knobs ([`EmulatorConfig`]).
//! - `accounts`: API keys → accounts. `clock`: the advanceable wall clock.
//! - `window`: sliding one-second rate windows. `limits`: the growth-rate and token limits.
//!   `billing`: accounts in arrears. `store`: grants, object metadata,
//!   daily capacity. `stats`: counters.
//! - `conditions`: the POST policy document. `errors`: the three error body shapes.
//! - `model`: the model APIs (parse, parameters, answer, reply, stream).
//! - `faults`: latency and seeded fault injection, as a middleware on every endpoint.
//!
//! It is deliberately not a proxy or a model: nothing is downloaded, file bytes are hashed
//! and forgotten, and answers are deterministic text that shows what the model was given.

mod accounts;
mod billing;
mod clock;
mod conditions;
mod control;
mod errors;
mod faults;
mod limits;
mod model;
mod oss;
mod policy;
mod state;
mod stats;
mod store;
mod window;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use errors::BillingStop;
use errors::{ApiError, Shape, with_allow};
pub use model::{CUT_STREAM, DROP_STREAM, MODERATE_INPUT, MODERATE_OUTPUT};
pub use state::{Burst, DEFAULT_MODELS, DEFAULT_STREAM_ONLY_MODELS, EmulatorConfig};

/// Model-call bodies are small JSON; media travel as URLs. 10 MiB leaves room for inline
/// base64 media without letting one request eat memory.
const JSON_BODY_LIMIT: usize = 10 * 1024 * 1024;

/// The emulator's routes over fresh state built from `config`.
pub fn app(config: EmulatorConfig) -> Router {
    let state = Arc::new(state::State::new(config));
    Router::new()
        // The upload is streamed and hashed, never buffered, so no body limit applies; the
        // policy's content-length-range is the limit.
        .route(
            "/",
            post(oss::post_object)
                .layer(DefaultBodyLimit::disable())
                .fallback(|| async {
                    let err = errors::OssError::method_not_allowed();
                    with_allow(err.response(&oss::oss_request_id()), "POST")
                }),
        )
        .route(
            "/api/v1/uploads",
            get(policy::get_policy).fallback(|| wrong_method(Shape::Native, "GET, HEAD")),
        )
        .route(
            "/compatible-mode/v1/chat/completions",
            post(model::compatible)
                .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
                .fallback(|| wrong_method(Shape::Compatible, "POST")),
        )
        .route(
            "/api/v1/services/aigc/multimodal-generation/generation",
            post(model::native)
                .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
                .fallback(|| wrong_method(Shape::Native, "POST")),
        )
        .route(
            "/__emulator/stats",
            get(control::stats).fallback(|| control::wrong_method("GET, HEAD")),
        )
        .route(
            "/__emulator/config",
            get(control::config).fallback(|| control::wrong_method("GET, HEAD")),
        )
        .route(
            "/__emulator/arrears",
            post(control::arrears).fallback(|| control::wrong_method("POST")),
        )
        .route(
            "/__emulator/clock",
            post(control::advance_clock).fallback(|| control::wrong_method("POST")),
        )
        .fallback(control::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            faults::realism,
        ))
        .with_state(state)
}

/// 405 in a DashScope API's own error shape (axum's default has an empty body).
async fn wrong_method(shape: Shape, allow: &'static str) -> Response {
    let err = ApiError::method_not_allowed();
    with_allow(
        err.response(shape, &state::State::request_id().to_string()),
        allow,
    )
}

/// Serves `app(config)` on `listener` until `shutdown` resolves, then drains gracefully.
/// An unset `config.public_base_url` becomes `http://<listener's address>`, unless that is a
/// wildcard (`0.0.0.0`) no client can dial; then each credential names the `Host` the
/// client used.
pub async fn serve(
    listener: TcpListener,
    mut config: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    if config.public_base_url.is_none() && !addr.ip().is_unspecified() {
        config.public_base_url = Some(format!("http://{addr}"));
    }
    // Small request/response pairs: Nagle's algorithm would add delayed-ACK stalls.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::trace!("cannot set TCP_NODELAY: {err}");
        }
    });
    axum::serve(listener, app(config))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A running emulator on `127.0.0.1`, stopped by [`Running::shutdown`] or on drop.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    base_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Binds `127.0.0.1:0` and serves in a background task; for tests and `run --emulator`.
pub async fn spawn(config: EmulatorConfig) -> std::io::Result<Running> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let base_url = config
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, config, async {
        // A dropped sender also means stop.
        let _ = stopped.await;
    }));
    Ok(Running {
        addr,
        base_url,
        stop: Some(stop),
        task: Some(task),
    })
}

impl Running {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server task.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Without an await we cannot drain; idle keep-alive connections must not keep a
        // dropped emulator alive, so the task is aborted.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
