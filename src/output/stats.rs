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
    /// Models whose tokens were paced (after a token 429, or by `--model-tpm`), and the
    /// token pace they ended at (tokens/s).
    pub model_token_pace: BTreeMap<String, f64>,
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

    /// Failed rows by cause: the service spells one refusal differently in its two APIs
    /// (`InvalidApiKey` from getPolicy and the native API, `invalid_api_key` from
    /// compatible mode), so codes are counted under [`cause`] for a person to read. The
    /// rows, `--summary-json` and the metrics keep the code as the service sent it.
    pub fn failure_causes(&self) -> BTreeMap<String, u64> {
        let mut causes = BTreeMap::new();
        for (code, n) in &self.failures {
            *causes.entry(cause(code)).or_default() += n;
        }
        causes
    }

    /// The human summary printed at the end of a run: a few short lines, the first saying
    /// how the rows ended, then (only when there is something to say) why and at what cost.
    pub fn summary_line(&self) -> String {
        let rows = |n: u64| if n == 1 { "row" } else { "rows" };
        let mut first = format!(
            "{} ok, {} failed{}, {} skipped",
            n(self.rows_ok),
            n(self.rows_failed),
            counts(&self.failure_causes()),
            n(self.rows_skipped)
        );
        if self.rows_changed > 0 {
            first += &format!(
                ", {} changed {} run again",
                n(self.rows_changed),
                rows(self.rows_changed)
            );
        }
        if self.rows_not_attempted > 0 {
            first += &format!(", {} not attempted", n(self.rows_not_attempted));
        }
        // "of N rows" would mislead when N is not the manifest the run read.
        if self.manifest_changed {
            first += &format!(
                "; the manifest changed during the run and now has {} {}",
                n(self.rows_total),
                rows(self.rows_total)
            );
        } else {
            first += &format!(" of {} {}", n(self.rows_total), rows(self.rows_total));
        }
        let mut lines = vec![first];
        if self.rows_orphaned > 0 {
            lines.push(format!(
                "  {} finished {} no longer in the manifest kept in {}",
                n(self.rows_orphaned),
                rows(self.rows_orphaned),
                self.orphans_file
            ));
        }
        if !self.models_refused.is_empty() {
            let parts: Vec<String> = self
                .models_refused
                .iter()
                .map(|(m, why)| format!("{m} ({why})"))
                .collect();
            lines.push(format!("  models refused: {}", parts.join("; ")));
        }
        lines.push(format!(
            "  uploads {} new, {} reused, {} cached; {} credential calls",
            n(self.uploads_new),
            n(self.uploads_reused),
            n(self.uploads_cached),
            n(self.credential_calls)
        ));
        let retries: u64 = self.retries.values().sum();
        if retries > 0 || self.throttled_seen > 0 {
            lines.push(format!(
                "  {} retries{}; {} 429s{}",
                n(retries),
                counts(&self.retries),
                n(self.throttled_seen),
                counts(&self.throttled_by_kind)
            ));
        }
        let mut pace = format!(
            "  tokens {} in / {} out; {:.1}s, {}",
            n(self.prompt_tokens),
            n(self.completion_tokens),
            self.elapsed_s,
            super::progress::rate(self.rows_per_s)
        );
        if !self.model_pace.is_empty() {
            let parts: Vec<String> = self
                .model_pace
                .iter()
                .map(|(m, r)| format!("{m} {r:.1}/s"))
                .collect();
            pace += &format!("; paced {}", parts.join(", "));
        }
        lines.push(pace);
        if !self.model_token_pace.is_empty() {
            let parts: Vec<String> = self
                .model_token_pace
                .iter()
                .map(|(m, r)| format!("{m} {} tokens/s", n(r.round() as u64)))
                .collect();
            lines.push(format!("  tokens paced {}", parts.join(", ")));
        }
        lines.join("\n")
    }
}

/// The cause a failure code names, whatever its spelling: snake case, so `InvalidApiKey`
/// and `invalid_api_key` are one cause and `Throttling.RateQuota` reads
/// `throttling.rate_quota`. Our own codes are snake case already.
pub fn cause(code: &ErrorCode) -> String {
    let mut key = String::new();
    let mut previous_lower = false;
    for c in code.as_str().chars() {
        if c.is_uppercase() && previous_lower {
            key.push('_');
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        key.extend(c.to_lowercase());
    }
    key
}

/// `1,234`.
fn n(count: u64) -> indicatif::HumanCount {
    indicatif::HumanCount(count)
}

/// `" (a 1, b 2)"` for a non-empty map, else nothing.
fn counts<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = map.iter().map(|(k, c)| format!("{k} {}", n(*c))).collect();
    format!(" ({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{RowResult, Tokens};

    /// Issue 12: one refusal, spelled by two APIs, is one bucket in the summary; the
    /// figures for scripts keep the service's codes.
    #[test]
    fn one_cause_is_one_bucket_whatever_its_spelling() {
        let mut stats = Stats::default();
        for code in [
            "InvalidApiKey",
            "invalid_api_key",
            "InvalidApiKey",
            "Throttling.RateQuota",
        ] {
            stats.record(&RowResult {
                status: Status::Failed,
                error_code: Some(ErrorCode::service(code)),
                ..RowResult::default()
            });
        }
        stats.record(&RowResult {
            status: Status::Failed,
            error_code: Some(crate::failure::FailureCode::Timeout.into()),
            ..RowResult::default()
        });
        let causes = stats.failure_causes();
        assert_eq!(causes.get("invalid_api_key"), Some(&3), "{causes:?}");
        assert_eq!(causes.len(), 3, "{causes:?}");
        let summary = stats.summary_line();
        assert!(
            summary.contains("5 failed (invalid_api_key 3, throttling.rate_quota 1, timeout 1)"),
            "{summary}"
        );
        assert_eq!(
            stats.failures.len(),
            4,
            "the service's codes are kept for scripts"
        );
    }

    #[test]
    fn the_summary_is_short_lines_with_thousands_separators() {
        let mut stats = Stats {
            rows_total: 1_234_567,
            rows_ok: 1_234,
            rows_skipped: 1_233_333,
            prompt_tokens: 9_876_543,
            throttled_seen: 2,
            elapsed_s: 12.0,
            rows_per_s: 102.8,
            ..Stats::default()
        };
        stats.retries.insert("throttled", 2);
        stats.model_pace.insert("qwen-vl-plus".into(), 2.0);
        stats
            .model_token_pace
            .insert("qwen-vl-plus".into(), 6_151.4);
        let summary = stats.summary_line();
        assert!(
            summary.starts_with("1,234 ok, 0 failed, 1,233,333 skipped of 1,234,567 rows\n"),
            "{summary}"
        );
        assert!(summary.contains("tokens 9,876,543 in"), "{summary}");
        assert!(
            summary.contains("103 rows/s; paced qwen-vl-plus 2.0/s"),
            "{summary}"
        );
        assert!(
            summary.contains("2 retries (throttled 2); 2 429s"),
            "{summary}"
        );
        assert!(
            summary.contains("\n  tokens paced qwen-vl-plus 6,151 tokens/s"),
            "{summary}"
        );
        for line in summary.lines() {
            assert!(line.chars().count() <= 80, "{line}");
        }
    }

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
