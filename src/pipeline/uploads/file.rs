//! A row's file, read safely: opened without blocking, judged by the opened handle rather
//! than the path, and read whole with the count of bytes held against the size the handle
//! reported.
//!
//! Why by handle: the worker's check of the path and this open are two moments, and a path
//! that is a regular file at the first may be a FIFO at the second. Opening a FIFO with no
//! writer blocks in `open(2)`, and reading one blocks until a writer comes; `O_NONBLOCK`
//! makes the open return at once, and `fstat` of the handle then refuses anything that is
//! not a regular file before a byte is read.
//!
//! Every function here blocks: callers run them on the blocking pool, never on a runtime
//! thread, so a slow disk or a stuck network filesystem holds one pool thread, not the run.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use rustix::fs::OFlags;
use sha2::{Digest, Sha256};

/// Read buffer for hashing a large file: few system calls per megabyte, little memory.
const BUF: usize = 256 * 1024;

/// A file opened for reading and checked to be a regular file, with what its handle reports.
pub(super) struct Opened {
    pub(super) file: File,
    pub(super) size: u64,
    pub(super) mtime: Option<SystemTime>,
}

/// A file's hash and, when asked for and small, its bytes.
pub(super) struct Hashed {
    pub(super) sha256: [u8; 32],
    pub(super) size: u64,
    pub(super) mtime: Option<SystemTime>,
    pub(super) bytes: Option<Bytes>,
}

#[derive(Debug)]
pub(super) enum ReadError {
    /// The path names something other than a regular file; the text says what.
    NotAFile(&'static str),
    Io(io::Error),
    /// What was read is not what the handle's size (or the expected hash) promised: the file
    /// is being written, or its size is not its length (a pseudo-file under `/proc`).
    Changed(String),
}

impl From<io::Error> for ReadError {
    fn from(err: io::Error) -> Self {
        ReadError::Io(err)
    }
}

/// Opens `path` for reading without blocking and checks the handle is a regular file.
/// (`std` opens with `O_CLOEXEC` already; `O_NONBLOCK` is added here.)
pub(super) fn open(path: &Path) -> Result<Opened, ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile(crate::pipeline::checks::describe(
            meta.file_type(),
        )));
    }
    // O_NONBLOCK was for the open. Linux ignores it for reads of regular files, but some
    // network and FUSE filesystems honour it and would answer a read with EAGAIN.
    let flags = rustix::fs::fcntl_getfl(&file).map_err(io::Error::from)?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK).map_err(io::Error::from)?;
    Ok(Opened {
        file,
        size: meta.len(),
        mtime: meta.modified().ok(),
    })
}

/// Hashes the whole of `opened`, keeping its bytes when `keep`. Reads at most one byte past
/// the size the handle reported, so a file that is longer than it says (or keeps growing) is
/// caught without being read to its end.
pub(super) fn hash(opened: Opened, keep: bool) -> Result<Hashed, ReadError> {
    let Opened { file, size, mtime } = opened;
    let mut limited = file.take(size.saturating_add(1));
    let mut hasher = Sha256::new();
    let (count, bytes) = if keep {
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1));
        limited.read_to_end(&mut buf)?;
        hasher.update(&buf);
        (buf.len() as u64, Some(Bytes::from(buf)))
    } else {
        let mut buf = vec![0u8; BUF];
        let mut count = 0u64;
        loop {
            match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    count += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        (count, None)
    };
    check_count(count, size)?;
    Ok(Hashed {
        sha256: hasher.finalize().into(),
        size,
        mtime,
        bytes,
    })
}

/// The bytes of `opened`, which must be `size` bytes hashing to `sha256` (a small file whose
/// hash is known from earlier in the run, read again for its upload).
pub(super) fn read_expected(
    opened: Opened,
    size: u64,
    sha256: &[u8; 32],
) -> Result<Bytes, ReadError> {
    if opened.size != size {
        return Err(ReadError::Changed(format!(
            "its size is {} bytes, not the {size} it had when it was hashed",
            opened.size
        )));
    }
    let hashed = hash(opened, true)?;
    if &hashed.sha256 != sha256 {
        return Err(ReadError::Changed(
            "its bytes are no longer the ones hashed earlier".to_owned(),
        ));
    }
    Ok(hashed.bytes.unwrap_or_default())
}

fn check_count(count: u64, size: u64) -> Result<(), ReadError> {
    if count > size {
        Err(ReadError::Changed(format!(
            "it holds more than the {size} bytes its size says"
        )))
    } else if count < size {
        Err(ReadError::Changed(format!(
            "it ended after {count} of the {size} bytes its size says"
        )))
    } else {
        Ok(())
    }
}
