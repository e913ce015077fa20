//! Orchestration of a run: manifest rows flow through a bounded stream of workers, and each
//! finished row goes to the reporter as one event.
//!
//! ```text
//! manifest reader ──(bounded channel)──> buffer_unordered(concurrency) ──> reporter task
//!  (blocking thread)                      workers: upload, model call        results, stats,
//!                                                                            progress
//! ```
//!
//! Memory is bounded by the channel capacities and the number of rows in flight, never by the
//! manifest's size. Pacing lives in the client (credential limiter) and in the upload slots;
//! this module only decides what runs when and when to stop.

mod failure;
mod uploads;
mod worker;

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::RunConfig;
use crate::dashscope::{Client, Credentials};
use crate::manifest::{self, Entry, Manifest, ManifestError};
use crate::output::reporter::ReportError;
use crate::output::{Event, Progress, Reporter, ResultsWriter, RowResult, Stats, Status};

pub use failure::Failure;
use uploads::Uploads;
use worker::Worker;

/// How a run ended, when it got as far as running.
#[derive(Debug)]
pub struct Outcome {
    pub stats: Stats,
    /// Why dispatching stopped early, if it did (a rejected key, a signal).
    pub stopped: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot create results file {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("results file {path}: {source}")]
    Report { path: PathBuf, source: ReportError },
    #[error("the reporter task stopped unexpectedly: {0}")]
    Reporter(String),
}

/// Runs the manifest in `config` with `client`. Cancelling `shutdown` stops dispatching;
/// rows in flight finish and rows never started are written as `not_attempted`.
pub async fn run(
    config: &RunConfig,
    client: Client,
    shutdown: CancellationToken,
) -> Result<Outcome, PipelineError> {
    let manifest = Manifest::open(&config.manifest)?;
    let extra = manifest.extra_columns();
    let out_err = |source| PipelineError::Output {
        path: config.output.clone(),
        source,
    };
    let file = File::create(&config.output).map_err(out_err)?;
    let writer =
        ResultsWriter::new(file, &extra, true).map_err(|e| out_err(std::io::Error::other(e)))?;

    // Capacity: enough to keep the reporter busy while workers finish rows in bursts; each
    // event is one boxed row, so memory stays at a few hundred rows.
    let (events, events_rx) = mpsc::channel(config.concurrency.clamp(64, 1024));
    let reporter = Reporter::new(writer, Stats::default(), Progress::detect(config.quiet));
    let reporter_task = tokio::spawn(reporter.run(events_rx));

    spawn_row_count(config.manifest.clone(), events.clone());
    // The reader runs ahead of the workers by at most one channel's worth of rows.
    let (rows_tx, mut rows) = mpsc::channel::<Entry>(config.concurrency.max(16));
    tokio::task::spawn_blocking(move || {
        for entry in manifest {
            if rows_tx.blocking_send(entry).is_err() {
                break; // the run stopped; the remaining rows are not needed
            }
        }
    });

    let credentials = Credentials::new(client.clone(), config.credentials.clone());
    let worker = Arc::new(Worker {
        client: client.clone(),
        uploads: Uploads::new(
            client,
            credentials.clone(),
            config.retry.clone(),
            config.upload_concurrency,
        ),
        api: config.api,
        retry: config.retry.clone(),
        stop: shutdown.child_token(),
        stop_reason: Mutex::new(None),
    });

    let reporter_alive = dispatch(&mut rows, &worker, config.concurrency, &events).await;

    let stopped = worker
        .stop_reason
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .or_else(|| shutdown.is_cancelled().then(|| "interrupted".to_owned()));
    if let (Some(reason), true) = (&stopped, reporter_alive) {
        // Nothing is lost: every row not started still gets its line, and a rerun retries it.
        while let Some(entry) = rows.recv().await {
            let result = not_attempted(entry, reason);
            if events.send(Event::Row(Box::new(result))).await.is_err() {
                break;
            }
        }
    }
    drop(rows);
    drop(events);

    let report_err = |source| PipelineError::Report {
        path: config.output.clone(),
        source,
    };
    let mut reporter = reporter_task
        .await
        .map_err(|e| PipelineError::Reporter(e.to_string()))?
        .map_err(report_err)?;
    reporter.stats_mut().credential_calls = credentials.fetches();
    let (stats, _file) = reporter
        .finish()
        .map_err(|e| report_err(ReportError::Sync(e)))?;
    Ok(Outcome { stats, stopped })
}

/// Feeds rows to at most `concurrency` workers until the manifest ends or the run stops.
/// Returns false when the reporter is gone (it failed to write), so nothing more can be saved.
async fn dispatch(
    rows: &mut mpsc::Receiver<Entry>,
    worker: &Arc<Worker>,
    concurrency: usize,
    events: &mpsc::Sender<Event>,
) -> bool {
    let incoming = futures::stream::poll_fn(|cx| rows.poll_recv(cx));
    let results = incoming
        .take_until(worker.stop.clone().cancelled_owned())
        .map(|entry| {
            let worker = Arc::clone(worker);
            async move { worker.process(entry).await }
        })
        .buffer_unordered(concurrency.max(1));
    futures::pin_mut!(results);
    while let Some(result) = results.next().await {
        if events.send(Event::Row(Box::new(result))).await.is_err() {
            worker.stop.cancel();
            return false;
        }
    }
    true
}

/// Counts the manifest's records in the background so the progress bar can show a total
/// without holding the manifest in memory.
fn spawn_row_count(path: PathBuf, events: mpsc::Sender<Event>) {
    tokio::task::spawn_blocking(move || {
        if let Ok(total) = manifest::count_rows(&path) {
            let _ = events.blocking_send(Event::Total(total));
        }
    });
}

fn not_attempted(entry: Entry, reason: &str) -> RowResult {
    let mut result = worker::bad_row_result(
        match entry {
            Entry::Bad(bad) => return worker::bad_row_result(bad, Instant::now()),
            Entry::Row(row) => manifest::BadRow {
                line: row.line,
                id: row.id,
                model: row.model,
                file: row.file,
                prompt: row.prompt,
                extra: row.extra,
                code: "not_attempted",
                message: String::new(),
            },
        },
        Instant::now(),
    );
    result.status = Status::Failed;
    result.error_message = format!("not attempted: {reason}; the next run will process it");
    result
}
