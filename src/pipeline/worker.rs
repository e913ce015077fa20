//! Processing one row, start to finish: local checks, upload, model call, result.
//! A worker never fails as a process; everything that goes wrong becomes its row's result.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::failure::{Failure, NOT_ATTEMPTED, check_local_file};
use super::outage::Scope;
use super::outage::gate::Gate;
use super::pacing::{Outcome, Pacing};
use super::stop::{Stop, StopReason};
use super::uploads::{RowLog, Uploads};
use futures::future::BoxFuture;

use crate::dashscope::retry::{Ticket, Watch};
use crate::dashscope::{
    self, Api, ApiError, Client, ErrorKind, Media, MediaKind, ModelReply, ModelRequest, RetryPolicy,
};
use crate::limit::Cost;
use crate::manifest::{BadRow, Entry, Row, Source};
use crate::output::{RowResult, Status, Tokens, UploadOutcome};

pub struct Worker {
    /// The manifest, named in every row's error message with the row's line.
    pub manifest: std::path::PathBuf,
    pub client: Client,
    pub uploads: Uploads,
    pub api: Api,
    pub retry: RetryPolicy,
    /// Per-model pacing of model calls, steered by 429s.
    pub pacing: Arc<Pacing>,
    /// The run's stop switch: a rejected key, an outage, a signal.
    pub stop: Arc<Stop>,
    /// Holds requests while the service or a model is down (see [`super::outage`]).
    pub gate: Arc<Gate>,
    /// `retry` with the gate's watch for each model's calls, made once per model. The lock
    /// is held for a lookup (and, once per model, an insert), never across an await.
    pub model_retry: Mutex<HashMap<Arc<str>, RetryPolicy>>,
}

/// What a successful row carries into its result.
struct Done {
    reply: ModelReply,
    url: String,
    upload: UploadOutcome,
}

impl Worker {
    pub async fn process(&self, entry: Entry) -> RowResult {
        let started = Instant::now();
        match entry {
            Entry::Bad(bad) => bad_row_result(bad, started),
            Entry::Row(row) => {
                let mut log = RowLog::default();
                let outcome = self.run_row(&row, &mut log).await;
                if let Err(f) = &outcome {
                    if f.is_unauthorized() {
                        self.stop.stop(StopReason::KeyRejected(format!(
                            "the API key was rejected ({}); check DASHSCOPE_API_KEY or \
                             --api-key-file",
                            f.message
                        )));
                    }
                    if f.is_throttled() {
                        log.saw_429 += 1;
                    }
                }
                row_result(row, outcome, log, started, &self.manifest)
            }
        }
    }

    /// Fails a row in flight before its next stage once the run has stopped for a reason (a
    /// rejected key: every request would carry it, and another 401 teaches nothing; an
    /// outage). The row is `not_attempted`, so the next run does it.
    fn still_running(&self) -> Result<(), Failure> {
        match self.stop.reason() {
            None => Ok(()),
            Some(reason) => Err(Failure::local(
                NOT_ATTEMPTED,
                format!("not attempted: {reason}"),
            )),
        }
    }

    /// The retry policy of `model`'s calls: the run's, watched by the gate for the service
    /// and for the model, and by the model's pacer.
    fn model_retry(&self, model: &str) -> RetryPolicy {
        let mut policies = self.model_retry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(policy) = policies.get(model) {
            return policy.clone();
        }
        let model: Arc<str> = Arc::from(model);
        let gate = self
            .gate
            .watch(vec![Scope::Service, Scope::Model(Arc::clone(&model))]);
        let policy = RetryPolicy {
            watch: Some(Arc::new(Paced {
                gate,
                pacing: Arc::clone(&self.pacing),
                model: Arc::clone(&model),
                stop: Arc::clone(&self.stop),
            })),
            ..self.retry.clone()
        };
        policies.insert(model, policy.clone());
        policy
    }

    async fn run_row(&self, row: &Row, log: &mut RowLog) -> Result<Done, Failure> {
        let kind = media_kind(&row.source, &row.file)?;
        match &row.source {
            Source::Local(path) => {
                let metadata = check_local_file(path)?;
                let mut content = self.uploads.content(&row.model, path, &metadata).await?;
                self.still_running()?;
                let up = self
                    .uploads
                    .ensure(&row.model, path, &mut content, None, log)
                    .await?;
                match self.call(row, kind, &up.url, log).await {
                    // The URL may have expired or been lost since this run uploaded it:
                    // one fresh upload, one more call.
                    Err(f) if f.kind == Some(ErrorKind::InvalidOssUrl) => {
                        log.retries.push("invalid_oss_url");
                        let up = self
                            .uploads
                            .ensure(&row.model, path, &mut content, Some(&up.url), log)
                            .await?;
                        let reply = self.call(row, kind, &up.url, log).await?;
                        Ok(Done {
                            reply,
                            url: up.url,
                            upload: up.outcome,
                        })
                    }
                    other => Ok(Done {
                        reply: other?,
                        url: up.url,
                        upload: up.outcome,
                    }),
                }
            }
            Source::Oss(url) | Source::Http(url) => {
                let reply = self.call(row, kind, url, log).await?;
                Ok(Done {
                    reply,
                    url: if matches!(row.source, Source::Oss(_)) {
                        url.clone()
                    } else {
                        String::new()
                    },
                    upload: UploadOutcome::None,
                })
            }
        }
    }

    async fn call(
        &self,
        row: &Row,
        kind: MediaKind,
        url: &str,
        log: &mut RowLog,
    ) -> Result<ModelReply, Failure> {
        let request = ModelRequest {
            model: row.model.clone(),
            prompt: row.prompt.clone(),
            system: row.system.clone(),
            media: Some(Media {
                kind,
                url: url.to_owned(),
                format: (kind == MediaKind::Audio).then(|| extension(&row.file)),
            }),
        };
        self.still_running()?;
        let model = row.model.as_str();
        // Paced by the policy's watch (see `Paced`), so a retry is paced too.
        let attempt = || async { self.client.call_model(self.api, &request).await };
        let policy = self.model_retry(model);
        let (result, attempts) =
            dashscope::retry(&policy, attempt, |err, _| log.on_retry(err)).await;
        log.attempts += attempts;
        result.map_err(|e| Failure::api("model call", e))
    }
}

/// The watch of one model's calls: the outage gate's, then the model's pacer, awaited just
/// before the call it guards. Part of admission rather than of the call, so that a call that
/// the run's stop refuses while it queues for the pacer is never counted as sent; and a paced
/// queue can be long, which a stopping run does not wait out.
struct Paced {
    gate: Arc<dyn Watch>,
    pacing: Arc<Pacing>,
    model: Arc<str>,
    stop: Arc<Stop>,
}

impl std::fmt::Debug for Paced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paced")
            .field("gate", &self.gate)
            .field("model", &self.model)
            .finish()
    }
}

impl Watch for Paced {
    fn admit(&self) -> BoxFuture<'_, Result<Ticket, ApiError>> {
        Box::pin(async move {
            let ticket = self.gate.admit().await?;
            tokio::select! {
                // Settled in `answered`, which sees the attempt's answer.
                permit = self.pacing.acquire(&self.model, Cost::REQUEST) => Ok(Ticket {
                    admitted: Some(permit.sent()),
                    ..ticket
                }),
                () = self.stop.refused() => {
                    let reason = self.stop.reason().cloned();
                    Err(reason.unwrap_or(StopReason::Interrupted).refusal())
                }
            }
        })
    }

    fn answered(&self, ticket: Ticket, result: Result<(), &ApiError>) -> bool {
        if let Some(sent) = ticket.admitted {
            self.pacing.settle(&self.model, sent, Outcome::of(result));
        }
        self.gate.answered(ticket, result)
    }

    fn retried(&self, err: &ApiError) {
        self.gate.retried(err);
    }

    fn wake(&self) -> BoxFuture<'static, ()> {
        self.gate.wake()
    }
}

/// The media kind of a row, from the extension of its file or URL path.
fn media_kind(source: &Source, file: &str) -> Result<MediaKind, Failure> {
    let path = match source {
        Source::Local(p) => p.clone(),
        // The query string and fragment are not part of the file name.
        Source::Oss(u) | Source::Http(u) => u.split(['?', '#']).next().unwrap_or(u).into(),
    };
    MediaKind::from_path(&path).ok_or_else(|| {
        Failure::local(
            "unsupported_media",
            format!(
                "cannot tell the media kind of {file:?} from its extension; \
                 use an image (.png, .jpg, ...), video (.mp4, ...) or audio (.mp3, .wav, ...) file"
            ),
        )
    })
}

fn extension(file: &str) -> String {
    Path::new(file.split(['?', '#']).next().unwrap_or(file))
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn row_result(
    row: Row,
    outcome: Result<Done, Failure>,
    log: RowLog,
    started: Instant,
    manifest: &Path,
) -> RowResult {
    let line = row.line;
    let mut result = RowResult {
        id: row.id,
        line: row.line,
        model: row.model,
        file: row.file,
        prompt: row.prompt,
        status: Status::Ok,
        attempts: log.attempts,
        latency_ms: started.elapsed().as_millis() as u64,
        finished_at: chrono::Utc::now(),
        extra: row.extra,
        retries: log.retries,
        saw_429: log.saw_429,
        input_digest: row.input_digest,
        ..RowResult::default()
    };
    match outcome {
        Ok(done) => {
            result.response = done.reply.text;
            result.finish_reason = done.reply.finish_reason.unwrap_or_default();
            let u = done.reply.usage;
            result.tokens = Some(Tokens {
                prompt: u.prompt_tokens,
                completion: u.completion_tokens,
                total: u.total_tokens,
            });
            result.oss_url = done.url;
            result.upload = done.upload;
            result.request_id = done.reply.request_id.unwrap_or_default();
        }
        Err(f) => {
            result.status = Status::Failed;
            result.error_code = f.code;
            result.error_message = format!("{}, line {line}: {}", manifest.display(), f.message);
            result.request_id = f.request_id.unwrap_or_default();
        }
    }
    result
}

/// A row that never reached a worker's network code.
pub fn bad_row_result(bad: BadRow, started: Instant) -> RowResult {
    RowResult {
        id: bad.id,
        line: bad.line,
        model: bad.model,
        file: bad.file,
        prompt: bad.prompt,
        status: Status::Failed,
        error_code: bad.code.to_owned(),
        error_message: bad.message,
        latency_ms: started.elapsed().as_millis() as u64,
        finished_at: chrono::Utc::now(),
        extra: bad.extra,
        ..RowResult::default()
    }
}
