//! The results CSV: one line per manifest row, in the column order users script against.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::failure::ErrorCode;

/// The fixed columns, in order. Pass-through manifest columns follow them. A new column goes
/// last (before the pass-through ones), so that scripts that read the others by position keep
/// working; code reads them through [`column`].
pub const COLUMNS: [&str; 21] = [
    "id",
    "line",
    "model",
    "file",
    "prompt",
    "status",
    "response",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "oss_url",
    "upload",
    "attempts",
    "error_code",
    "error_message",
    "request_id",
    "latency_ms",
    "finished_at",
    "input_digest",
    "reasoning",
];

/// The columns of a results file written before `input_digest` existed (they are the first
/// ones of [`COLUMNS`]); such a file is upgraded when a run resumes it.
pub const COLUMNS_V1: &[&str] = COLUMNS.split_at(col::INPUT_DIGEST).0;

/// The columns of a results file written before `reasoning` existed; upgraded in the same
/// way.
pub const COLUMNS_V2: &[&str] = COLUMNS.split_at(col::REASONING).0;

/// Positions of the columns code reads back, from [`COLUMNS`].
pub mod resume;

pub mod col {
    use super::column;
    pub const ID: usize = column("id");
    pub const LINE: usize = column("line");
    pub const MODEL: usize = column("model");
    pub const FILE: usize = column("file");
    pub const PROMPT: usize = column("prompt");
    pub const STATUS: usize = column("status");
    pub const ERROR_CODE: usize = column("error_code");
    pub const INPUT_DIGEST: usize = column("input_digest");
    pub const REASONING: usize = column("reasoning");
}

/// The position of `name` in [`COLUMNS`], at compile time: `column("nope")` does not build.
pub const fn column(name: &str) -> usize {
    let mut i = 0;
    while i < COLUMNS.len() {
        if str_eq(COLUMNS[i], name) {
            return i;
        }
        i += 1;
    }
    panic!("no such results column")
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Defaults to `Failed`: a row is `ok` only when something says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Status {
    Ok,
    #[default]
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
        }
    }
}

/// How the row's media got its URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UploadOutcome {
    /// This row uploaded the file.
    New,
    /// Another row of this run uploaded the same (model, content) first.
    Reused,
    /// A URL from an earlier run, still young enough to use.
    Cached,
    /// No upload: the row used a URL as written, or failed before uploading.
    #[default]
    None,
}

impl UploadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadOutcome::New => "new",
            UploadOutcome::Reused => "reused",
            UploadOutcome::Cached => "cached",
            UploadOutcome::None => "none",
        }
    }
}

/// Everything known about one finished row. `Default` is a failed row with nothing filled
/// in (and `finished_at` at the epoch), for building one field by field.
#[derive(Debug, Clone, Default)]
pub struct RowResult {
    pub id: String,
    pub line: u64,
    pub model: String,
    pub file: String,
    pub prompt: String,
    pub status: Status,
    pub response: String,
    /// A thinking model's reasoning; empty for other models.
    pub reasoning: String,
    pub finish_reason: String,
    pub tokens: Option<Tokens>,
    pub oss_url: String,
    pub upload: UploadOutcome,
    /// HTTP attempts this row made itself: its upload (if it did one) and its model calls.
    pub attempts: u32,
    /// Set on a failed row: our code or the service's.
    pub error_code: Option<ErrorCode>,
    pub error_message: String,
    pub request_id: String,
    pub latency_ms: u64,
    pub finished_at: DateTime<Utc>,
    /// What the row asked (see [`resume::InputDigest`]); empty for a row that never
    /// parsed into one.
    pub input_digest: Option<resume::InputDigest>,
    pub extra: Vec<String>,
    /// One cause per retry this row waited for (for the summary, not the CSV).
    pub retries: Vec<&'static str>,
    /// HTTP 429 answers this row saw, retried or final.
    pub saw_429: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

/// Writes result lines. Generic over the sink so tests and benches can use memory.
pub struct ResultsWriter<W: Write> {
    csv: csv::Writer<W>,
    extra: usize,
}

impl<W: Write> ResultsWriter<W> {
    /// Starts a results file, writing the header when `write_header` (a new or empty file).
    pub fn new(sink: W, extra_columns: &[String], write_header: bool) -> csv::Result<Self> {
        let mut csv = csv::WriterBuilder::new()
            .flexible(false)
            .has_headers(false)
            .from_writer(sink);
        if write_header {
            csv.write_record(
                COLUMNS
                    .iter()
                    .copied()
                    .chain(extra_columns.iter().map(String::as_str)),
            )?;
        }
        Ok(Self {
            csv,
            extra: extra_columns.len(),
        })
    }

    pub fn write(&mut self, r: &RowResult) -> csv::Result<()> {
        let mut num = itoa::Buffer::new();
        let c = &mut self.csv;
        c.write_field(&r.id)?;
        c.write_field(num.format(r.line))?;
        c.write_field(&r.model)?;
        c.write_field(&r.file)?;
        c.write_field(&r.prompt)?;
        c.write_field(r.status.as_str())?;
        c.write_field(&r.response)?;
        c.write_field(&r.finish_reason)?;
        match r.tokens {
            Some(t) => {
                c.write_field(num.format(t.prompt))?;
                c.write_field(num.format(t.completion))?;
                c.write_field(num.format(t.total))?;
            }
            None => {
                for _ in 0..3 {
                    c.write_field("")?;
                }
            }
        }
        c.write_field(&r.oss_url)?;
        c.write_field(r.upload.as_str())?;
        c.write_field(num.format(r.attempts))?;
        c.write_field(r.error_code.as_ref().map_or("", ErrorCode::as_str))?;
        c.write_field(&r.error_message)?;
        c.write_field(&r.request_id)?;
        c.write_field(num.format(r.latency_ms))?;
        c.write_field(r.finished_at.to_rfc3339_opts(SecondsFormat::Millis, true))?;
        match r.input_digest {
            Some(digest) => c.write_field(digest.to_string())?,
            None => c.write_field("")?,
        }
        c.write_field(&r.reasoning)?;
        // A row always carries one value per pass-through column; pad defensively so a
        // short row can never shift the columns of the file.
        for i in 0..self.extra {
            c.write_field(r.extra.get(i).map_or("", String::as_str))?;
        }
        c.write_record(None::<&[u8]>)
    }

    /// Writes a line copied from an earlier results file.
    pub fn write_raw(&mut self, record: &csv::ByteRecord) -> csv::Result<()> {
        self.csv.write_byte_record(record)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.csv.flush()
    }

    pub fn get_ref(&self) -> &W {
        self.csv.get_ref()
    }

    /// Flushes and forces written lines to stable storage.
    pub fn sync(&mut self) -> std::io::Result<()>
    where
        W: super::reporter::Durable,
    {
        self.csv.flush()?;
        self.csv.get_ref().sync()
    }

    /// Flushes and returns the sink.
    pub fn into_inner(self) -> std::io::Result<W> {
        self.csv.into_inner().map_err(|e| e.into_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(id: &str) -> RowResult {
        RowResult {
            id: id.into(),
            line: 2,
            model: "qwen-vl-plus".into(),
            file: "img/a.png".into(),
            prompt: "What, \"exactly\"?\nSay it.".into(),
            status: Status::Ok,
            response: "A cat.".into(),
            reasoning: "Whiskers.".into(),
            finish_reason: "stop".into(),
            tokens: Some(Tokens {
                prompt: 10,
                completion: 3,
                total: 13,
            }),
            oss_url: "oss://d/a.png".into(),
            upload: UploadOutcome::New,
            attempts: 2,
            error_code: None,
            error_message: String::new(),
            request_id: "r1".into(),
            latency_ms: 120,
            finished_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            input_digest: Some(super::resume::InputDigest(0xabc)),
            extra: vec!["x".into()],
            retries: vec![],
            saw_429: 0,
        }
    }

    #[test]
    fn writes_header_then_rows_that_read_back() {
        let mut w = ResultsWriter::new(Vec::new(), &["batch".into()], true).unwrap();
        w.write(&sample("a")).unwrap();
        w.flush().unwrap();
        let bytes = w.get_ref().clone();
        let mut r = csv::Reader::from_reader(bytes.as_slice());
        let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header.len(), 22);
        assert_eq!(&header[..21], COLUMNS);
        assert_eq!(header[21], "batch");
        let row = r.records().next().unwrap().unwrap();
        assert_eq!(&row[0], "a");
        assert_eq!(&row[4], "What, \"exactly\"?\nSay it.");
        assert_eq!(&row[5], "ok");
        assert_eq!(&row[10], "13");
        assert_eq!(&row[12], "new");
        assert_eq!(&row[18], "2023-11-14T22:13:20.000Z");
        assert_eq!(&row[col::INPUT_DIGEST], "0000000000000abc");
        assert_eq!(&row[col::REASONING], "Whiskers.");
        assert_eq!(&row[21], "x");
        assert_eq!(COLUMNS_V1.len(), 19);
        assert_eq!(COLUMNS_V2.len(), 20);
    }
}
