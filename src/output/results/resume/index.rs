//! Compaction's view of a results file and its side file: every line's id, digest and offset
//! ([`LineOffsets`]), the lines of one window of manifest rows and the choice among them
//! ([`LineIndex`]), the `ok` lines no row took ([`LineOffsets::orphans`]), and reading a line
//! back ([`Lines`]).

use std::path::Path;

use super::{ResumeError, line_digest};
use crate::failure::FailureCode;
use crate::manifest::id_key;
use crate::output::results::format::RecordReader;
use crate::output::results::{COLUMNS, col};
use crate::spill::{Spill, SpillError};

/// The top bit of a line's value: the line is `ok`.
const OK: u64 = 1 << 63;
/// The next bit: the line is in the results file itself, not in its side file. Set, it also
/// orders a results line after every side-file line, which is older.
const IN_OUT: u64 = 1 << 62;
/// The rest: the line's byte offset in its file.
const OFFSET: u64 = IN_OUT - 1;

/// The lines of one window of manifest rows, as sorted `[id key, digest, value]` records
/// (value: offset, [`IN_OUT`], [`OK`]), 24 bytes a line with no table slack. Compaction builds
/// one per window ([`LineOffsets::index`]) and looks ids up in manifest order.
#[derive(Debug, Default)]
pub struct LineIndex {
    /// Sorted by key, then in file order (side file first).
    entries: Vec<[u64; 3]>,
}

impl LineIndex {
    /// The line that stands for a row with id key `key` whose lines may carry one of
    /// `digests`: the latest `ok` line that answers what the row asks now (from the results
    /// file before its side file), else the latest failed line of the results file. An `ok`
    /// line for another question is never the row's: it goes to the side file, and the row
    /// is written as not yet done. Returns the line's digest and its value for
    /// [`Lines::read`].
    pub fn choose(&self, key: u64, digests: [u64; 2]) -> Option<[u64; 2]> {
        let start = self.entries.partition_point(|e| e[0] < key);
        let lines = self.entries[start..].iter().take_while(|e| e[0] == key);
        let (mut ok, mut failed) = (None, None);
        for &[_, digest, value] in lines {
            if value & OK != 0 {
                if digests.contains(&digest) {
                    ok = Some([digest, value]);
                }
            } else if value & IN_OUT != 0 {
                failed = Some([digest, value]);
            }
        }
        ok.or(failed)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn from_lines(mut lines: Vec<[u64; 3]>) -> Self {
        // Unstable sort: in place, no n/2 merge buffer. The value without the ok bit is the
        // file order.
        lines.sort_unstable_by_key(|&[k, _, v]| (k, v & !OK));
        Self { entries: lines }
    }
}

/// Every line of a results file and of its side file as `[id key, digest, value]`, in file
/// order, from which compaction builds a [`LineIndex`] for one window of manifest rows at a
/// time. Held in a [`Spill`], so files of any length cost the same memory.
#[derive(Debug)]
pub struct LineOffsets(Spill<3>);

impl LineOffsets {
    /// The index of the lines whose id key is in `keys` (sorted).
    pub fn index(&mut self, keys: &[u64]) -> Result<LineIndex, SpillError> {
        let mut lines = Vec::with_capacity(keys.len());
        self.0.for_each(|line| {
            if keys.binary_search(&line[0]).is_ok() {
                lines.push(line);
            }
        })?;
        Ok(LineIndex::from_lines(lines))
    }

    /// Calls `orphan` with the value of every `ok` line whose `(id key, digest)` is not in
    /// `taken` (the lines compaction wrote to the results file), one line per pair (the
    /// latest). Reads the lines in slices of the key space of about `per_pass` lines each, so
    /// that memory stays bounded; within a slice, lines come in file order.
    pub fn orphans(
        &mut self,
        taken: &mut Spill<2>,
        per_pass: usize,
        mut orphan: impl FnMut(u64) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let slices = self.0.slices(per_pass);
        let mut count = 0;
        for slice in 0..slices {
            let lo = ((u128::from(slice) << 64) / u128::from(slices)) as u64;
            let hi = ((u128::from(slice + 1) << 64) / u128::from(slices) - 1) as u64;
            let within = |key: u64| (lo..=hi).contains(&key);
            let mut lines = Vec::new();
            self.0
                .for_each(|line| {
                    if line[2] & OK != 0 && within(line[0]) {
                        lines.push(line);
                    }
                })
                .map_err(std::io::Error::other)?;
            let mut kept = Vec::new();
            taken
                .for_each(|pair| {
                    if within(pair[0]) {
                        kept.push(pair);
                    }
                })
                .map_err(std::io::Error::other)?;
            kept.sort_unstable();
            // The latest line per (key, digest): sorted by file order within each pair, the
            // last one of a run of equal pairs stays.
            lines.sort_unstable_by_key(|&[k, d, v]| (k, d, v & !OK));
            lines.reverse();
            lines.dedup_by_key(|l| (l[0], l[1]));
            lines.retain(|&[k, d, _]| kept.binary_search(&[k, d]).is_err());
            lines.sort_unstable_by_key(|l| l[2] & !OK);
            for &[_, _, value] in &lines {
                orphan(value)?;
                count += 1;
            }
        }
        Ok(count)
    }
}

/// Reads the lines of results file `out` and of its side file `side` (when there is one) for
/// [`LineOffsets::index`]. Lines marked `duplicate_id`, lines with another field count than
/// the header, and failed lines of the side file are left out. Up to `in_memory` lines are
/// held in memory, the rest spill.
pub fn index_lines(
    out: &Path,
    side: Option<&Path>,
    in_memory: usize,
) -> Result<LineOffsets, ResumeError> {
    let mut lines = Spill::new(in_memory);
    if let Some(side) = side {
        read_lines(side, 0, &mut lines)?;
    }
    read_lines(out, IN_OUT, &mut lines)?;
    Ok(LineOffsets(lines))
}

fn read_lines(path: &Path, flag: u64, lines: &mut Spill<3>) -> Result<(), ResumeError> {
    let csv_err = |source| ResumeError::Csv {
        path: path.to_owned(),
        source,
    };
    let mut reader = RecordReader::open(path).map_err(|source| ResumeError::Io {
        path: path.to_owned(),
        source,
    })?;
    // Read the header now, so that the position taken before each read below is the start
    // of a data record and never of the header.
    let fields = reader.header().map_err(csv_err)?.map_or(0, |h| h.len());
    let mut record = csv::ByteRecord::new();
    loop {
        let (start, _) = reader.position();
        if !reader.read(&mut record).map_err(csv_err)? {
            break;
        }
        // A line with another field count than the header (a hand edit) cannot be copied:
        // the writer refuses it, which would fail the whole compaction.
        if record.len() != fields
            || fields < COLUMNS.len()
            || &record[col::ERROR_CODE] == FailureCode::DuplicateId.as_str().as_bytes()
        {
            continue;
        }
        let ok = &record[col::STATUS] == b"ok";
        if !ok && flag != IN_OUT {
            continue;
        }
        let key = id_key(std::str::from_utf8(&record[col::ID]).unwrap_or_default());
        let digest = line_digest(
            Some(&record[col::INPUT_DIGEST]),
            &record[col::MODEL],
            &record[col::FILE],
            &record[col::PROMPT],
        );
        let value = (start & OFFSET) | flag | if ok { OK } else { 0 };
        lines.push([key, digest, value])?;
    }
    Ok(())
}

/// Reads lines back from a results file and its side file, by the value [`LineIndex`] and
/// [`LineOffsets::orphans`] give.
pub struct Lines {
    out: LineReader,
    side: Option<LineReader>,
}

impl Lines {
    pub fn open(out: &Path, side: Option<&Path>) -> Result<Self, ResumeError> {
        Ok(Self {
            out: LineReader::open(out)?,
            side: side.map(LineReader::open).transpose()?,
        })
    }

    /// The line of `value`, its `line` column set to `line` when given.
    pub fn read(&mut self, value: u64, line: Option<u64>) -> csv::Result<Option<csv::ByteRecord>> {
        let reader = match (&mut self.side, value & IN_OUT != 0) {
            (Some(side), false) => side,
            _ => &mut self.out,
        };
        reader.read_at(value & OFFSET, line)
    }

    /// Whether the line of `value` is `ok`.
    pub fn is_ok(value: u64) -> bool {
        value & OK != 0
    }
}

/// Reads the line starting at an offset of one file.
pub struct LineReader {
    reader: RecordReader,
    record: csv::ByteRecord,
}

impl LineReader {
    pub fn open(out: &Path) -> Result<Self, ResumeError> {
        let mut reader = RecordReader::open(out).map_err(|source| ResumeError::Io {
            path: out.to_owned(),
            source,
        })?;
        // A JSONL file's column names are its first line's keys.
        reader.header().map_err(|source| ResumeError::Csv {
            path: out.to_owned(),
            source,
        })?;
        Ok(Self {
            reader,
            record: csv::ByteRecord::new(),
        })
    }

    /// The line starting at `offset`, its `line` column set to `line` when given.
    pub fn read_at(
        &mut self,
        offset: u64,
        line: Option<u64>,
    ) -> csv::Result<Option<csv::ByteRecord>> {
        self.reader.seek(offset)?;
        if !self.reader.read(&mut self.record)? {
            return Ok(None);
        }
        let Some(line) = line else {
            return Ok(Some(self.record.clone()));
        };
        let mut out = csv::ByteRecord::new();
        for (i, field) in self.record.iter().enumerate() {
            if i == col::LINE {
                out.push_field(itoa::Buffer::new().format(line).as_bytes());
            } else {
                out.push_field(field);
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT_OK: u64 = OK | IN_OUT;

    #[test]
    fn a_row_takes_its_latest_matching_ok_line_else_its_latest_failed_one() {
        // [key, digest, value] in file order: the side file first, then the results file.
        let index = LineIndex::from_lines(vec![
            [7, 1, OK | 5],
            [7, 2, IN_OUT | 10],
            [7, 1, OUT_OK | 30],
            [7, 9, OUT_OK | 50],
            [3, 1, OK | 6],
            [3, 2, IN_OUT | 40],
            [5, 4, IN_OUT | 60],
            [5, 4, IN_OUT | 70],
        ]);
        assert_eq!(index.choose(7, [1, 0]), Some([1, OUT_OK | 30]));
        assert_eq!(
            index.choose(7, [8, 0]),
            Some([2, IN_OUT | 10]),
            "no ok line answers it"
        );
        assert_eq!(
            index.choose(3, [1, 0]),
            Some([1, OK | 6]),
            "from the side file"
        );
        assert_eq!(index.choose(5, [4, 4]), Some([4, IN_OUT | 70]));
        assert_eq!(index.choose(4, [1, 1]), None);
    }

    #[test]
    fn orphans_are_the_ok_lines_no_row_took_once_per_question_in_any_number_of_passes() {
        for in_memory in [100, 2] {
            let mut lines = Spill::new(in_memory);
            for line in [
                [7, 1, OK | 5],
                [u64::MAX, 3, OK | 7],
                [7, 1, OUT_OK | 30],
                [7, 9, OUT_OK | 50],
                [7, 9, OUT_OK | 55],
                [3, 2, IN_OUT | 40],
                [0, 4, OUT_OK | 60],
            ] {
                lines.push(line).unwrap();
            }
            let mut offsets = LineOffsets(lines);
            let mut taken = Spill::new(in_memory);
            taken.push([7, 1]).unwrap();
            for per_pass in [100, 1] {
                let mut found = Vec::new();
                let count = offsets
                    .orphans(&mut taken, per_pass, |v| {
                        found.push(v);
                        Ok(())
                    })
                    .unwrap();
                found.sort_unstable();
                assert_eq!(count, 3);
                assert_eq!(found, [OK | 7, OUT_OK | 55, OUT_OK | 60], "{per_pass}");
            }
        }
    }
}
