//! Bounded-memory lists of small fixed-size records, for the two passes that see every row of
//! a manifest: the duplicate-id check before a run and the line index that compaction builds
//! after it.
//!
//! Up to a set number of records stay in memory. Past that, every record goes to an anonymous
//! temp file (in `$TMPDIR`, removed by the kernel when closed) and callers read the list back
//! in several passes, each keeping only one slice of the records. A ten-million-row manifest
//! then costs these passes the same memory as a hundred-thousand-row one; the price is a few
//! sequential re-reads of a file of 8 or 16 bytes a row, which the page cache serves.
//!
//! This is not a general external sort: callers only ever need "all records whose key falls in
//! this slice", and a slice small enough to sort in memory.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};

/// Records a [`Spill`] keeps in memory before it moves to a temp file: 16 Ki records, 128 KiB
/// of `u64` keys or 256 KiB of key/offset pairs. Small, because a run pays it at its end
/// (compaction) on top of everything else it holds.
pub const IN_MEMORY: usize = 1 << 14;

/// Records a caller keeps per pass when it reads a spilled list back in slices: 64 Ki, at most
/// about 1 MiB of sorted keys or pairs. Each pass re-reads the whole temp file, so a smaller
/// slice means more passes: a million rows take 16, ten million 153 (about 25 GB read from
/// the page cache, some seconds on a run of hours).
pub const PER_PASS: usize = 1 << 16;

/// A temp file could not be written or read back.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use a temporary file for the row index of a large manifest: {0} (hint: it is \
     created in $TMPDIR; point TMPDIR at a writable folder with free space)"
)]
pub struct SpillError(#[from] std::io::Error);

/// An append-only list of `[u64; W]` records that spills to a temp file past a capacity.
#[derive(Debug)]
pub struct Spill<const W: usize> {
    capacity: usize,
    memory: Vec<[u64; W]>,
    file: Option<BufWriter<File>>,
    len: u64,
}

impl<const W: usize> Spill<W> {
    /// A list that keeps up to `capacity` records in memory.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            memory: Vec::new(),
            file: None,
            len: 0,
        }
    }

    pub fn push(&mut self, record: [u64; W]) -> Result<(), SpillError> {
        self.len += 1;
        if let Some(file) = &mut self.file {
            return Ok(write_record(file, &record)?);
        }
        if self.memory.len() < self.capacity {
            self.memory.push(record);
            return Ok(());
        }
        let mut file = BufWriter::new(tempfile::tempfile()?);
        for held in std::mem::take(&mut self.memory) {
            write_record(&mut file, &held)?;
        }
        write_record(&mut file, &record)?;
        self.file = Some(file);
        Ok(())
    }

    /// Records pushed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the records went to a temp file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// How many slices of the key space to read the records in so that each slice holds
    /// about `per_slice` records (at least 1).
    pub fn slices(&self, per_slice: usize) -> u64 {
        self.len.div_ceil(per_slice.max(1) as u64).max(1)
    }

    /// Calls `f` with every record, in the order they were pushed.
    pub fn for_each(&mut self, mut f: impl FnMut([u64; W])) -> Result<(), SpillError> {
        let Some(writer) = &mut self.file else {
            self.memory.iter().copied().for_each(f);
            return Ok(());
        };
        writer.flush()?;
        let mut file = writer.get_ref();
        file.seek(SeekFrom::Start(0))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        'records: loop {
            let mut record = [0u64; W];
            for (i, word) in record.iter_mut().enumerate() {
                let mut bytes = [0u8; 8];
                match reader.read_exact(&mut bytes) {
                    Ok(()) => *word = u64::from_le_bytes(bytes),
                    // Records are written whole, so the file can only end between two.
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof && i == 0 => break 'records,
                    Err(e) => return Err(e.into()),
                }
            }
            f(record);
        }
        // Later pushes append at the end, wherever the reads left the shared file offset.
        file.seek(SeekFrom::End(0))?;
        Ok(())
    }
}

fn write_record<const W: usize>(
    file: &mut BufWriter<File>,
    record: &[u64; W],
) -> std::io::Result<()> {
    record
        .iter()
        .try_for_each(|word| file.write_all(&word.to_le_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect<const W: usize>(spill: &mut Spill<W>) -> Vec<[u64; W]> {
        let mut all = Vec::new();
        spill.for_each(|r| all.push(r)).unwrap();
        all
    }

    #[test]
    fn records_come_back_in_order_in_memory_and_spilled() {
        for capacity in [1000, 7] {
            let mut spill = Spill::<2>::new(capacity);
            let records: Vec<[u64; 2]> = (0..100u64).map(|i| [i * 31, u64::MAX - i]).collect();
            for r in &records {
                spill.push(*r).unwrap();
            }
            assert_eq!(spill.spilled(), capacity < 100, "capacity {capacity}");
            assert_eq!(spill.len(), 100);
            assert_eq!(collect(&mut spill), records, "capacity {capacity}");
            // A second pass sees the same, and pushes after a pass still append.
            spill.push([7, 7]).unwrap();
            let again = collect(&mut spill);
            assert_eq!(again.len(), 101);
            assert_eq!(again[..100], records[..]);
            assert_eq!(again[100], [7, 7]);
        }
    }

    #[test]
    fn slices_keep_each_pass_near_the_asked_size() {
        let mut spill = Spill::<1>::new(4);
        assert_eq!(spill.slices(10), 1);
        for i in 0..10 {
            spill.push([i]).unwrap();
        }
        assert!(spill.spilled());
        assert_eq!(spill.slices(10), 1);
        spill.push([10]).unwrap();
        assert_eq!(spill.slices(10), 2);
        for i in 11..95 {
            spill.push([i]).unwrap();
        }
        assert_eq!(spill.slices(10), 10);
    }
}
