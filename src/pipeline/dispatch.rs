//! Dispatch: each manifest row runs as its own task, at most `concurrency` at once, and each
//! finished row goes to the reporter as one event.
//!
//! Rows are tasks, not futures polled by one task (`buffer_unordered`), so that their work
//! (hashing, building forms, parsing replies) spreads over all the runtime's threads instead
//! of one at a time. Only this loop sends to the reporter, so the reporter stays the single
//! owner of the results file, the statistics and the progress display.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::output::{Event, RowResult};

/// Feeds rows to `process` until `rows` ends or `stop` is cancelled, with at most
/// `concurrency` rows running. Once it stops (a signal, a rejected key, an outage), rows in
/// flight get `drain` to finish; rows still running then are abandoned (compaction writes
/// them as `not_attempted`), and have ended when this returns.
pub(super) async fn dispatch<T, F, Fut>(
    rows: &mut mpsc::Receiver<T>,
    process: F,
    stop: &CancellationToken,
    concurrency: usize,
    events: &mpsc::Sender<Event>,
    drain: Duration,
) where
    F: Fn(T) -> Fut,
    Fut: Future<Output = RowResult> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    // The rows in flight, one task each. Bounded by `concurrency`: a row is received only
    // while fewer are running, so the set never holds more (and the manifest reader waits
    // on its full channel meanwhile).
    let mut running = JoinSet::new();
    let mut more = true;
    let drain_deadline = async {
        stop.cancelled().await;
        // Debug: the user is told once, by whoever stopped the run (the signal handler,
        // the stop's reason in the summary).
        tracing::debug!(
            "stopping: no new rows; waiting up to {}s for rows in flight",
            drain.as_secs()
        );
        tokio::time::sleep(drain).await;
    };
    futures::pin_mut!(drain_deadline);
    loop {
        let taking = more && !stop.is_cancelled() && running.len() < concurrency;
        if !taking && running.is_empty() {
            return;
        }
        tokio::select! {
            entry = rows.recv(), if taking => match entry {
                Some(entry) => {
                    running.spawn(process(entry));
                    // For the progress display's count of rows in flight.
                    let _ = events.send(Event::Started).await;
                }
                None => more = false,
            },
            Some(joined) = running.join_next(), if !running.is_empty() => match joined {
                Ok(result) => {
                    if events.send(Event::Row(Box::new(result))).await.is_err() {
                        // The reporter failed to write; nothing more can be saved.
                        stop.cancel();
                        running.shutdown().await;
                        return;
                    }
                }
                // A row's task panicked: a bug. Its row gets no line here; compaction
                // writes it as `not_attempted`, so the next run does it again.
                Err(err) => tracing::error!("a row's task ended abnormally: {err}"),
            },
            // Wakes a loop waiting for a row, so that it stops taking rows at once.
            () = stop.cancelled(), if taking => {}
            () = &mut drain_deadline => {
                tracing::warn!("drain timeout: abandoning the rows still in flight");
                running.shutdown().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::manifest::{Entry, Manifest};

    /// `n` rows of a throwaway manifest.
    fn entries(n: usize) -> (tempfile::TempDir, Vec<Entry>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let mut file = std::fs::File::create(&path).unwrap();
        writeln!(file, "id,model,file,prompt").unwrap();
        for i in 0..n {
            writeln!(file, "r{i},m,a.png,p").unwrap();
        }
        drop(file);
        let rows = Manifest::open(&path).unwrap().collect();
        (dir, rows)
    }

    /// Two rows that each hold their thread until the other one has started can only both
    /// finish if they run on two threads at once. Polled as futures of one task, the first
    /// would hold the only thread polling them until its deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_run_on_several_threads_at_once() {
        let (_dir, rows) = entries(2);
        let (tx, mut rx) = mpsc::channel(2);
        for row in rows {
            tx.send(row).await.unwrap();
        }
        drop(tx);
        let started = Arc::new(AtomicUsize::new(0));
        let alone = Arc::new(AtomicUsize::new(0));
        // Room for each row's two events: the test reads them only at the end.
        let (events, mut events_rx) = mpsc::channel(4);
        let process = |entry: Entry| {
            let (started, alone) = (Arc::clone(&started), Arc::clone(&alone));
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                // Deliberately blocking: it stands for CPU work that keeps the thread busy.
                let deadline = Instant::now() + Duration::from_secs(10);
                while started.load(Ordering::SeqCst) < 2 {
                    if Instant::now() > deadline {
                        alone.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    std::thread::yield_now();
                }
                super::super::not_attempted(entry, "test")
            }
        };
        let stop = CancellationToken::new();
        dispatch(&mut rx, process, &stop, 2, &events, Duration::ZERO).await;
        drop(events);
        let mut lines = 0;
        while let Some(event) = events_rx.recv().await {
            lines += usize::from(matches!(event, Event::Row(_)));
        }
        assert_eq!(lines, 2);
        assert_eq!(
            alone.load(Ordering::SeqCst),
            0,
            "a row waited alone for the other to start"
        );
    }

    /// No more than `concurrency` rows run at once, and every row is reported.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn running_rows_are_bounded_by_the_concurrency() {
        let (_dir, rows) = entries(50);
        let (tx, mut rx) = mpsc::channel(50);
        for row in rows {
            tx.send(row).await.unwrap();
        }
        drop(tx);
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let process = |entry: Entry| {
            let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::task::yield_now().await;
                now.fetch_sub(1, Ordering::SeqCst);
                super::super::not_attempted(entry, "test")
            }
        };
        let (events, mut events_rx) = mpsc::channel(100);
        let stop = CancellationToken::new();
        dispatch(&mut rx, process, &stop, 3, &events, Duration::ZERO).await;
        drop(events);
        let mut lines = 0;
        while let Some(event) = events_rx.recv().await {
            lines += usize::from(matches!(event, Event::Row(_)));
        }
        assert_eq!(lines, 50);
        assert!(peak.load(Ordering::SeqCst) <= 3, "peak {peak:?}");
    }
}
