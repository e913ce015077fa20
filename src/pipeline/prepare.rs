//! Everything a run does before its first row: the run lock, the manifest and the earlier
//! results opened and scanned, the upload cache loaded, the reporter and the manifest reader
//! started, and the worker wired to its client, credentials, outage gate and pacing.
//!
//! The file work (locks, scans, the cache load, which may wait for another run's
//! compaction) is one blocking step on the blocking pool: none of it may stall a runtime
//! thread that other runs' tasks, or this run's reporter timers, need.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::RunConfig;
use crate::dashscope::{Client, CredentialOptions, Credentials, RetryPolicy};
use crate::limit::{Limiter, LocalLimiter, RedisLimiter};
use crate::manifest::{self, Entry, Manifest};
use crate::output::lock::RunLock;
use crate::output::reporter::ReportError;
use crate::output::results::resume::{self, Previous};
use crate::output::{Event, Progress, Reporter, ResultsWriter, Stats};
use crate::shared::{Shared, SharedPace, SharedUploads};
use crate::upload_cache::{UploadCache, unix_now};

use super::compact::ManifestStamp;
use super::outage::Scope;
use super::outage::gate::Gate;
use super::stop::{Stop, StopReason};
use super::uploads::Uploads;
use super::worker::Worker;
use super::{PipelineError, pacing, reader};

/// A run ready to dispatch, and what its end needs.
pub(super) struct Prepared {
    /// Held until the run returns: no other run writes this results file meanwhile.
    pub _lock: RunLock,
    /// The manifest as it was before it was read; compaction tells from it whether it
    /// changed since.
    pub stamp: ManifestStamp,
    /// The manifest's pass-through columns.
    pub extra: Vec<String>,
    /// Keys of the ids more than one row uses.
    pub duplicates: Arc<HashSet<u64>>,
    pub cache: Arc<UploadCache>,
    pub rows: mpsc::Receiver<Entry>,
    pub reader: JoinHandle<()>,
    pub events: mpsc::Sender<Event>,
    pub reporter: JoinHandle<Result<Reporter<File>, ReportError>>,
    pub worker: Arc<Worker>,
    pub credentials: Credentials,
    pub gate: Arc<Gate>,
    pub stop: Arc<Stop>,
}

/// What the blocking step found on disk.
struct Opened {
    lock: RunLock,
    stamp: ManifestStamp,
    manifest: Manifest<File>,
    writer: ResultsWriter<File>,
    previous: Previous,
    ids: manifest::IdScan,
    cache: UploadCache,
}

pub(super) async fn prepare(
    config: &RunConfig,
    client: Client,
    stop: Arc<Stop>,
) -> Result<Prepared, PipelineError> {
    // First, before any file or request: a Redis that cannot be reached stops the run
    // before it has done anything (exit 2), rather than after its first rows.
    let shared = match &config.redis {
        Some(options) => Some(Shared::connect(options, &client.key_fingerprint()).await?),
        None => None,
    };
    let account = cache_account(&client);
    let shard = config.shard;
    let (manifest_path, output, state_dir, fresh, bom) = (
        config.manifest.clone(),
        config.output.clone(),
        config.state_dir.clone(),
        config.fresh,
        config.excel_bom,
    );
    let opened = tokio::task::spawn_blocking(move || -> Result<Opened, PipelineError> {
        // Taken before the results file is touched, held until the run returns.
        let lock = RunLock::acquire(&output)?;
        // Before the manifest is read: compaction tells whether it changed since.
        let stamp = ManifestStamp::of(&manifest_path);
        let manifest = Manifest::open(&manifest_path)?;
        let (writer, previous) =
            resume::open_for_append(&output, &manifest.extra_columns(), fresh, bom)?;
        // One pass before any work: the row count for the progress bar, and the ids that
        // repeat.
        let ids = manifest::scan_ids_of(&manifest_path, shard)?;
        let cache = UploadCache::open(&state_dir, &account, unix_now());
        Ok(Opened {
            lock,
            stamp,
            manifest,
            writer,
            previous,
            ids,
            cache,
        })
    })
    .await
    .map_err(|e| PipelineError::Task(e.to_string()))??;
    let Opened {
        lock,
        stamp,
        manifest,
        writer,
        previous,
        ids,
        cache,
    } = opened;
    let extra = manifest.extra_columns();
    if previous.lines > 0 {
        tracing::info!(
            "resuming: {} of the earlier runs' lines are ok; rows they still answer are skipped",
            previous.done.len()
        );
    }
    let duplicates = Arc::new(ids.duplicates);
    let cache = Arc::new(cache);

    // Capacity: enough to keep the reporter busy while workers finish rows in bursts; each
    // event is one boxed row, so memory stays at a few hundred rows.
    let (events, events_rx) = mpsc::channel(config.concurrency.clamp(64, 1024));
    let reporter = Reporter::new(writer, Stats::default(), Progress::detect(config.quiet));
    let reporter = reporter.spawn(events_rx);
    // The bar counts the rows this run can do: its shard's, at most --limit.
    let _ = events.send(Event::Total(ids.owned)).await;
    if let Some(limit) = config.limit {
        let _ = events.send(Event::Limit(limit)).await;
    }

    // Capacity: the reader runs ahead of the workers by at most this many rows.
    let (rows_tx, rows) = mpsc::channel::<Entry>(config.concurrency.max(16));
    let reader_events = events.clone();
    let reader_duplicates = Arc::clone(&duplicates);
    let limit = config.limit;
    let reader = tokio::task::spawn_blocking(move || {
        reader::read(
            manifest,
            shard,
            &previous.done,
            &reader_duplicates,
            limit,
            rows_tx,
            reader_events,
        );
    });

    let (worker, credentials, gate) = wire(
        config,
        client,
        Arc::clone(&cache),
        shared.as_ref(),
        stop.clone(),
    );
    Ok(Prepared {
        _lock: lock,
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
    })
}

/// The worker and the shared parts every request goes through.
fn wire(
    config: &RunConfig,
    client: Client,
    cache: Arc<UploadCache>,
    shared: Option<&Shared>,
    stop: Arc<Stop>,
) -> (Arc<Worker>, Credentials, Arc<Gate>) {
    // With --redis, both limiters are shared with every process of the account; a Redis
    // that stays down stops the run (see `limit::redis` for why it never falls back).
    let limiter = |kind| -> Arc<dyn Limiter> {
        match shared {
            Some(shared) => Arc::new(RedisLimiter::new(shared.clone(), kind)),
            None => Arc::new(LocalLimiter::new()),
        }
    };
    if let Some(shared) = shared {
        let stop = Arc::clone(&stop);
        shared.on_lost(move |lost| stop.stop(StopReason::RedisLost(lost.to_string())));
    }
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
    let credentials = Credentials::with_limiter(
        limiter("credentials"),
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
        uploads: {
            let uploads = Uploads::new(
                client.clone(),
                credentials.clone(),
                cache,
                watched(vec![Scope::Uploads]),
                config.upload_concurrency,
            );
            match shared {
                Some(shared) => {
                    uploads.with_shared(SharedUploads::new(shared.clone(), &cache_account(&client)))
                }
                None => uploads,
            }
        },
        api: config.api,
        params: config.params.clone(),
        retry: config.retry.clone(),
        pacing: Arc::new({
            let pacing = pacing::Pacing::new(config.model_rps, config.model_tpm)
                .with_limiter(limiter("pace"));
            match shared {
                Some(shared) => pacing.with_shared(SharedPace::new(shared.clone())),
                None => pacing,
            }
        }),
        stop,
        gate: Arc::clone(&gate),
        model_retry: Mutex::new(HashMap::new()),
        refusals: Arc::default(),
        streamed: Mutex::default(),
    });
    (worker, credentials, gate)
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
