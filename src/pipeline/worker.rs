//! Processing one row, start to finish: local checks, upload, model call, result.
//! A worker never fails as a process; everything that goes wrong becomes its row's result.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::failure::{Failure, check_local_file};
use super::pacing::Pacing;
use super::uploads::{RowLog, Uploads};
use crate::dashscope::{
    self, Api, Client, ErrorKind, Media, MediaKind, ModelReply, ModelRequest, RetryPolicy,
};
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
    pub pacing: Pacing,
    /// Cancelled when the whole run must stop dispatching (a rejected API key).
    pub stop: CancellationToken,
    /// Why the run stopped, set once by the first row that saw the reason.
    pub stop_reason: Mutex<Option<String>>,
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
                        self.stop_run(&f.message);
                    }
                    if f.is_throttled() {
                        log.saw_429 += 1;
                    }
                }
                row_result(row, outcome, log, started, &self.manifest)
            }
        }
    }

    /// Fails a row in flight before its next request once the key has been rejected: every
    /// request would carry the same key, and another 401 teaches nothing. The row is
    /// `not_attempted`, so the next run (with a good key) does it.
    fn still_running(&self) -> Result<(), Failure> {
        let reason = self.stop_reason.lock().unwrap_or_else(|p| p.into_inner());
        match reason.as_deref() {
            None => Ok(()),
            Some(reason) => Err(Failure::local(
                "not_attempted",
                format!("not attempted: {reason}"),
            )),
        }
    }

    fn stop_run(&self, message: &str) {
        let mut reason = self.stop_reason.lock().unwrap_or_else(|p| p.into_inner());
        if reason.is_none() {
            *reason = Some(format!(
                "the API key was rejected ({message}); check DASHSCOPE_API_KEY or --api-key-file"
            ));
        }
        self.stop.cancel();
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
        let attempt = || async {
            // Awaited just before the request it guards, so a retry is paced too.
            self.pacing.until_ready(model).await;
            let sent = Instant::now();
            let result = self.client.call_model(self.api, &request).await;
            match &result {
                Ok(_) => self.pacing.on_success(model, sent),
                Err(e) if e.kind == ErrorKind::Throttled => self.pacing.on_throttled(model, sent),
                Err(_) => {}
            }
            result
        };
        let (result, attempts) =
            dashscope::retry(&self.retry, attempt, |err, _| log.on_retry(err)).await;
        log.attempts += attempts;
        result.map_err(|e| Failure::api("model call", e))
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
