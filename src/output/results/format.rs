//! How a results file is written down: CSV (a header line, then one record per row) or JSONL
//! (one JSON object per row, keys in column order). Everything above this module (resume,
//! compaction, the side file, merge) works on a line as a [`csv::ByteRecord`] in column
//! order; this module turns that into bytes and back.
//!
//! A file's format is told by its name ([`Format::of`]): `.jsonl` or `.ndjson` is JSONL,
//! anything else CSV. So a later run, `validate` or `merge` reads a results file the way it was
//! written without being told, and the side file takes the format of its results file.
//!
//! In JSONL, the number columns ([`NUMBERS`]) are JSON numbers, or `null` when empty (a row
//! that never got that far); every other column is a string. Every key is on every line, as
//! every column is on every CSV line. There is no header line: the keys of the first line
//! stand for it.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

use super::COLUMNS;

/// A UTF-8 byte order mark, which Excel needs to read a CSV file as UTF-8.
pub const BOM: &[u8] = b"\xef\xbb\xbf";

/// Columns written as JSON numbers in JSONL.
pub const NUMBERS: [&str; 6] = [
    "line",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "attempts",
    "latency_ms",
];

/// `--format` and a job file's `format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Csv,
    Jsonl,
}

impl Format {
    /// The format of the results file at `path`, by its extension.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext)
                if ext.eq_ignore_ascii_case("jsonl") || ext.eq_ignore_ascii_case("ndjson") =>
            {
                Format::Jsonl
            }
            _ => Format::Csv,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }

    /// The extension of a results file in this format, without the dot.
    pub fn extension(self) -> &'static str {
        self.as_str()
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--format` (or job file's `format`) that OUT's extension contradicts, or `--excel-bom`
/// with JSONL.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "--format {format} but OUT {out} names a {named} file; results files are read by \
         their extension (.jsonl or .ndjson for JSONL), so name OUT accordingly or leave \
         --format out"
    )]
    Contradicts {
        format: Format,
        out: std::path::PathBuf,
        named: Format,
    },
    #[error("--excel-bom is for CSV results, but {out} is JSONL; leave --excel-bom out")]
    BomWithJsonl { out: std::path::PathBuf },
}

/// Checks `out` against the format asked for (`--format`, if any) and `--excel-bom`.
pub fn check_format(out: &Path, asked: Option<Format>, bom: bool) -> Result<Format, FormatError> {
    let named = Format::of(out);
    if let Some(format) = asked.filter(|&f| f != named) {
        return Err(FormatError::Contradicts {
            format,
            out: out.to_owned(),
            named,
        });
    }
    if bom && named == Format::Jsonl {
        return Err(FormatError::BomWithJsonl {
            out: out.to_owned(),
        });
    }
    Ok(named)
}

/// Whether the file at `path` starts with a [`BOM`] (a results file written with
/// `--excel-bom`, which a rewrite keeps).
pub fn starts_with_bom(path: &Path) -> bool {
    let mut head = [0u8; 3];
    File::open(path)
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head == BOM)
}

/// Writes `record` (fields in the order of `names`) as one JSONL line.
pub fn write_json_line(
    out: &mut impl Write,
    names: &[String],
    record: &csv::ByteRecord,
) -> io::Result<()> {
    let mut line = Vec::with_capacity(record.as_slice().len() + 32 * names.len());
    line.push(b'{');
    for (i, (name, field)) in names.iter().zip(record.iter()).enumerate() {
        if i > 0 {
            line.push(b',');
        }
        serde_json::to_writer(&mut line, name)?;
        line.push(b':');
        let number = NUMBERS.contains(&name.as_str()) && i < COLUMNS.len();
        match std::str::from_utf8(field) {
            Ok("") if number => line.extend_from_slice(b"null"),
            Ok(text) if number && text.bytes().all(|b| b.is_ascii_digit()) => {
                line.extend_from_slice(text.as_bytes())
            }
            Ok(text) => serde_json::to_writer(&mut line, text)?,
            Err(_) => serde_json::to_writer(&mut line, &String::from_utf8_lossy(field))?,
        }
    }
    line.extend_from_slice(b"}\n");
    out.write_all(&line)
}

/// The fields of JSONL line `text` in the order of `names`, into `record`; `false` when the
/// line is not a JSON object with exactly those keys (a hand edit, or a line cut short).
fn read_json_line(text: &[u8], names: &[String], record: &mut csv::ByteRecord) -> bool {
    record.clear();
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(text) else {
        return false;
    };
    if object.len() != names.len() {
        return false;
    }
    let mut number = itoa::Buffer::new();
    for name in names {
        match object.get(name) {
            Some(serde_json::Value::String(s)) => record.push_field(s.as_bytes()),
            Some(serde_json::Value::Null) => record.push_field(b""),
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(n) => record.push_field(number.format(n).as_bytes()),
                None => record.push_field(n.to_string().as_bytes()),
            },
            _ => {
                record.clear();
                return false;
            }
        }
    }
    true
}

/// The keys of JSONL line `text`, in the order written.
fn json_keys(text: &[u8]) -> Option<Vec<String>> {
    // serde_json's map sorts its keys; the order is read with a visitor that keeps it.
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some(key) = map.next_key::<String>()? {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        keys.push(key);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_slice::<Keys>(text).ok().map(|k| k.0)
}

/// Reads the records of a results file in either format, with the byte offset and line of
/// each, and seeks back to a record by its offset.
pub enum RecordReader {
    Csv(csv::Reader<File>),
    Jsonl(JsonlReader),
}

pub struct JsonlReader {
    file: BufReader<File>,
    /// The keys of the first line, which stand for a header.
    names: Option<Vec<String>>,
    offset: u64,
    line: u64,
    text: Vec<u8>,
    /// Whether the last line read ended with a line end (a crash can cut it short).
    ended: bool,
}

impl RecordReader {
    /// Opens `path` in its format ([`Format::of`]); positions count from the start of the
    /// file, BOM included.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(match Format::of(path) {
            Format::Csv => RecordReader::Csv(
                csv::ReaderBuilder::new()
                    .flexible(true)
                    .has_headers(false)
                    .from_path(path)
                    .map_err(io::Error::other)?,
            ),
            Format::Jsonl => RecordReader::Jsonl(JsonlReader {
                file: BufReader::new(File::open(path)?),
                names: None,
                offset: 0,
                line: 1,
                text: Vec::new(),
                ended: true,
            }),
        })
    }

    /// The column names: the CSV header line, or the keys of the first JSONL line (which is
    /// then read again as a record). `None` for a file with no line.
    pub fn header(&mut self) -> csv::Result<Option<Vec<String>>> {
        match self {
            RecordReader::Csv(reader) => {
                let mut record = csv::ByteRecord::new();
                if !reader.read_byte_record(&mut record)? {
                    return Ok(None);
                }
                Ok(Some(
                    record
                        .iter()
                        .map(|f| String::from_utf8_lossy(f).into_owned())
                        .collect(),
                ))
            }
            RecordReader::Jsonl(reader) => {
                let start = reader.offset;
                let mut text = Vec::new();
                reader.file.read_until(b'\n', &mut text)?;
                reader.file.seek(SeekFrom::Start(start))?;
                let text = text.strip_prefix(BOM).unwrap_or(&text);
                // A first line cut short (a crash as the file was started) names no columns
                // yet, like a CSV header cut short.
                if text.iter().all(u8::is_ascii_whitespace) || !text.ends_with(b"\n") {
                    return Ok(None);
                }
                // A first line that is not an object names no columns: an empty header,
                // which matches no manifest's.
                let names = json_keys(text).unwrap_or_default();
                reader.names = Some(names.clone());
                Ok(Some(names))
            }
        }
    }

    /// Byte offset and 1-based line of the next record.
    pub fn position(&self) -> (u64, u64) {
        match self {
            RecordReader::Csv(reader) => (reader.position().byte(), reader.position().line()),
            RecordReader::Jsonl(reader) => (reader.offset, reader.line),
        }
    }

    /// Reads the next record. A JSONL line that does not parse, or has other keys than the
    /// first, gives an empty record (the wrong width, so callers skip it).
    pub fn read(&mut self, record: &mut csv::ByteRecord) -> csv::Result<bool> {
        match self {
            RecordReader::Csv(reader) => reader.read_byte_record(record),
            RecordReader::Jsonl(reader) => {
                let position = {
                    let mut p = csv::Position::new();
                    p.set_byte(reader.offset).set_line(reader.line);
                    p
                };
                loop {
                    reader.text.clear();
                    let n = reader.file.read_until(b'\n', &mut reader.text)?;
                    if n == 0 {
                        return Ok(false);
                    }
                    reader.offset += n as u64;
                    reader.line += 1;
                    reader.ended = reader.text.ends_with(b"\n");
                    let text = reader.text.strip_prefix(BOM).unwrap_or(&reader.text);
                    // Blank lines are no records, as in CSV.
                    if text.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let names = reader
                        .names
                        .get_or_insert_with(|| json_keys(text).unwrap_or_default());
                    read_json_line(text, names, record);
                    record.set_position(Some(position));
                    return Ok(true);
                }
            }
        }
    }

    /// Seeks to the record starting at byte `offset`.
    pub fn seek(&mut self, offset: u64) -> csv::Result<()> {
        match self {
            RecordReader::Csv(reader) => {
                let mut position = csv::Position::new();
                position.set_byte(offset);
                reader.seek(position)
            }
            RecordReader::Jsonl(reader) => {
                reader.file.seek(SeekFrom::Start(offset))?;
                reader.offset = offset;
                Ok(())
            }
        }
    }
}

/// Whether `tail`, one record of a file in `format` from its start to the end of the file, is
/// complete (see `resume::ends_a_record` for CSV). A JSONL line is complete when it ends with
/// a line end and parses.
pub fn jsonl_line_complete(tail: &[u8]) -> bool {
    tail.ends_with(b"\n") && json_keys(tail.strip_prefix(BOM).unwrap_or(tail)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_round_trips_with_typed_numbers_and_keys_in_column_order() {
        let names: Vec<String> = ["id", "line", "prompt", "total_tokens", "latency_ms"]
            .map(String::from)
            .to_vec();
        let mut record = csv::ByteRecord::new();
        for f in ["a\"1", "7", "Say\n\"hi\", 你好", "", "12"] {
            record.push_field(f.as_bytes());
        }
        let mut out = Vec::new();
        write_json_line(&mut out, &names, &record).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{\"id\":\"a\\\"1\",\"line\":7,\"prompt\":\"Say\\n\\\"hi\\\", 你好\",\
             \"total_tokens\":null,\"latency_ms\":12}\n"
        );
        assert_eq!(json_keys(&out).unwrap(), names);
        let mut back = csv::ByteRecord::new();
        assert!(read_json_line(&out, &names, &mut back));
        assert_eq!(back, record);
        assert!(jsonl_line_complete(&out));
        assert!(!jsonl_line_complete(&out[..out.len() - 1]));
        assert!(!jsonl_line_complete(b"{\"id\":\"a\n"));
    }

    #[test]
    fn the_format_follows_the_extension() {
        for (name, format) in [
            ("r.jsonl", Format::Jsonl),
            ("r.NDJSON", Format::Jsonl),
            ("r.csv", Format::Csv),
            ("r", Format::Csv),
            ("r.jsonl.csv", Format::Csv),
        ] {
            assert_eq!(Format::of(Path::new(name)), format, "{name}");
        }
    }
}
