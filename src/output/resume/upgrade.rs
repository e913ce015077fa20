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
