//! Adding the `input_digest` column to a results file written before it existed.

use std::path::Path;

use super::reader_builder;
use crate::output::atomic::atomic_rewrite;
use crate::output::results::{COLUMNS_V1, col};

/// Rewrites a results file of the version before `input_digest` (whose last line [`super::scan`]
/// found complete) with the column, empty on every line. Lines of another width (hand edits)
/// are copied as they are, to be skipped with a warning as before.
pub(super) fn add_digest_column(out: &Path, extra: &[String]) -> std::io::Result<()> {
    let mut reader = reader_builder().from_path(out)?;
    let at = col::INPUT_DIGEST;
    let old_width = COLUMNS_V1.len() + extra.len();
    atomic_rewrite(out, |file| {
        let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(file);
        let mut record = csv::ByteRecord::new();
        let mut wider = csv::ByteRecord::new();
        let mut first = true;
        while reader.read_byte_record(&mut record)? {
            if first || record.len() == old_width {
                wider.clear();
                for (i, field) in record.iter().enumerate() {
                    if i == at {
                        wider.push_field(if first { b"input_digest" } else { b"" });
                    }
                    wider.push_field(field);
                }
                if record.len() == at {
                    wider.push_field(if first { b"input_digest" } else { b"" });
                }
                writer.write_byte_record(&wider)?;
            } else {
                writer.write_byte_record(&record)?;
            }
            first = false;
        }
        writer.flush()
    })
}
