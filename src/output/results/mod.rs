//! The results file: one line per manifest row, in the column order users script against,
//! as CSV or JSONL ([`format`]).

use std::io::{BufWriter, Write};

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

pub mod format;
pub mod resume;

pub use format::Format;

/// Positions of the columns code reads back, from [`COLUMNS`].
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
    sink: Sink<W>,
    extra: usize,
    /// A line being built, reused.
    record: csv::ByteRecord,
}

enum Sink<W: Write> {
    // Boxed: the csv writer's state is several times the JSONL variant's, and one writer
    // lives per file, so the extra allocation costs nothing.
    Csv(Box<csv::Writer<W>>),
    /// JSONL: the column names are every line's keys.
    Jsonl {
        out: BufWriter<W>,
        names: Vec<String>,
    },
}

impl<W: Write> ResultsWriter<W> {
    /// Starts a CSV results file, writing the header when `write_header` (a new or empty
    /// file).
    pub fn new(sink: W, extra_columns: &[String], write_header: bool) -> csv::Result<Self> {
        Self::with_format(sink, extra_columns, write_header, Format::Csv, false)
    }

    /// Starts a results file in `format`. With `write_header` (a new or empty file), CSV gets
    /// its header line, after a UTF-8 BOM when `bom` (`--excel-bom`); JSONL has no header.
    pub fn with_format(
        mut sink: W,
        extra_columns: &[String],
        write_header: bool,
        format: Format,
        bom: bool,
    ) -> csv::Result<Self> {
        let names = || {
            COLUMNS
                .iter()
                .map(|c| c.to_string())
                .chain(extra_columns.iter().cloned())
        };
        let sink = match format {
            Format::Csv => {
                if write_header && bom {
                    sink.write_all(format::BOM)?;
                }
                let mut csv = csv::WriterBuilder::new()
                    .flexible(false)
                    .has_headers(false)
                    .from_writer(sink);
                if write_header {
                    csv.write_record(names())?;
                }
                Sink::Csv(Box::new(csv))
            }
            Format::Jsonl => Sink::Jsonl {
                out: BufWriter::new(sink),
                names: names().collect(),
            },
        };
        Ok(Self {
            sink,
            extra: extra_columns.len(),
            record: csv::ByteRecord::new(),
        })
    }

    pub fn write(&mut self, r: &RowResult) -> csv::Result<()> {
        let mut num = itoa::Buffer::new();
        let mut c = std::mem::take(&mut self.record);
        c.clear();
        c.push_field(r.id.as_bytes());
        c.push_field(num.format(r.line).as_bytes());
        c.push_field(r.model.as_bytes());
        c.push_field(r.file.as_bytes());
        c.push_field(r.prompt.as_bytes());
        c.push_field(r.status.as_str().as_bytes());
        c.push_field(r.response.as_bytes());
        c.push_field(r.finish_reason.as_bytes());
        match r.tokens {
            Some(t) => {
                c.push_field(num.format(t.prompt).as_bytes());
                c.push_field(num.format(t.completion).as_bytes());
                c.push_field(num.format(t.total).as_bytes());
            }
            None => {
                for _ in 0..3 {
                    c.push_field(b"");
                }
            }
        }
        c.push_field(r.oss_url.as_bytes());
        c.push_field(r.upload.as_str().as_bytes());
        c.push_field(num.format(r.attempts).as_bytes());
        c.push_field(
            r.error_code
                .as_ref()
                .map_or("", ErrorCode::as_str)
                .as_bytes(),
        );
        c.push_field(r.error_message.as_bytes());
        c.push_field(r.request_id.as_bytes());
        c.push_field(num.format(r.latency_ms).as_bytes());
        c.push_field(
            r.finished_at
                .to_rfc3339_opts(SecondsFormat::Millis, true)
                .as_bytes(),
        );
        match r.input_digest {
            Some(digest) => c.push_field(digest.to_string().as_bytes()),
            None => c.push_field(b""),
        }
        c.push_field(r.reasoning.as_bytes());
        // A row always carries one value per pass-through column; pad defensively so a
        // short row can never shift the columns of the file.
        for i in 0..self.extra {
            c.push_field(r.extra.get(i).map_or("", String::as_str).as_bytes());
        }
        let written = self.write_raw(&c);
        self.record = c;
        written
    }

    /// Writes a line copied from an earlier results file (fields in column order).
    pub fn write_raw(&mut self, record: &csv::ByteRecord) -> csv::Result<()> {
        match &mut self.sink {
            Sink::Csv(csv) => csv.write_byte_record(record),
            Sink::Jsonl { out, names } => Ok(format::write_json_line(out, names, record)?),
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Csv(csv) => csv.flush(),
            Sink::Jsonl { out, .. } => out.flush(),
        }
    }

    pub fn get_ref(&self) -> &W {
        match &self.sink {
            Sink::Csv(csv) => csv.get_ref(),
            Sink::Jsonl { out, .. } => out.get_ref(),
        }
    }

    /// Flushes and forces written lines to stable storage.
    pub fn sync(&mut self) -> std::io::Result<()>
    where
        W: super::reporter::Durable,
    {
        self.flush()?;
        self.get_ref().sync()
    }

    /// Flushes and returns the sink.
    pub fn into_inner(self) -> std::io::Result<W> {
        match self.sink {
            Sink::Csv(csv) => (*csv).into_inner().map_err(|e| e.into_error()),
            Sink::Jsonl { out, .. } => out.into_inner().map_err(|e| e.into_error()),
        }
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
