//! Machine-readable reports of a finished run: `--summary-json` and `--metrics-textfile`
//! (the Prometheus text format read by node_exporter's textfile collector). Both are written
//! atomically, so a collector never reads half a file. A path that is a FIFO or a character
//! device (`/dev/null`, `/dev/stdout` on a pipe) is written straight to instead: replacing it
//! by a rename would turn it into a regular file, which as root breaks `/dev/null` for the
//! whole machine.
//!
//! The Prometheus text format for a dozen gauges is a few lines of `format!`; a metrics
//! crate would bring a registry and global state for no gain here.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;

use super::atomic::{atomic_rewrite, resolve_links};
use super::stats::Stats;

/// What both reports say about a run.
#[derive(Debug, Serialize)]
pub struct RunReport<'a> {
    pub manifest: &'a Path,
    pub output: &'a Path,
    /// Every row ok and the run not stopped early.
    pub success: bool,
    pub exit_code: u8,
    /// Unix seconds.
    pub finished_at: i64,
    #[serde(flatten)]
    pub stats: &'a Stats,
}

pub fn write_summary_json(path: &Path, report: &RunReport<'_>) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    json.push(b'\n');
    write_report(path, &json)
}

pub fn write_metrics(path: &Path, report: &RunReport<'_>) -> std::io::Result<()> {
    write_report(path, metrics_text(report).as_bytes())
}

/// Atomically for a regular file (or a new one); straight into a FIFO or a character device.
fn write_report(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let target = resolve_links(path);
    let stream = std::fs::metadata(&target)
        .is_ok_and(|m| m.file_type().is_fifo() || m.file_type().is_char_device());
    if !stream {
        return atomic_rewrite(&target, |f| f.write_all(bytes));
    }
    // Non-blocking: a FIFO that nobody reads fails the open (ENXIO) instead of holding the
    // end of the run forever, and a reader that stalls fails the write instead. Never
    // created or truncated: it exists, and it is not ours.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&target)?;
    file.write_all(bytes)
}

/// The Prometheus exposition text. Every series carries a `manifest` label so several jobs
/// can share one textfile folder.
pub fn metrics_text(r: &RunReport<'_>) -> String {
    let s = r.stats;
    let label = escape(&r.manifest.display().to_string());
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, series: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP dashbatch_{name} {help}");
        let _ = writeln!(out, "# TYPE dashbatch_{name} gauge");
        for (labels, value) in series {
            let extra = if labels.is_empty() {
                String::new()
            } else {
                format!(",{labels}")
            };
            let _ = writeln!(
                out,
                "dashbatch_{name}{{manifest=\"{label}\"{extra}}} {value}"
            );
        }
    };
    gauge(
        "last_run_success",
        "1 if the last run finished with every row ok, else 0.",
        &[("", f64::from(u8::from(r.success)))],
    );
    gauge(
        "last_run_end_timestamp_seconds",
        "When the last run ended, in Unix seconds.",
        &[("", r.finished_at as f64)],
    );
    gauge(
        "last_run_exit_code",
        "The exit code of the last run.",
        &[("", f64::from(r.exit_code))],
    );
    gauge(
        "last_run_rows",
        "Manifest rows of the last run, by outcome.",
        &[
            ("status=\"ok\"", s.rows_ok as f64),
            ("status=\"failed\"", s.rows_failed as f64),
            ("status=\"skipped\"", s.rows_skipped as f64),
            ("status=\"not_attempted\"", s.rows_not_attempted as f64),
        ],
    );
    gauge(
        "last_run_uploads",
        "Files the last run's rows used, by how they got their URL.",
        &[
            ("kind=\"new\"", s.uploads_new as f64),
            ("kind=\"reused\"", s.uploads_reused as f64),
            ("kind=\"cached\"", s.uploads_cached as f64),
        ],
    );
    gauge(
        "last_run_credential_calls",
        "Upload-credential requests the last run sent.",
        &[("", s.credential_calls as f64)],
    );
    let retries: Vec<(String, f64)> = s
        .retries
        .iter()
        .map(|(cause, n)| (format!("cause=\"{}\"", escape(cause)), *n as f64))
        .collect();
    let retries: Vec<(&str, f64)> = retries.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    gauge(
        "last_run_retries",
        "Retries of the last run, by cause.",
        &retries,
    );
    gauge(
        "last_run_throttled",
        "HTTP 429 answers the last run saw.",
        &[("", s.throttled_seen as f64)],
    );
    // Every kind, zero included, so that a series does not vanish from one run to the next.
    let kind = |k: &str| s.throttled_by_kind.get(k).copied().unwrap_or(0) as f64;
    gauge(
        "last_run_throttled_by_kind",
        "HTTP 429 answers the last run saw, by the limit they report.",
        &[
            ("kind=\"requests\"", kind("requests")),
            ("kind=\"burst\"", kind("burst")),
            ("kind=\"tokens\"", kind("tokens")),
            ("kind=\"unknown\"", kind("unknown")),
        ],
    );
    let token_pace: Vec<(String, f64)> = s
        .model_token_pace
        .iter()
        .map(|(model, r)| (format!("model=\"{}\"", escape(model)), *r))
        .collect();
    let token_pace: Vec<(&str, f64)> = token_pace.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    gauge(
        "last_run_model_token_pace",
        "Tokens a second each token-paced model ended at (after a token 429, or --model-tpm).",
        &token_pace,
    );
    gauge(
        "last_run_models_refused",
        "Models the service refused for good in the last run (no access, no such model).",
        &[("", s.models_refused.len() as f64)],
    );
    gauge(
        "last_run_tokens",
        "Tokens the last run used, as the models reported them.",
        &[
            ("direction=\"in\"", s.prompt_tokens as f64),
            ("direction=\"out\"", s.completion_tokens as f64),
        ],
    );
    gauge(
        "last_run_duration_seconds",
        "Wall time of the last run.",
        &[("", s.elapsed_s)],
    );
    gauge(
        "last_run_rows_per_second",
        "Rows finished per second in the last run.",
        &[("", s.rows_per_s)],
    );
    out
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

    fn report(stats: &Stats) -> RunReport<'_> {
        RunReport {
            manifest: Path::new("m.csv"),
            output: Path::new("o.csv"),
            success: true,
            exit_code: 0,
            finished_at: 1_800_000_000,
            stats,
        }
    }

    #[test]
    fn a_fifo_is_written_into_and_stays_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("summary.fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let stats = Stats::default();
        // Nobody reading: an error, not a hang, and the FIFO is left alone.
        write_summary_json(&fifo, &report(&stats)).unwrap_err();
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        write_summary_json(&fifo, &report(&stats)).unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["exit_code"], 0);
        assert!(
            std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn metrics_are_prometheus_text_with_the_cron_figures() {
        let mut stats = Stats {
            rows_ok: 3,
            rows_failed: 1,
            ..Stats::default()
        };
        stats.retries.insert("throttled", 2);
        stats.throttled_by_kind.insert("burst", 3);
        stats.model_token_pace.insert("qwen-vl-plus".into(), 6151.5);
        let report = RunReport {
            manifest: Path::new("jobs/a \"b\".csv"),
            output: Path::new("o.csv"),
            success: false,
            exit_code: 1,
            finished_at: 1_800_000_000,
            stats: &stats,
        };
        let text = metrics_text(&report);
        assert!(text.contains("dashbatch_last_run_success{manifest=\"jobs/a \\\"b\\\".csv\"} 0\n"));
        assert!(text.contains("dashbatch_last_run_end_timestamp_seconds{manifest="));
        assert!(text.contains("status=\"ok\"} 3\n"));
        assert!(text.contains("cause=\"throttled\"} 2\n"));
        assert!(text.contains("kind=\"burst\"} 3\n"), "{text}");
        assert!(text.contains("kind=\"tokens\"} 0\n"), "{text}");
        assert!(
            text.contains("dashbatch_last_run_model_token_pace{manifest=\"jobs/a \\\"b\\\".csv\",model=\"qwen-vl-plus\"} 6151.5\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            value.parse::<f64>().expect("every sample ends in a number");
        }
    }
}
