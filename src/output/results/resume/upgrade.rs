//! Bringing a results file written by an earlier version up to today's columns: before
//! `input_digest` ([`COLUMNS_V1`]), or before `reasoning` ([`COLUMNS_V2`]). Lines are mapped
//! by the names in their header, never by position, so that a column added anywhere finds
//! its old values; a column the file lacks is empty on every line.

use std::path::Path;

use super::{expected_header, reader_builder};
use crate::output::atomic::atomic_rewrite;
use crate::output::results::{COLUMNS, COLUMNS_V1, COLUMNS_V2};

/// The fixed columns of every earlier version a run still resumes, oldest first.
const EARLIER: [&[&str]; 2] = [COLUMNS_V1, COLUMNS_V2];

/// Whether `found` is the header an earlier version wrote for a manifest with `extra`
/// pass-through columns.
pub(super) fn is_earlier(found: &[String], extra: &[String]) -> bool {
    EARLIER
        .iter()
        .any(|columns| found == expected_header(columns, extra).as_slice())
}

/// Rewrites a results file of an earlier version (whose last line [`super::scan`] found
/// complete) with today's columns, each taken from the old column of the same name. Lines of
/// another width than the header's (hand edits) are copied as they are, to be skipped with a
/// warning as before.
pub(super) fn upgrade_columns(out: &Path, extra: &[String]) -> std::io::Result<()> {
    let mut reader = reader_builder().from_path(out)?;
    let mut header = csv::ByteRecord::new();
    if !reader.read_byte_record(&mut header)? {
        return Ok(());
    }
    let old_fixed = header.len().saturating_sub(extra.len());
    // For each of today's columns, where the old file has it.
    let from: Vec<Option<usize>> = COLUMNS
        .iter()
        .map(|name| {
            header
                .iter()
                .take(old_fixed)
                .position(|f| f == name.as_bytes())
        })
        .collect();
    let old_width = header.len();
    atomic_rewrite(out, |file| {
        let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(file);
        writer.write_record(
            COLUMNS
                .iter()
                .copied()
                .chain(extra.iter().map(String::as_str)),
        )?;
        let mut record = csv::ByteRecord::new();
        let mut upgraded = csv::ByteRecord::new();
        while reader.read_byte_record(&mut record)? {
            if record.len() != old_width {
                writer.write_byte_record(&record)?;
                continue;
            }
            upgraded.clear();
            for at in &from {
                upgraded.push_field(at.map_or(&b""[..], |i| &record[i]));
            }
            for field in record.iter().skip(old_fixed) {
                upgraded.push_field(field);
            }
            writer.write_byte_record(&upgraded)?;
        }
        writer.flush()
    })
}

#[cfg(test)]
mod tests {
    use super::super::{open_for_append, side_path};
    use crate::output::results::{COLUMNS, COLUMNS_V2};

    /// A results file and its side file from before `reasoning` are both upgraded by name:
    /// every old value lands under its own column, the new one is empty, and their ok lines
    /// still count. (Side files used to be refused unless they had exactly today's columns.)
    #[test]
    fn files_from_before_reasoning_are_upgraded_by_column_name() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.csv");
        let extra = vec!["note".to_owned()];
        let line = |id: &str| -> String {
            COLUMNS_V2
                .iter()
                .map(|c| match *c {
                    "id" => id.to_owned(),
                    "status" => "ok".to_owned(),
                    "input_digest" => "0123456789abcdef".to_owned(),
                    other => format!("{other}-{id}"),
                })
                .chain([format!("note-{id}")])
                .collect::<Vec<_>>()
                .join(",")
        };
        let header = format!("{},note\n", COLUMNS_V2.join(","));
        std::fs::write(&out, format!("{header}{}\n", line("a"))).unwrap();
        std::fs::write(side_path(&out), format!("{header}{}\n", line("s"))).unwrap();

        let (_, previous) = open_for_append(&out, &extra, false, false).unwrap();
        assert_eq!(previous.done.0.len(), 2, "both ok lines count");
        for (file, id) in [(out.clone(), "a"), (side_path(&out), "s")] {
            let mut reader = csv::Reader::from_path(&file).unwrap();
            let names: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
            assert_eq!(names[..COLUMNS.len()], COLUMNS.map(String::from));
            assert_eq!(names[COLUMNS.len()], "note");
            let record = reader.records().next().unwrap().unwrap();
            for (name, value) in names.iter().zip(record.iter()) {
                let want = match name.as_str() {
                    "id" => id.to_owned(),
                    "status" => "ok".to_owned(),
                    "input_digest" => "0123456789abcdef".to_owned(),
                    "reasoning" => String::new(),
                    other => format!("{other}-{id}"),
                };
                assert_eq!(value, want, "{name} in {}", file.display());
            }
        }
    }
}
