//! Processing one row, start to finish: each media item made ready (local checks, upload;
//! see [`prepare`]), the model call, the result.
//! A worker never fails as a process; everything that goes wrong becomes its row's result.

mod prepare;
mod refusals;

pub use refusals::Refusals;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use self::prepare::Prepared;
use super::failure::Failure;
use super::outage::Scope;
use super::outage::gate::Gate;
use super::pacing::{Outcome, Pacing};
use super::stop::{Stop, StopReason};
use super::uploads::{RowLog, Uploads};
use futures::future::BoxFuture;

use crate::dashscope::model::{answers_only_as_stream, refused_without_stream};
use crate::dashscope::retry::{Ticket, Watch};
use crate::dashscope::{
    self, Api, ApiError, Client, ErrorKind, ModelReply, ModelRequest, RetryPolicy, Streaming,
};
use crate::failure::FailureCode;
use crate::limit::Cost;
use crate::manifest::{BadRow, Entry, Row};
use crate::output::{RowResult, Status, Tokens, UploadOutcome};

pub struct Worker {
    /// The manifest, named in every row's error message with the row's line.
    pub manifest: std::path::PathBuf,
    pub client: Client,
    pub uploads: Uploads,
    pub api: Api,
    /// The run's generation parameters; a row's own go over them key by key.
    pub params: serde_json::Map<String, serde_json::Value>,
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
    /// Models refused for good in this run: their rows fail without a call.
    pub refusals: Arc<Refusals>,
    /// Models the service refused without a stream in this run (`--stream auto`), streamed
    /// from then on. Held for a lookup or an insert, never across an await.
    pub streamed: Mutex<HashSet<String>>,
}

/// What a successful row carries into its result.
struct Done {
    reply: ModelReply,
    /// The row's media as the model was given them, in the row's order.
    media: Vec<Prepared>,
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
                    self.refusals.record(&row.model, f);
                }
                // (A 401 has stopped the run already: the gate saw it answered.)
                if let Err(f) = &outcome
                    && f.is_throttled()
                {
                    log.saw_429 += 1;
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
                FailureCode::NotAttempted,
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
                refusals: Arc::clone(&self.refusals),
            })),
            ..self.retry.clone()
        };
        policies.insert(model, policy.clone());
        policy
    }

    async fn run_row(&self, row: &Row, log: &mut RowLog) -> Result<Done, Failure> {
        if let Some(refused) = self.refusals.refused(&row.model) {
            return Err(refused);
        }
        let mut media = Vec::with_capacity(row.media.len());
        for item in &row.media {
            media.push(self.prepare(&row.model, item, None, log).await?);
        }
        let reply = match self.call(row, &media, log).await {
            // A URL of temporary storage may have expired or been lost since its upload (of
            // this run, or an earlier one found in the upload cache). The model does not say
            // which URL it means: one fresh upload of each local file, one more call.
            Err(f)
                if f.kind == Some(ErrorKind::InvalidOssUrl)
                    && media.iter().any(Prepared::uploaded) =>
            {
                log.retries.push(ErrorKind::InvalidOssUrl.as_str());
                for (item, prepared) in row.media.iter().zip(&mut media) {
                    if prepared.uploaded() {
                        let rejected = Some(prepared.media.url.as_str());
                        *prepared = self.prepare(&row.model, item, rejected, log).await?;
                    }
                }
                self.call(row, &media, log).await?
            }
            other => other?,
        };
        Ok(Done { reply, media })
    }

    async fn call(
        &self,
        row: &Row,
        media: &[Prepared],
        log: &mut RowLog,
    ) -> Result<ModelReply, Failure> {
        let request = ModelRequest {
            model: row.model.clone(),
            prompt: row.prompt.clone(),
            system: row.system.clone(),
            media: media.iter().map(|p| p.media.clone()).collect(),
            params: {
                let mut params = self.params.clone();
                params.extend(row.params.clone().unwrap_or_default());
                params
            },
        };
        self.still_running()?;
        let model = row.model.as_str();
        let mode = self.client.config().stream;
        let stream = self.streams(mode, model);
        let (result, attempts) = self.call_as(&request, stream, log).await;
        let result = match result {
            // A model that answers only as a stream, learnt from its refusal: the row goes
            // again as a stream, and the refusal is neither a failure nor one of its attempts.
            Err(e) if mode == Streaming::Auto && !stream && refused_without_stream(&e) => {
                self.learn_streamed(model);
                self.still_running()?;
                let (result, attempts) = self.call_as(&request, true, log).await;
                log.attempts += attempts;
                result
            }
            other => {
                log.attempts += attempts;
                other
            }
        };
        if let Ok(reply) = &result {
            self.pacing.learn_tokens(model, reply.usage.total_tokens);
        }
        result.map_err(|e| Failure::api("model call", e))
    }

    /// One model call with its retries, streamed or not; returns how many attempts it made.
    async fn call_as(
        &self,
        request: &ModelRequest,
        stream: bool,
        log: &mut RowLog,
    ) -> (Result<ModelReply, ApiError>, u32) {
        // Paced by the policy's watch (see `Paced`), so a retry is paced too.
        let attempt = || async move {
            if stream {
                self.client.call_model_streamed(self.api, request).await
            } else {
                self.client.call_model(self.api, request).await
            }
        };
        let policy = self.model_retry(&request.model);
        dashscope::retry(&policy, attempt, |err, _| log.on_retry(err)).await
    }

    /// Whether `model`'s calls ask for a stream under `mode`.
    fn streams(&self, mode: Streaming, model: &str) -> bool {
        match mode {
            Streaming::Always => true,
            Streaming::Never => false,
            Streaming::Auto => {
                answers_only_as_stream(model)
                    || self
                        .streamed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(model)
            }
        }
    }

    /// Remembers that `model` answers only as a stream; says so once per model per run.
    fn learn_streamed(&self, model: &str) {
        let mut streamed = self.streamed.lock().unwrap_or_else(|p| p.into_inner());
        if streamed.insert(model.to_owned()) {
            tracing::info!(
                model,
                "the service answers this model only as a stream; its calls stream from now on"
            );
        }
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
    /// Checked once the pacer lets a call go: a model refused while the call queued is
    /// not called again.
    refusals: Arc<Refusals>,
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
                // Settled in `answered`, which sees the attempt's answer; a call refused
                // here was never sent and teaches the pace nothing.
                permit = self.pacing.acquire(&self.model, Cost::REQUEST) => {
                    match self.refusals.refused_call(&self.model) {
                        Some(refused) => Err(refused),
                        None => Ok(Ticket {
                            admitted: Some(permit.sent()),
                            ..ticket
                        }),
                    }
                }
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

fn row_result(
    row: Row,
    outcome: Result<Done, Failure>,
    log: RowLog,
    started: Instant,
    manifest: &Path,
) -> RowResult {
    let line = row.line;
    // The results line names the `file` column, the first media item.
    let file = row.media.into_iter().next().map(|m| m.file);
    let mut result = RowResult {
        id: row.id,
        line: row.line,
        model: row.model,
        file: file.unwrap_or_default(),
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
            result.reasoning = done.reply.reasoning.unwrap_or_default();
            result.finish_reason = done.reply.finish_reason.unwrap_or_default();
            let u = done.reply.usage;
            result.tokens = Some(Tokens {
                prompt: u.prompt_tokens,
                completion: u.completion_tokens,
                total: u.total_tokens,
            });
            // One `oss_url` and one `upload` per line: see `media_columns`.
            (result.oss_url, result.upload) = media_columns(&done.media);
            result.request_id = done.reply.request_id.unwrap_or_default();
        }
        Err(f) => {
            result.status = Status::Failed;
            result.error_code = Some(f.code);
            result.error_message = format!("{}, line {line}: {}", manifest.display(), f.message);
            result.request_id = f.request_id.unwrap_or_default();
        }
    }
    result
}

/// What a results line says of a row's media. One file: its temporary URL (empty for a URL
/// the row gave) and how it got it. Several: the URLs in file order, separated by a space,
/// `-` for a file without a temporary URL; and the strongest outcome among the files (`new`
/// over `reused` over `cached` over `none`), so that `upload=new` still means "this row
/// paid for an upload".
fn media_columns(media: &[Prepared]) -> (String, UploadOutcome) {
    let strength = |u: &UploadOutcome| match u {
        UploadOutcome::New => 3,
        UploadOutcome::Reused => 2,
        UploadOutcome::Cached => 1,
        UploadOutcome::None => 0,
    };
    let upload = media
        .iter()
        .map(|p| p.upload)
        .max_by_key(strength)
        .unwrap_or_default();
    let oss_url = match media {
        [one] => one.oss_url().to_owned(),
        _ => media
            .iter()
            .map(|p| match p.oss_url() {
                "" => "-",
                url => url,
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    (oss_url, upload)
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
        error_code: Some(bad.code.into()),
        error_message: bad.message,
        latency_ms: started.elapsed().as_millis() as u64,
        finished_at: chrono::Utc::now(),
        extra: bad.extra,
        ..RowResult::default()
    }
}

#[cfg(test)]
mod tests;
