//! The end of a run: the reporter's statistics completed with what only the run knows, the
//! results file compacted to one line per manifest row, and the upload cache tidied.
//!
//! The file work (the last flush, compaction, the cache rewrite) runs on the blocking pool.

use crate::config::RunConfig;
use crate::output::reporter::ReportError;
use crate::output::{Reporter, Stats};
use crate::upload_cache::unix_now;

use super::prepare::Prepared;
use super::{Outcome, PipelineError, compact};
use crate::failure::FailureCode;

/// Waits for the reporter once every sender is gone, completes its statistics, and
/// compacts.
pub(super) async fn finish(
    prepared: Prepared,
    config: &RunConfig,
) -> Result<Outcome, PipelineError> {
    let (manifest, output) = (config.manifest.clone(), config.output.clone());
    let shard = config.shard;
    let Prepared {
        _lock,
        stamp,
        extra,
        duplicates,
        cache,
        rows,
        reader,
        events,
        reporter,
        worker,
        credentials,
        gate,
        stop,
    } = prepared;
    // Closing the channel releases the reader if it is blocked on a full channel.
    drop(rows);
    let _ = reader.await;
    drop(events);

    let report_err = |source| PipelineError::Report {
        path: config.output.clone(),
        source,
    };
    let mut reporter: Reporter<_> = reporter
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
    stats.throttled_by_kind = gate.throttled_by_kind();
    // Rows the run stopped in flight wrote `not_attempted` lines: they count with the rows
    // it never reached (added after compaction), not as failures.
    if let Some(n) = stats.failures.remove(&FailureCode::NotAttempted.into()) {
        stats.rows_failed = stats.rows_failed.saturating_sub(n);
        stats.rows_not_attempted = n;
    }
    reporter.stats_mut().model_pace = worker.pacing.rates();
    reporter.stats_mut().model_token_pace = worker.pacing.token_rates();
    reporter.stats_mut().models_refused = worker.refusals.summary();
    // The last reference to the worker, and with it (after `cache` below) to the upload
    // cache, whose drop waits for its appender thread.
    drop(worker);

    let stopped = stop.stopped();
    let reason = stopped
        .as_ref()
        .map_or_else(|| "the run ended".to_owned(), ToString::to_string);
    let files = tokio::task::spawn_blocking(move || {
        let (stats, file) = reporter
            .finish()
            .map_err(|e| FinishError::Report(ReportError::Sync(e)))?;
        drop(file);
        let compacted = compact::compact(
            &manifest,
            &output,
            &extra,
            &reason,
            &duplicates,
            &stamp,
            compact::WINDOW,
            shard,
        )
        .map_err(|source| FinishError::Compact(source, Box::new(stats.clone())))?;
        if let Err(err) = cache.compact(unix_now()) {
            tracing::warn!("cannot tidy the upload cache: {err}");
        }
        drop(cache);
        Ok::<_, FinishError>((stats, compacted))
    });
    let (mut stats, compacted) = files
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))?
        .map_err(|err| match err {
            FinishError::Report(source) => report_err(source),
            FinishError::Compact(source, stats) => PipelineError::Compact {
                path: config.output.clone(),
                source,
                stats,
            },
        })?;
    compacted.record(&mut stats);
    Ok(Outcome { stats, stopped })
}

enum FinishError {
    Report(ReportError),
    Compact(compact::CompactError, Box<Stats>),
}
