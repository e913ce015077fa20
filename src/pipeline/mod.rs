//! Orchestration of a run: each manifest row runs as a task of its own, at most
//! `concurrency` at once, and each finished row goes to the reporter as one event.
//!
//! ```text
//! manifest reader ──(bounded channel)──> dispatch: one task per row, ──> reporter
//!  (blocking thread; skips rows           at most `concurrency`           (its own thread:
//!   already ok, flags duplicate ids)      (upload, model call)            results, stats,
//!                                                                          progress)
//! ```
//!
//! A run is three steps: [`prepare`] (locks, scans and the cache load, on the blocking pool;
//! the reporter, the reader and the worker started), [`dispatch`] (rows as tasks across the
//! runtime's threads) and [`finish`] (statistics completed, compaction, on the blocking pool).
//!
//! Memory is bounded by the channel capacities and the rows in flight, plus 8 bytes per
//! manifest row for the id sets that resume and duplicate detection need. Pacing lives in
//! [`crate::limit`] (upload credentials and model calls, the latter steered by [`pacing`])
//! and in the upload slots; this module decides what runs when, when to stop (a signal, a
//! rejected key, an outage: see [`stop`] and [`outage`]), and leaves the results file
//! complete at the end (see [`compact`]).

pub mod checks;
mod compact;
mod dispatch;
mod failure;
mod finish;
pub mod merge;
mod outage;
mod pacing;
mod prepare;
mod reader;
mod stop;
mod uploads;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::RunConfig;
use crate::dashscope::Client;
use crate::failure::FailureCode;
use crate::manifest::{Entry, ManifestError};
use crate::output::lock::LockError;
use crate::output::reporter::ReportError;
use crate::output::results::resume::ResumeError;
use crate::output::{Event, RowResult, Stats};

pub use compact::CompactError;
pub use failure::Failure;
use stop::Stop;
pub use stop::StopReason;

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
    /// `--redis` could not be reached at the start; nothing was sent.
    #[error(transparent)]
    Redis(#[from] crate::shared::ConnectError),
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
    let stop = Arc::new(Stop::new(&shutdown));
    let mut prepared = prepare::prepare(config, client, Arc::clone(&stop)).await?;
    let worker = Arc::clone(&prepared.worker);
    let paces = tokio::spawn(sample_paces(
        Arc::clone(&prepared.worker),
        prepared.events.clone(),
    ));
    dispatch::dispatch(
        &mut prepared.rows,
        move |entry| {
            let worker = Arc::clone(&worker);
            async move { worker.process(entry).await }
        },
        stop.dispatch(),
        config.concurrency,
        &prepared.events,
        config.drain_timeout,
    )
    .await;
    // Its sender must be gone before the reporter can end.
    paces.abort();
    let _ = paces.await;
    finish::finish(prepared, config).await
}

/// Sends the paced models' current paces to the reporter every second, for the progress
/// display; the summary takes the final ones from the worker.
async fn sample_paces(worker: Arc<worker::Worker>, events: mpsc::Sender<Event>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last = std::collections::BTreeMap::new();
    loop {
        tick.tick().await;
        let paces = worker.pacing.rates();
        if paces != last {
            last.clone_from(&paces);
            if events.send(Event::Paces(paces)).await.is_err() {
                return;
            }
        }
    }
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
