//! Run statistics: the figures of the summary line, `--summary-json` and the metrics file.
//! Updated only by the reporter task, so it needs no locking.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::results::{RowResult, Status, UploadOutcome};
use crate::failure::ErrorCode;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub rows_total: u64,
    pub rows_ok: u64,
    pub rows_failed: u64,
    /// Rows already `ok` in an earlier run's results, not attempted again.
    pub rows_skipped: u64,
    /// Rows the run stopped before reaching (written as `not_attempted`).
    pub rows_not_attempted: u64,
    /// Rows with an earlier `ok` line that answered something else (the row changed since),
    /// run again.
    pub rows_changed: u64,
    /// `ok` lines that no manifest row asks for now, kept in `orphans_file`.
    pub rows_orphaned: u64,
    /// The side file beside the results holding them; empty when there are none.
    pub orphans_file: String,
    /// The manifest was replaced or rewritten during the run: the total is that of the
    /// manifest as it was at the end, not of the rows the run read.
    pub manifest_changed: bool,
    pub uploads_new: u64,
    pub uploads_reused: u64,
    pub uploads_cached: u64,
    pub credential_calls: u64,
    /// Retries waited for, by cause (`throttled`, `server`, `network`, `policy_expired`, ...).
    pub retries: BTreeMap<&'static str, u64>,
    /// HTTP 429 answers seen, retried or not.
    pub throttled_seen: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Failed rows by error code.
    pub failures: BTreeMap<ErrorCode, u64>,
    /// Models whose calls were paced after 429s, and the pace they ended at (calls/s).
    pub model_pace: BTreeMap<String, f64>,
    /// Models the service refused for good (no access, no such model), and why: the
    /// service's `code: message` of the first refusal. Their rows failed without calls.
    pub models_refused: BTreeMap<String, String>,
    /// 429 answers by the limit they report (`requests`, `burst`, `tokens`, `unknown`).
    pub throttled_by_kind: BTreeMap<&'static str, u64>,
    pub elapsed_s: f64,
    pub rows_per_s: f64,
}

impl Stats {
    pub fn record(&mut self, r: &RowResult) {
        match r.status {
            Status::Ok => self.rows_ok += 1,
            Status::Failed => {
                self.rows_failed += 1;
                if let Some(code) = &r.error_code {
                    *self.failures.entry(code.clone()).or_default() += 1;
                }
            }
        }
        match r.upload {
            UploadOutcome::New => self.uploads_new += 1,
            UploadOutcome::Reused => self.uploads_reused += 1,
            UploadOutcome::Cached => self.uploads_cached += 1,
            UploadOutcome::None => {}
        }
        for cause in &r.retries {
            *self.retries.entry(cause).or_default() += 1;
        }
        self.throttled_seen += u64::from(r.saw_429);
        if let Some(t) = r.tokens {
            // The counts are the service's numbers: a hostile or broken answer must not
            // overflow the run's totals (a panic in debug builds, a wrap in release).
            self.prompt_tokens = self.prompt_tokens.saturating_add(t.prompt);
            self.completion_tokens = self.completion_tokens.saturating_add(t.completion);
        }
    }

    /// Rows finished in this run (skipped rows are not work done).
    pub fn rows_done(&self) -> u64 {
        self.rows_ok + self.rows_failed
    }

    pub fn finish(&mut self, elapsed: Duration) {
        self.elapsed_s = elapsed.as_secs_f64();
        self.rows_per_s = if self.elapsed_s > 0.0 {
            self.rows_done() as f64 / self.elapsed_s
        } else {
            0.0
        };
    }

    /// The one-line human summary printed at the end of a run.
    pub fn summary_line(&self) -> String {
        let pace = if self.model_pace.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = self
                .model_pace
                .iter()
                .map(|(m, r)| format!("{m} {r:.1}/s"))
                .collect();
            format!("; paced {}", parts.join(", "))
        };
        let retries: u64 = self.retries.values().sum();
        let by_cause = counts(&self.retries);
        // Which kinds of failure, so a cron log says what to look for in the results file.
        let failures = counts(&self.failures);
        let rows = |n: u64| if n == 1 { "row" } else { "rows" };
        let changed = if self.rows_changed > 0 {
            format!(
                ", {} changed {} run again",
                self.rows_changed,
                rows(self.rows_changed)
            )
        } else {
            String::new()
        };
        // "of N rows" would mislead when N is not the manifest the run read.
        let of_total = if self.manifest_changed {
            format!(
                "; the manifest changed during the run and now has {} {}",
                self.rows_total,
                rows(self.rows_total)
            )
        } else {
            format!(" of {} {}", self.rows_total, rows(self.rows_total))
        };
        let orphaned = if self.rows_orphaned > 0 {
            format!(
                "; {} finished {} no longer in the manifest kept in {}",
                self.rows_orphaned,
                rows(self.rows_orphaned),
                self.orphans_file
            )
        } else {
            String::new()
        };
        let refused = if self.models_refused.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = self
                .models_refused
                .iter()
                .map(|(m, why)| format!("{m} ({why})"))
                .collect();
            format!("; models refused: {}", parts.join("; "))
        };
        let throttled_by_kind = counts(&self.throttled_by_kind);
        format!(
            "{ok} ok, {failed} failed{failures}, {skipped} skipped{changed}{not_attempted}\
             {of_total}{orphaned}; uploads {new} new, {reused} reused, {cached} cached; {cred} credential calls; \
             {retries} retries{by_cause}; {throttled} 429s{throttled_by_kind}; tokens {tin} in / {tout} out; \
             {elapsed:.1}s, {rate:.1} rows/s{pace}{refused}",
            ok = self.rows_ok,
            failed = self.rows_failed,
            skipped = self.rows_skipped,
            not_attempted = if self.rows_not_attempted > 0 {
                format!(", {} not attempted", self.rows_not_attempted)
            } else {
                String::new()
            },
            new = self.uploads_new,
            reused = self.uploads_reused,
            cached = self.uploads_cached,
            cred = self.credential_calls,
            throttled = self.throttled_seen,
            tin = self.prompt_tokens,
            tout = self.completion_tokens,
            elapsed = self.elapsed_s,
            rate = self.rows_per_s,
        )
    }
}

/// `" (a 1, b 2)"` for a non-empty map, else nothing.
fn counts<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = map.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!(" ({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{RowResult, Tokens};

    #[test]
    fn token_totals_saturate_instead_of_overflowing() {
        let mut stats = Stats::default();
        let row = RowResult {
            status: Status::Ok,
            tokens: Some(Tokens {
                prompt: u64::MAX,
                completion: u64::MAX - 1,
                total: u64::MAX,
            }),
            ..RowResult::default()
        };
        stats.record(&row);
        stats.record(&row);
        assert_eq!(stats.prompt_tokens, u64::MAX);
        assert_eq!(stats.completion_tokens, u64::MAX);
    }
}
