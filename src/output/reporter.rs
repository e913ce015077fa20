//! The reporter: the one task that owns the results file, the statistics and the progress
//! display. Workers never touch those; they send an [`Event`] per finished row. Keeping all
//! three in one place means a results line, its count in the summary and the progress bar can
//! never disagree, and no lock is held around file I/O.
//!
//! It runs on a thread of its own ([`Reporter::spawn`]): every write, flush and fsync it does
//! blocks, and a runtime thread stalled on the disk would stall the rows it polls.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::progress::{self, Progress};
use super::results::{ResultsWriter, RowResult, Status};
use super::stats::Stats;

/// What workers tell the reporter.
#[derive(Debug)]
pub enum Event {
    /// A row started (its task was spawned); for the count of rows in flight.
    Started,
    /// A row finished, `ok` or `failed`. Boxed: the channel holds many of these.
    Row(Box<RowResult>),
    /// The number of manifest rows, once a counting pass has found it.
    Total(u64),
    /// More rows an earlier run finished `ok`, not attempted again: added to the count. The
    /// reader sends these as it goes, before the rows after them, so the bar's length (rows
    /// to do) is right as soon as the first of those rows can finish.
    Skipped(u64),
    /// Rows whose earlier `ok` line answered something else, run again.
    Changed(u64),
    /// `--limit N`: this run does at most N rows, so the bar counts no more.
    Limit(u64),
}

/// A sink whose written data can be forced to stable storage.
pub trait Durable: Write {
    fn sync(&self) -> io::Result<()>;
}

impl Durable for std::fs::File {
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Durable for Vec<u8> {
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

pub struct Reporter<W: Durable> {
    writer: ResultsWriter<W>,
    stats: Stats,
    progress: Progress,
    started: Instant,
    /// Rows started and not finished yet.
    in_flight: u64,
    /// `--limit N`, once told ([`Event::Limit`]).
    limit: Option<u64>,
}

impl<W: Durable> Reporter<W> {
    pub fn new(writer: ResultsWriter<W>, stats: Stats, progress: Progress) -> Self {
        Self {
            writer,
            stats,
            progress,
            started: Instant::now(),
            in_flight: 0,
            limit: None,
        }
    }

    /// Applies one event. A plain function, so its effects are unit-testable.
    pub fn handle(&mut self, event: Event) -> csv::Result<()> {
        match event {
            Event::Total(total) => {
                self.stats.rows_total = total;
                self.set_length();
            }
            Event::Skipped(skipped) => {
                self.stats.rows_skipped += skipped;
                self.set_length();
            }
            Event::Changed(changed) => self.stats.rows_changed = changed,
            Event::Limit(limit) => {
                self.limit = Some(limit);
                self.set_length();
            }
            Event::Started => self.in_flight += 1,
            Event::Row(result) => {
                self.writer.write(&result)?;
                // Flushed per row: a crash loses at most the rows still in flight.
                self.writer.flush()?;
                self.stats.record(&result);
                // Rows the run never started (bad rows, refused models) finish too.
                self.in_flight = self.in_flight.saturating_sub(1);
                if let Progress::Bar(bar) = &self.progress {
                    // The counts a person reads are all in the message (see the template),
                    // so no frame shows them one row apart.
                    bar.set_message(self.status());
                    bar.set_prefix(progress::pace(
                        &self.stats,
                        self.in_flight,
                        self.started.elapsed(),
                    ));
                    bar.inc(1);
                }
                if result.status == Status::Failed {
                    tracing::debug!(line = result.line, id = %result.id, code = result.error_code.as_ref().map_or("", |c| c.as_str()),
                        "row failed: {}", result.error_message);
                }
            }
        }
        Ok(())
    }

    /// The bar counts the rows this run has to do, not the manifest's.
    fn set_length(&self) {
        if let Progress::Bar(bar) = &self.progress {
            bar.set_length(self.rows_to_do());
        }
    }

    /// The manifest's rows (of this shard) less those skipped, at most `--limit`. With a
    /// limit the reader stops early and never counts the skipped rows after it; by then it
    /// has sent N rows, so N is the right length.
    fn rows_to_do(&self) -> u64 {
        let left = self
            .stats
            .rows_total
            .saturating_sub(self.stats.rows_skipped);
        self.limit.map_or(left, |limit| left.min(limit))
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.writer.sync()
    }

    fn log_progress(&self) {
        tracing::info!(
            "progress: {}  {}",
            self.status(),
            progress::pace(&self.stats, self.in_flight, self.started.elapsed())
        );
    }

    /// The status line of the bar.
    fn status(&self) -> String {
        progress::status(&self.stats, self.rows_to_do())
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Receives events until every sender is gone, syncing the file at least every second.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) -> Result<Self, ReportError> {
        let mut sync = tokio::time::interval(Duration::from_secs(1));
        let mut log = tokio::time::interval(Duration::from_secs(10));
        log.tick().await;
        let logging = matches!(self.progress, Progress::Log);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.handle(event).map_err(ReportError::Write)?,
                    None => break,
                },
                _ = sync.tick() => self.sync().map_err(ReportError::Sync)?,
                _ = log.tick(), if logging => self.log_progress(),
            }
        }
        self.sync().map_err(ReportError::Sync)?;
        self.progress.finish();
        Ok(self)
    }

    /// Ends the run: returns the final statistics and the flushed sink. Blocks (a flush).
    pub fn finish(mut self) -> io::Result<(Stats, W)> {
        self.stats.finish(self.started.elapsed());
        Ok((self.stats, self.writer.into_inner()?))
    }

    /// Mutable statistics, for figures only the caller knows (credential calls, skips).
    pub fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }
}

impl<W: Durable + Send + 'static> Reporter<W> {
    /// Runs [`Reporter::run`] on a blocking-pool thread, which it keeps until every sender
    /// is gone. The runtime still drives its timers and its channel.
    pub fn spawn(self, events: mpsc::Receiver<Event>) -> JoinHandle<Result<Self, ReportError>> {
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || runtime.block_on(self.run(events)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write the results file: {0}")]
    Write(csv::Error),
    #[error("cannot sync the results file to disk: {0}")]
    Sync(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::results::{Tokens, UploadOutcome};

    fn row(id: &str, status: Status, retries: Vec<&'static str>) -> Box<RowResult> {
        Box::new(RowResult {
            id: id.into(),
            line: 2,
            model: "m".into(),
            file: "a.png".into(),
            prompt: "p".into(),
            status,
            response: String::new(),
            reasoning: String::new(),
            finish_reason: String::new(),
            tokens: (status == Status::Ok).then_some(Tokens {
                prompt: 5,
                completion: 2,
                total: 7,
            }),
            oss_url: String::new(),
            upload: UploadOutcome::New,
            attempts: 1,
            error_code: (status == Status::Failed)
                .then(|| crate::failure::ErrorCode::service("Throttling.RateQuota")),
            error_message: String::new(),
            request_id: String::new(),
            latency_ms: 1,
            finished_at: chrono::Utc::now(),
            input_digest: None,
            extra: vec![],
            saw_429: retries.iter().filter(|c| **c == "throttled").count() as u32
                + u32::from(status == Status::Failed),
            retries,
        })
    }

    /// A sink whose first `sync` waits until the test lets it go, or until a deadline.
    struct Gated {
        entered: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
        stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Durable for Gated {
        fn sync(&self) -> io::Result<()> {
            if let Some(entered) = self.entered.lock().unwrap().take() {
                let _ = entered.send(());
                let release = self.release.lock().unwrap();
                if release.recv_timeout(Duration::from_secs(10)).is_err() {
                    self.stalled
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            Ok(())
        }
    }

    /// The test runs on a one-thread runtime, and lets the sync go from that thread. Were the
    /// sync on the runtime's thread, the test could not run until the sync's deadline.
    #[tokio::test]
    async fn a_slow_sync_does_not_hold_up_the_runtime() {
        let (entered, entered_rx) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let stalled = std::sync::Arc::default();
        let sink = Gated {
            entered: std::sync::Mutex::new(Some(entered)),
            release: std::sync::Mutex::new(release_rx),
            stalled: std::sync::Arc::clone(&stalled),
        };
        let writer = ResultsWriter::new(sink, &[], true).unwrap();
        let reporter = Reporter::new(writer, Stats::default(), Progress::Hidden);
        let (events, events_rx) = mpsc::channel(1);
        let task = reporter.spawn(events_rx);
        entered_rx.await.unwrap();
        release.send(()).unwrap();
        events.send(Event::Total(1)).await.unwrap();
        drop(events);
        let reporter = task.await.unwrap().unwrap();
        assert_eq!(reporter.stats().rows_total, 1);
        assert!(
            !stalled.load(std::sync::atomic::Ordering::SeqCst),
            "the sync held the runtime's only thread"
        );
    }

    /// Issue 12: a resumed run's bar counts the rows to do, and each frame's counts match
    /// its position.
    #[test]
    fn a_resumed_run_counts_rows_to_do_and_frames_agree() {
        let screen = progress::Screen {
            width: 120,
            text: std::sync::Arc::default(),
        };
        let bar = progress::styled(indicatif::ProgressBar::with_draw_target(
            None,
            indicatif::ProgressDrawTarget::term_like_with_hz(Box::new(screen.clone()), 100),
        ));
        let writer = ResultsWriter::new(Vec::new(), &[], true).unwrap();
        let mut reporter = Reporter::new(writer, Stats::default(), Progress::Bar(bar.clone()));
        reporter.handle(Event::Total(4000)).unwrap();
        // The reader sends what it skipped as it goes, in parts.
        reporter.handle(Event::Skipped(1000)).unwrap();
        reporter.handle(Event::Skipped(840)).unwrap();
        assert_eq!(bar.length(), Some(2160));
        reporter.handle(Event::Started).unwrap();
        reporter.handle(Event::Started).unwrap();
        reporter
            .handle(Event::Row(row("a", Status::Ok, vec![])))
            .unwrap();
        assert_eq!((bar.position(), bar.length()), (1, Some(2160)));
        // `--limit 500`: the run does 500 of them, and the bar says so.
        reporter.handle(Event::Limit(500)).unwrap();
        assert_eq!(bar.length(), Some(500));
        reporter.handle(Event::Limit(5000)).unwrap();
        assert_eq!(bar.length(), Some(2160));
        assert_eq!(reporter.stats().rows_skipped, 1840);
        assert_eq!(reporter.in_flight, 1);
        let line = reporter.status();
        assert!(line.starts_with("1/2,160 rows  ok 1  failed 0"), "{line}");
        // Every status line drawn shows rows done = ok + failed.
        let text = screen.text.lock().unwrap().clone();
        let statuses: Vec<&str> = text.lines().filter(|l| l.contains(" rows  ok ")).collect();
        assert!(!statuses.is_empty(), "{text}");
        for status in statuses {
            let words: Vec<&str> = status.split_whitespace().collect();
            let done = words[0].split('/').next().unwrap();
            assert_eq!((words[2], words[4]), ("ok", "failed"), "{status}");
            let (ok, failed): (u64, u64) = (words[3].parse().unwrap(), words[5].parse().unwrap());
            assert_eq!(
                done,
                (ok + failed).to_string(),
                "a frame lags its bar: {status}"
            );
        }
    }

    #[tokio::test]
    async fn events_become_lines_and_counts() {
        let writer = ResultsWriter::new(Vec::new(), &[], true).unwrap();
        let mut reporter = Reporter::new(writer, Stats::default(), Progress::Hidden);
        reporter.handle(Event::Total(2)).unwrap();
        reporter
            .handle(Event::Row(row(
                "a",
                Status::Ok,
                vec!["throttled", "server"],
            )))
            .unwrap();
        reporter
            .handle(Event::Row(row("b", Status::Failed, vec!["throttled"])))
            .unwrap();
        let (stats, sink) = reporter.finish().unwrap();
        assert_eq!(
            (stats.rows_ok, stats.rows_failed, stats.rows_total),
            (1, 1, 2)
        );
        assert_eq!(stats.uploads_new, 2);
        assert_eq!(stats.retries.get("throttled"), Some(&2));
        assert_eq!(
            stats.throttled_seen, 3,
            "two retried 429s and one final 429"
        );
        assert_eq!(stats.prompt_tokens, 5);
        let text = String::from_utf8(sink).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
