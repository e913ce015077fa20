//! Orchestration of a run: manifest rows flow through a bounded stream of workers, and each
//! finished row goes to the reporter as one event.
//!
//! ```text
//! manifest reader ──(bounded channel)──> buffer_unordered(concurrency) ──> reporter task
//!  (blocking thread; skips rows          workers: upload, model call        results, stats,
//!   already ok, flags duplicate ids)                                        progress
//! ```
//!
//! Memory is bounded by the channel capacities and the rows in flight, plus 8 bytes per
//! manifest row for the id sets that resume and duplicate detection need. Pacing lives in the
//! client (credential limiter) and in the upload slots; this module decides what runs when,
//! when to stop (a signal, a rejected key, an outage: see [`stop`] and [`outage`]), and
//! leaves the results file complete at the end (see [`compact`]).

pub mod checks;
mod compact;
mod failure;
mod outage;
mod pacing;
mod reader;
mod stop;
mod uploads;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::RunConfig;
use crate::dashscope::{Client, CredentialOptions, Credentials, RetryPolicy};
use crate::failure::FailureCode;
use crate::manifest::{self, Entry, Manifest, ManifestError};
use crate::output::lock::{LockError, RunLock};
use crate::output::reporter::ReportError;
use crate::output::resume::{self, ResumeError};
use crate::output::state::{UploadCache, unix_now};
use crate::output::{Event, Progress, Reporter, RowResult, Stats};

pub use compact::CompactError;
pub use failure::Failure;
use outage::Scope;
use outage::gate::Gate;
use stop::Stop;
pub use stop::StopReason;
use uploads::Uploads;
use worker::Worker;

/// How a run ended, when it got as far as running.
#[derive(Debug)]
pub struct Outcome {
    pub stats: Stats,
    /// Why dispatching stopped early, if it did (a rejected key, an outage, a signal): the
    /// first of them ([`Stop::stopped`]).
    pub stopped: Option<StopReason>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Resume(#[from] ResumeError),
    #[error("results file {path}: {source}")]
    Report { path: PathBuf, source: ReportError },
    /// The rows ran (their lines are in the results file, uncompacted); `stats` are theirs.
    #[error("results file {path}: {source}")]
    Compact {
        path: PathBuf,
        source: CompactError,
        stats: Box<Stats>,
    },
    #[error("an internal task stopped unexpectedly: {0}")]
    Task(String),
}

/// Runs the manifest in `config` with `client`. Cancelling `shutdown` stops dispatching;
/// rows in flight get `config.drain_timeout` to finish. Either way the results file ends with
/// one line per manifest row.
pub async fn run(
    config: &RunConfig,
    client: Client,
    shutdown: CancellationToken,
) -> Result<Outcome, PipelineError> {
    // Taken before the results file is touched, held until the function returns.
    let _lock = RunLock::acquire(&config.output)?;
    // Before the manifest is read: compaction tells whether it changed since.
    let stamp = compact::ManifestStamp::of(&config.manifest);
    let manifest = Manifest::open(&config.manifest)?;
    let extra = manifest.extra_columns();
    let (writer, previous) = resume::open_for_append(&config.output, &extra, config.fresh)?;
    if previous.lines > 0 {
        tracing::info!(
            "resuming: {} of the earlier runs' lines are ok; rows they still answer are skipped",
            previous.done.len()
        );
    }

    // One pass before any work: the row count for the progress bar, and the ids that repeat.
    let scan_path = config.manifest.clone();
    let ids = tokio::task::spawn_blocking(move || manifest::scan_ids(&scan_path))
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))??;
    let duplicates = Arc::new(ids.duplicates);

    // Capacity: enough to keep the reporter busy while workers finish rows in bursts; each
    // event is one boxed row, so memory stays at a few hundred rows.
    let (events, events_rx) = mpsc::channel(config.concurrency.clamp(64, 1024));
    let reporter = Reporter::new(writer, Stats::default(), Progress::detect(config.quiet));
    let reporter_task = tokio::spawn(reporter.run(events_rx));
    let _ = events.send(Event::Total(ids.rows)).await;

    let (rows_tx, mut rows) = mpsc::channel::<Entry>(config.concurrency.max(16));
    let reader_events = events.clone();
    let reader_duplicates = Arc::clone(&duplicates);
    let reader = tokio::task::spawn_blocking(move || {
        reader::read(
            manifest,
            &previous.done,
            &reader_duplicates,
            rows_tx,
            reader_events,
        )
    });

    let cache = Arc::new(UploadCache::open(
        &config.state_dir,
        &cache_account(&client),
        unix_now(),
    ));
    let stop = Arc::new(Stop::new(&shutdown));
    let gate = Gate::new(
        &client.config().base_url,
        config.outage_timeout,
        Arc::clone(&stop),
    );
    // Every request goes through the gate: getPolicy's (inside `Credentials`) and the
    // uploads' by their retry policies, the model calls' by the worker's per-model policy.
    let watched = |scopes| RetryPolicy {
        watch: Some(gate.watch(scopes)),
        ..config.retry.clone()
    };
    let credentials = Credentials::new(
        client.clone(),
        CredentialOptions {
            retry: RetryPolicy {
                watch: Some(gate.watch(vec![Scope::Service, Scope::Credentials])),
                ..config.credentials.retry.clone()
            },
            ..config.credentials.clone()
        },
    );
    let worker = Arc::new(Worker {
        manifest: config.manifest.clone(),
        client: client.clone(),
        uploads: Uploads::new(
            client,
            credentials.clone(),
            Arc::clone(&cache),
            watched(vec![Scope::Uploads]),
            config.upload_concurrency,
        ),
        api: config.api,
        retry: config.retry.clone(),
        pacing: Arc::new(pacing::Pacing::new(config.model_rps)),
        stop: Arc::clone(&stop),
        gate: Arc::clone(&gate),
        model_retry: Mutex::new(HashMap::new()),
        streamed: Mutex::default(),
    });

    dispatch(
        &mut rows,
        &worker,
        config.concurrency,
        &events,
        config.drain_timeout,
    )
    .await;
    // Closing the channel releases the reader if it is blocked on a full channel.
    drop(rows);
    let _ = reader.await;
    drop(events);

    let report_err = |source| PipelineError::Report {
        path: config.output.clone(),
        source,
    };
    let mut reporter = reporter_task
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))?
        .map_err(report_err)?;
    reporter.stats_mut().credential_calls = credentials.fetches();
    let stats = reporter.stats_mut();
    // What the rows' lines miss: getPolicy's retries (no row's own, see `Gate`), and 429s
    // (the gate sees them all; a row records only those it retried and its last).
    for (cause, n) in gate.credential_retries() {
        *stats.retries.entry(cause).or_default() += n;
    }
    stats.throttled_seen = gate.throttled();
    // Rows the run stopped in flight wrote `not_attempted` lines: they count with the rows
    // it never reached (added after compaction), not as failures.
    if let Some(n) = stats.failures.remove(&FailureCode::NotAttempted.into()) {
        stats.rows_failed = stats.rows_failed.saturating_sub(n);
        stats.rows_not_attempted = n;
    }
    reporter.stats_mut().model_pace = worker.pacing.rates();
    let (mut stats, file) = reporter
        .finish()
        .map_err(|e| report_err(ReportError::Sync(e)))?;
    drop(file);

    let stopped = stop.stopped();
    let reason = stopped
        .as_ref()
        .map_or_else(|| "the run ended".to_owned(), ToString::to_string);
    let (manifest_path, output) = (config.manifest.clone(), config.output.clone());
    let compacted = tokio::task::spawn_blocking(move || {
        compact::compact(
            &manifest_path,
            &output,
            &extra,
            &reason,
            &duplicates,
            &stamp,
            compact::WINDOW,
        )
    })
    .await
    .map_err(|e| PipelineError::Task(e.to_string()))?
    .map_err(|source| PipelineError::Compact {
        path: config.output.clone(),
        source,
        stats: Box::new(stats.clone()),
    })?;
    compacted.record(&mut stats);
    if let Err(err) = cache.compact(unix_now()) {
        tracing::warn!("cannot tidy the upload cache: {err}");
    }
    Ok(Outcome { stats, stopped })
}

/// Feeds rows to at most `concurrency` workers until the manifest ends or the run stops.
/// Once it stops (a signal, a rejected key, an outage), rows in flight get `drain` to
/// finish; rows still running then are abandoned (compaction writes them as
/// `not_attempted`).
async fn dispatch(
    rows: &mut mpsc::Receiver<Entry>,
    worker: &Arc<Worker>,
    concurrency: usize,
    events: &mpsc::Sender<Event>,
    drain: Duration,
) {
    let stop = worker.stop.dispatch().clone();
    let incoming = futures::stream::poll_fn(|cx| rows.poll_recv(cx));
    let results = incoming
        .take_until(stop.clone().cancelled_owned())
        .map(|entry| {
            let worker = Arc::clone(worker);
            async move { worker.process(entry).await }
        })
        .buffer_unordered(concurrency.max(1));
    futures::pin_mut!(results);
    let drain_deadline = async {
        stop.cancelled().await;
        tracing::warn!(
            "stopping: no new rows; waiting up to {}s for rows in flight",
            drain.as_secs()
        );
        tokio::time::sleep(drain).await;
    };
    futures::pin_mut!(drain_deadline);
    loop {
        tokio::select! {
            result = results.next() => match result {
                Some(result) => {
                    if events.send(Event::Row(Box::new(result))).await.is_err() {
                        // The reporter failed to write; nothing more can be saved.
                        stop.cancel();
                        return;
                    }
                }
                None => return,
            },
            () = &mut drain_deadline => {
                tracing::warn!("drain timeout: abandoning the rows still in flight");
                return;
            }
        }
    }
}

/// Who the upload cache's records belong to: the key's fingerprint together with the service
/// root, since an `oss://` URL is only valid at the service that issued it (an emulator on
/// another port is another service). Hashed, so the state file holds neither.
fn cache_account(client: &Client) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(client.key_fingerprint().as_bytes());
    hasher.update([0]);
    hasher.update(client.config().base_url.as_bytes());
    hex::encode(&hasher.finalize()[..8])
}

/// The line of a row that never ran.
fn not_attempted(entry: Entry, reason: &str) -> RowResult {
    let bad = match entry {
        Entry::Bad(bad) => bad,
        Entry::Row(row) => row.into_bad(
            FailureCode::NotAttempted,
            format!("not attempted: {reason}; the next run will process it"),
        ),
    };
    worker::bad_row_result(bad, std::time::Instant::now())
}
